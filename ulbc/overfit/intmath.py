"""The decoder's fixed-point conventions and look-up tables, in NumPy (no torch).

:mod:`.fixedpoint` (torch, the reference decoder) and :mod:`.fastdecode` (the compiled decoder)
share these definitions, so both compute the same integers by construction of the tables:

* activations are integers at scale ``2^-ACT_FRAC_BITS``, held in float64; every product and
  partial sum stays below ``EXACT_LIMIT`` (checked), where float64 arithmetic is exact in any order;
* GELU and the output ``tanh`` are tables of ``round(f(i / 2^12) · scale)`` built once from
  Python's float64 ``math`` functions.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: Fractional bits of every activation (1/4096 steps: far below one 8-bit output level).
ACT_FRAC_BITS = 12
ONE = float(1 << ACT_FRAC_BITS)
#: Largest magnitude an exact float64 integer accumulator may reach (with a safety bit).
EXACT_LIMIT = float(1 << 52)
#: GELU is the identity above this input (in units) and zero below minus it, at 2^-12 resolution.
GELU_RANGE = 6
#: tanh saturates to the extreme 8-bit levels beyond this input.
TANH_RANGE = 10
GELU_LIMIT = GELU_RANGE << ACT_FRAC_BITS
TANH_LIMIT = TANH_RANGE << ACT_FRAC_BITS


def round_shift(values: np.ndarray, shift: int) -> np.ndarray:
    """``round(values / 2^shift)`` of integer-valued float64 arrays (halves round up); exact."""
    values = np.asarray(values, dtype=np.float64)
    if shift <= 0:
        return values * float(1 << -shift)
    return np.floor((values + float(1 << (shift - 1))) / float(1 << shift))


def align_bias(bias: np.ndarray, bias_exp: int, target_exp: int) -> np.ndarray:
    """Integers at scale ``2^-bias_exp`` -> scale ``2^-target_exp`` (rounded when it drops bits)."""
    return round_shift(bias, bias_exp - target_exp)


@lru_cache(maxsize=None)
def gelu_table() -> np.ndarray:
    """``round(gelu(i / 4096) · 4096)`` (exact erf) for i in [-GELU_LIMIT, GELU_LIMIT]."""
    values = []
    for i in range(-GELU_LIMIT, GELU_LIMIT + 1):
        x = i / ONE
        values.append(math.floor(0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) * ONE + 0.5))
    table = np.array(values, dtype=np.float64)
    table.flags.writeable = False
    return table


@lru_cache(maxsize=None)
def tanh_uint8_table() -> np.ndarray:
    """``round(127.5 · (tanh(i / 4096) + 1))`` for i in [-TANH_LIMIT, TANH_LIMIT]."""
    table = np.array([math.floor(127.5 * (math.tanh(i / ONE) + 1.0) + 0.5) for i in range(-TANH_LIMIT, TANH_LIMIT + 1)],
                     dtype=np.float64)
    table.flags.writeable = False
    return table


def pixel_coordinates(height: int, width: int) -> np.ndarray:
    """(H*W, 2) fixed-point (x, y) in [-1, 1] (x along the width), as exact integers at 2^-12
    (float64): ``round((2 i - (n - 1)) / (n - 1))`` in integer arithmetic, halves up."""
    def axis(n: int) -> np.ndarray:
        if n == 1:
            return np.array([-ONE])
        num = (2 * np.arange(n, dtype=np.int64) - (n - 1)) << ACT_FRAC_BITS
        return ((2 * num + (n - 1)) // (2 * (n - 1))).astype(np.float64)

    ys, xs = np.meshgrid(axis(height), axis(width), indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
