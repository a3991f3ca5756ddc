"""Integer-only entropy coding of the latents (format 2): a quantised Laplace CDF and rANS.

Every number here is an integer computed with integer operations from tables that are built
with exact decimal arithmetic, so encoder and decoder agree on every machine, compiler and thread
count (format 1 fed constriction float64 means and scales, whose ``exp`` came from the platform's
libm).

**The model** of one element: the ARM's mean ``mu`` (an integer at 2^-12) and log-scale index ``k``
(scale ``b = exp(k / 256)``). For the boundary ``j - 1/2`` between symbols ``j - 1`` and ``j``::

    d = j·4096 - 2048 - mu                         (at 2^-12)
    t = |d| · INV[k] >> 20                         (|d|/b at 2^-16; INV[k] = round(2^24 e^(-k/256)))
    H = EXP[t >> 8] - ((EXP[t >> 8] - EXP[(t >> 8) + 1]) · (t & 255) >> 8)
                                                   (2^29 e^(-t), EXP[i] = round(2^29 e^(-i/256)),
                                                    linear between table points, 0 for t >= 17)
    F = H if d < 0 else 2^30 - H                   (the Laplace CDF at 2^-30)
    cum(j) = (F · (2^24 - n) >> 30) + (j + bound)  for -bound < j <= bound; cum(-bound) = 0,
    cum(bound + 1) = 2^24,                         n = 2 bound + 1 symbols

``F`` is non-decreasing in ``j`` (the tables decrease, the interpolation keeps that), so every
symbol in ``[-bound, bound]`` gets at least one of the 2^24 slots, as in constriction's leaky
quantiser.

**The coder** is rANS with a 64-bit state and 32-bit words (``L = 2^31``; Giesen's rans64): the
encoder runs backwards and the decoder forwards, and the decoder's final state must equal ``L`` with
every word consumed, which catches most damage a decoder could otherwise not see.
"""

from __future__ import annotations

import decimal
import math
from functools import lru_cache

import numpy as np
from numba import njit

from .arch import LOG_SCALE_MAX, LOG_SCALE_MIN, LOG_SCALE_STEPS
from .intmath import ACT_FRAC_BITS

#: Probabilities are integers out of 2^PRECISION.
PRECISION = 24
TOTAL = 1 << PRECISION
#: rANS state lower bound; the state lives in [L, 2^63) between symbols.
RANS_L = 1 << 31
WORD_MASK = (1 << 32) - 1
#: Fixed-point bits of the CDF and of the tables.
CDF_BITS = 30
INV_SCALE_BITS = 24
#: e^(-t) is tabulated at t = i / 256 for i < EXP_STEPS and taken as zero beyond (2^29 e^-17 · 2^-6
#: is far below one slot of 2^24).
EXP_STEPS = 17 * 256
#: |d| is clamped here (2^14 units: beyond every tail at the largest scale, e^(5)).
D_MAX = 1 << (ACT_FRAC_BITS + 14)
SCALE_INDEX_MIN = math.ceil(LOG_SCALE_MIN * LOG_SCALE_STEPS)
SCALE_INDEX_MAX = math.floor(LOG_SCALE_MAX * LOG_SCALE_STEPS)


def _exp_integers(exponents, scale_bits: int) -> np.ndarray:
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    one = decimal.Decimal(1 << scale_bits)
    return np.array([int((ctx.exp(ctx.divide(decimal.Decimal(-e), LOG_SCALE_STEPS)) * one)
                         .to_integral_value(decimal.ROUND_HALF_EVEN)) for e in exponents], dtype=np.int64)


@lru_cache(maxsize=None)
def inverse_scales() -> np.ndarray:
    """``round(2^24 e^(-k/256))`` for k in [SCALE_INDEX_MIN, SCALE_INDEX_MAX]."""
    table = _exp_integers(range(SCALE_INDEX_MIN, SCALE_INDEX_MAX + 1), INV_SCALE_BITS)
    table.flags.writeable = False
    return table


@lru_cache(maxsize=None)
def half_exp_table() -> np.ndarray:
    """``round(2^29 e^(-i/256))`` for i < EXP_STEPS, then one 0 (the interpolation's end point)."""
    table = np.concatenate([_exp_integers(range(EXP_STEPS), CDF_BITS - 1), [0]]).astype(np.int64)
    table.flags.writeable = False
    return table


def scale_index_to_row(index):
    """Scale index k -> row of :func:`inverse_scales`."""
    return index - SCALE_INDEX_MIN


# -- the CDF -----------------------------------------------------------------------------------------
def laplace_cum(j: int, mu: int, inv: int, bound: int, exp_table) -> int:
    """cum(j) of one element (module docstring); ``inv`` = INV[k]. Plain Python; :data:`laplace_cum_jit`
    is the same function compiled."""
    if j <= -bound:
        return 0
    if j > bound:
        return TOTAL
    d = (j << ACT_FRAC_BITS) - (1 << (ACT_FRAC_BITS - 1)) - mu
    a = -d if d < 0 else d
    if a > D_MAX:
        a = D_MAX
    t = (a * inv) >> (ACT_FRAC_BITS + INV_SCALE_BITS - 16)
    i = t >> 8
    if i >= EXP_STEPS:
        h = 0
    else:
        h = exp_table[i] - (((exp_table[i] - exp_table[i + 1]) * (t & 255)) >> 8)
    f = h if d < 0 else (1 << CDF_BITS) - h
    return ((f * (TOTAL - 2 * bound - 1)) >> CDF_BITS) + j + bound


