"""LotteryCodec's frozen random network, regenerated from its seed with NumPy alone (format 2).

Training (torch) and both decoders build the weights with this one function, so they agree by
construction. The uniform draws are those of torch's CPU ``rand(..., dtype=float64)`` for the
same seed (MT19937, 53 bits from two 32-bit draws; a test compares them); the cosines come from
NumPy. Format 1 built the bank with ``torch.cos``, which differs from the C library's ``cos`` in the
last bit for a few per cent of its values, enough to move about 2 % of the rounded weights by one
step, so format 1 files keep torch's construction (:func:`.networks.random_weights_format1`).
"""

from __future__ import annotations

import math

import numpy as np

#: Fractional bits of the frozen random weights (they are generated, never transmitted).
RANDOM_WEIGHT_FRAC_BITS = 16
#: The cosine bank: 64 low (k/64) and 64 high (k) frequencies x 32 phases.
BANK_ROWS = 4096


class SeededUniform:
    """Uniform float64 draws in [0, 1), equal to torch's CPU ``rand`` for the same seed."""

    def __init__(self, seed: int) -> None:
        state = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state()  # MT19937 init_genrand(seed)
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": state[1], "pos": state[2]}}

    def uniform(self, count: int) -> np.ndarray:
        raw = self._bits.random_raw(2 * count).astype(np.uint64)
        value = ((raw[0::2] << np.uint64(32)) | raw[1::2]) & np.uint64((1 << 53) - 1)
        return value.astype(np.float64) * 2.0**-53


def random_fourier_weights(out_features: int, in_features: int, uniform: SeededUniform,
                           scale: float = 0.05) -> np.ndarray:
    """LotteryCodec's "FFN" initialisation: W = Λ·B over a fixed cosine bank B, Λ random.

    B holds 128 frequencies (64 low, k/64, and 64 high, k) x 32 phases = 4096 rows of cosines sampled
    at ``in_features`` points across one period of the lowest frequency, times ``scale``. Only Λ
    (uniform, each column bounded by √(6/4096)/‖B_row‖) is random. Computed in float64 and rounded
    to 2^-16 steps (int64), so machines agree unless a float64 rounding difference lands exactly on
    a rounding boundary.
    """
    k = np.arange(1, 65, dtype=np.float64)
    freqs = np.concatenate([k / 64.0, k])
    phases = 2 * math.pi * np.arange(32, dtype=np.float64) / 32
    points = np.linspace(0.0, 2 * math.pi * 64, in_features)
    bank = (scale * np.cos(freqs[:, None, None] * points[None, None, :] + phases[None, :, None])).reshape(BANK_ROWS, in_features)
    bound = math.sqrt(6.0 / BANK_ROWS) / np.maximum(np.sqrt((bank * bank).sum(axis=1)), 1e-12)
    lam = (uniform.uniform(out_features * BANK_ROWS).reshape(out_features, BANK_ROWS) * 2 - 1) * bound
    return np.round((lam @ bank) * float(1 << RANDOM_WEIGHT_FRAC_BITS)).astype(np.int64)


def random_weights(shapes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Every layer's frozen random weights as integers at 2^-16, drawn in layer order from one
    generator seeded with ``seed``."""
    uniform = SeededUniform(seed)
    return [random_fourier_weights(out_f, in_f, uniform) for out_f, in_f in shapes]
