"""Coding LotteryCodec's binary supermasks: per-layer kept counts + range-coded bits.

Layout: for each layer a varint ``k`` (weights kept), then one range-coded stream (constriction,
32-bit words, little-endian) of every bit of the layers with 0 < k < n, row-major, under a static
Bernoulli model with p = k / n. The probability is computed from the two integers in float64, so
encoder and decoder feed constriction the identical value on every machine; the cost is close to
n · H_b(k / n) bits per layer, the paper's idealised mask rate. The decoder re-counts each layer's
ones against ``k``, which catches the damage a range decoder cannot see (it decodes any bytes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..bitstream import decode_varint, encode_varint
from ..errors import BitstreamError


def _model(p: float):
    import constriction

    return constriction.stream.model.Bernoulli(p, perfect=False)


def encode_masks(masks: Sequence[np.ndarray]) -> bytes:
    """Masks (any shape, values 0/1) -> bytes; the shapes travel with the architecture, not here."""
    import constriction

    flat = [np.asarray(m).reshape(-1).astype(np.int32) for m in masks]
    for i, bits in enumerate(flat):
        if bits.size and not np.isin(bits, (0, 1)).all():
            raise ValueError(f"mask {i} holds values other than 0 and 1")
    header = b"".join(encode_varint(int(bits.sum())) for bits in flat)
    encoder = constriction.stream.queue.RangeEncoder()
    for bits in flat:
        kept = int(bits.sum())
        if 0 < kept < bits.size:
            encoder.encode(bits, _model(kept / bits.size))
    return header + encoder.get_compressed().astype("<u4").tobytes()


def decode_masks(data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Inverse of :func:`encode_masks`; raises :class:`BitstreamError` on any inconsistency."""
    import constriction

    sizes = [int(np.prod(s)) for s in shapes]
    counts, pos = [], 0
    for i, n in enumerate(sizes):
        kept, pos = decode_varint(data, pos, f"mask {i} count")
        if kept > n:
            raise BitstreamError(f"mask {i} keeps {kept} of only {n} weights")
        counts.append(kept)
    words = data[pos:]
    if len(words) % 4:
        raise BitstreamError("mask payload is not a whole number of 32-bit words")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    masks = []
    for i, (shape, n, kept) in enumerate(zip(shapes, sizes, counts)):
        if kept in (0, n):
            bits = np.full(n, 1 if kept else 0, dtype=np.int32)
        else:
            try:
                bits = np.asarray(decoder.decode(_model(kept / n), n), dtype=np.int32)
            except (AssertionError, ValueError, RuntimeError) as exc:
                raise BitstreamError(f"mask {i} does not decode ({exc})") from None
            if int(bits.sum()) != kept:
                raise BitstreamError(f"mask {i} decodes to {int(bits.sum())} kept weights, header says {kept}")
        masks.append(bits.reshape(shape).astype(bool))
    if not decoder.maybe_exhausted():
        raise BitstreamError("mask payload has data left over after the last layer")
    return masks


def ideal_mask_bits(masks: Sequence[np.ndarray]) -> float:
    """Σ n · H_b(k / n): the bound the paper reports, for comparison with the real size."""
    total = 0.0
    for m in masks:
        n = np.asarray(m).size
        p = float(np.asarray(m).sum()) / n if n else 0.0
        if 0 < p < 1:
            total += n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return total