laplace_cum_jit = njit(inline="always", cache=True, nogil=True)(laplace_cum)


def laplace_cum_array(j: np.ndarray, mu: np.ndarray, inv: np.ndarray, bound: int) -> np.ndarray:
    """:func:`laplace_cum` over arrays (what the encoder uses; written independently of it, and a
    test keeps the two equal)."""
    exp_table = half_exp_table()
    j, mu, inv = (np.asarray(v, dtype=np.int64) for v in (j, mu, inv))
    d = (j << ACT_FRAC_BITS) - (1 << (ACT_FRAC_BITS - 1)) - mu
    a = np.minimum(np.abs(d), D_MAX)
    t = (a * inv) >> (ACT_FRAC_BITS + INV_SCALE_BITS - 16)
    i = np.minimum(t >> 8, EXP_STEPS)
    lower, upper = exp_table[i], exp_table[np.minimum(i + 1, EXP_STEPS)]
    h = lower - (((lower - upper) * (t & 255)) >> 8)
    f = np.where(d < 0, h, (1 << CDF_BITS) - h)
    cum = ((f * (TOTAL - 2 * bound - 1)) >> CDF_BITS) + j + bound
    return np.where(j <= -bound, 0, np.where(j > bound, TOTAL, cum))


def symbol_ranges(values: np.ndarray, mu: np.ndarray, scale_index: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, frequency) of each element's symbol under its model."""
    inv = inverse_scales()[scale_index_to_row(np.asarray(scale_index, dtype=np.int64))]
    start = laplace_cum_array(values, mu, inv, bound)
    return start, laplace_cum_array(np.asarray(values, dtype=np.int64) + 1, mu, inv, bound) - start


# -- rANS ------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _rans_encode(starts: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    n = starts.shape[0]
    out = np.empty(n + 2, dtype=np.uint32)  # at most one word per symbol, plus the final state
    pos = n + 2
    x = np.int64(RANS_L)
    for i in range(n - 1, -1, -1):
        freq = freqs[i]
        if x >= (freq << (63 - PRECISION)):  # ((L >> PRECISION) << 32) * freq
            pos -= 1
            out[pos] = np.uint32(x & WORD_MASK)
            x >>= 32
        x = ((x // freq) << PRECISION) + (x % freq) + starts[i]
    pos -= 2
    out[pos] = np.uint32(x & WORD_MASK)
    out[pos + 1] = np.uint32(x >> 32)
    return out[pos:].copy()


def rans_encode(starts: np.ndarray, freqs: np.ndarray) -> bytes:
    """Symbols given as (start, frequency) out of 2^PRECISION, in decoding order -> little-endian words."""
    starts, freqs = np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(freqs, dtype=np.int64)
    if starts.size and (freqs.min() < 1 or (starts + freqs).max() > TOTAL or starts.min() < 0):
        raise ValueError("rANS: symbol ranges must lie in [0, 2^PRECISION) with frequency >= 1")
    return _rans_encode(starts, freqs).astype("<u4").tobytes()


class RansDecoder:
    """The reference rANS decoder, symbol by symbol in Python (the compiled decoder inlines the same
    steps). Errors are returned as messages by :meth:`problem` rather than raised mid-stream."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = [int(w) for w in words]
        self.pos = 2
        if len(self.words) < 2:
            raise ValueError("rANS stream is shorter than its initial state")
        self.state = self.words[0] | (self.words[1] << 32)
        if not RANS_L <= self.state < (1 << 63):
            raise ValueError("rANS stream starts with an impossible state")

    def slot(self) -> int:
        return self.state & (TOTAL - 1)

    def advance(self, start: int, freq: int) -> None:
        x = freq * (self.state >> PRECISION) + self.slot() - start
        if x < RANS_L:
            if self.pos >= len(self.words):
                raise ValueError("rANS stream ends before the last symbol")
            x = (x << 32) | self.words[self.pos]
            self.pos += 1
        self.state = x

    def finished_cleanly(self) -> bool:
        return self.state == RANS_L and self.pos == len(self.words)


def find_symbol(slot: int, guess: int, bound: int, cum) -> tuple[int, int, int]:
    """The symbol s in [-bound, bound] with cum(s) <= slot < cum(s + 1), searched from ``guess``;
    returns (s, cum(s), cum(s + 1)). At most 2 bound + 2 steps: cum(-bound) = 0, cum(bound + 1) = 2^24."""
    s = min(max(guess, -bound), bound)
    low = cum(s)
    while low > slot:
        s -= 1
        low = cum(s)
    high = cum(s + 1)
    while high <= slot:
        s += 1
        low, high = high, cum(s + 1)
    return s, low, high
