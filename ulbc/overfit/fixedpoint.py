"""Exact integer arithmetic for the decoder side of the overfitted codecs.

The decoder must reproduce the encoder's numbers bit for bit on any machine, thread count and
device: the entropy model's outputs drive the range coder (one differing probability and the rest
of the stream decodes to garbage), and the reconstruction is compared byte for byte. Floating-point
networks do not give that (BLAS kernels, thread splits and GPUs sum in different orders), so the
decoder runs every network in fixed point:

* activations are integers at scale ``2^-ACT_FRAC_BITS``; weights and biases are the integers the
  bitstream carries, at scale ``2^-e`` (their power-of-two quantisation step);
* integers are held in float64 tensors. Every product and partial sum is an integer below
  ``2^53`` (checked), so float64 arithmetic is exact whatever the summation order: matrix products
  use the fast BLAS (or cuBLAS) kernels and still give the same bits everywhere;
* after each layer the accumulator is brought back to the activation scale by a rounding shift;
* GELU and the output ``tanh`` are table look-ups built once from float64 ``math`` functions.

The constants and tables live in :mod:`.intmath` (no torch), shared with the compiled decoder.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .intmath import ACT_FRAC_BITS, EXACT_LIMIT, GELU_LIMIT, ONE, TANH_LIMIT, gelu_table, tanh_uint8_table  # noqa: F401


class FixedPointOverflow(ValueError):
    """An integer computation would leave the range where float64 is exact."""


def round_shift(values: torch.Tensor, shift: int) -> torch.Tensor:
    """``round(values / 2^shift)`` for integer-valued float64 tensors (halves round up); exact."""
    if shift <= 0:
        return values * float(1 << -shift)
    return torch.floor((values + float(1 << (shift - 1))) / float(1 << shift))


def to_fixed(values: torch.Tensor, frac_bits: int = ACT_FRAC_BITS) -> torch.Tensor:
    """Float values -> integers at scale ``2^-frac_bits`` (float64)."""
    return torch.round(values.to(torch.float64) * float(1 << frac_bits))


def check_exact(bound: float, what: str) -> None:
    if not bound < EXACT_LIMIT:
        raise FixedPointOverflow(f"{what}: integer range 2^{math.log2(max(bound, 1)):.0f} exceeds exact float64 arithmetic")


def align_bias(bias: torch.Tensor, bias_exp: int, target_exp: int) -> torch.Tensor:
    """Integers at scale ``2^-bias_exp`` -> scale ``2^-target_exp`` (rounded when it drops bits)."""
    return round_shift(bias, bias_exp - target_exp)


def linear(x: torch.Tensor, weight: torch.Tensor, weight_exp: int, bias: torch.Tensor | None = None,
           bias_exp: int = 0, what: str = "layer") -> torch.Tensor:
    """Fixed-point ``x @ weight^T + bias``, batched over models.

    ``x``: (B, N, C_in) integers at scale 2^-ACT_FRAC_BITS; ``weight``: (B, C_out, C_in) integers at
    2^-weight_exp; ``bias``: (B, C_out) integers at 2^-bias_exp. Returns (B, N, C_out) at the
    activation scale.
    """
    acc_exp = ACT_FRAC_BITS + weight_exp
    x_max = float(x.abs().amax()) if x.numel() else 0.0
    w_rows = float(weight.abs().sum(dim=2).amax()) if weight.numel() else 0.0
    aligned = None
    bound = x_max * w_rows
    if bias is not None:
        aligned = align_bias(bias, bias_exp, acc_exp)
        bound += float(aligned.abs().amax()) if aligned.numel() else 0.0
    check_exact(bound, what)
    acc = torch.bmm(x, weight.transpose(1, 2))
    if aligned is not None:
        acc = acc + aligned[:, None, :]
    return round_shift(acc, weight_exp)


@lru_cache(maxsize=None)
def _gelu_table() -> torch.Tensor:
    return torch.from_numpy(gelu_table().copy())


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact-erf GELU on fixed-point integers, via a table of ``round(gelu(i/4096) * 4096)``."""
    limit = GELU_LIMIT
    table = _gelu_table().to(x.device)
    inside = table[(x.clamp(-limit, limit) + limit).to(torch.int64)]
    return torch.where(x > limit, x, torch.where(x < -limit, torch.zeros_like(x), inside))


def relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0.0)


@lru_cache(maxsize=None)
def _tanh_uint8_table() -> torch.Tensor:
    return torch.from_numpy(tanh_uint8_table().copy())


def tanh_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``round(255 * (tanh(x) + 1) / 2)`` of fixed-point integers, as 0..255 (float64)."""
    limit = TANH_LIMIT
    return _tanh_uint8_table().to(x.device)[(x.clamp(-limit, limit) + limit).to(torch.int64)]


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Fixed-point values meant to lie in [0, 1] -> ``round(255 x)`` clamped to 0..255 (float64)."""
    return round_shift(x * 255.0, ACT_FRAC_BITS).clamp(0.0, 255.0)
