"""Entropy coding of integer tensors (quantised weights, mask levels): one categorical model per
tensor with a quantised frequency table stored in the stream, one shared range coder (constriction).

Blob layout::

    n_side   varint       length of the side information
    side     n_side bytes bit-packed (MSB first), per tensor in order:
               lo      signed Exp-Golomb order 0        smallest value
               span    unsigned Exp-Golomb order 0      hi - lo (the alphabet is lo..hi)
               when span > 0:
                 P     4 bits                           table precision, 1..15
                 k     4 bits                           Exp-Golomb order of the table entries
                 f_j   unsigned Exp-Golomb order k      j = 0..span: quantised frequency of lo + j
             zero-padded to a whole byte
    n_words  varint       number of range-coder words (so any truncation of a blob is detected)
    words    4 × n_words  constriction range-coder words (uint32 little-endian) of every tensor
                          with two or more values of non-zero frequency, in order; the blob ends here

The table is f_j = 0 for a value that does not occur and max(1, round(c_j · 2^P / n)) for one that
occurs c_j times in the n values; the encoder picks the P that minimises table bits + coded bits.
Both sides turn the integers f into probabilities f / Σf in float64 and hand only the non-zero ones
to constriction's ``Categorical``, so the model is identical on every machine. A tensor whose table
has a single non-zero entry (e.g. all-zero after pruning) costs only its side information.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..bitstream import decode_varint, encode_varint
from ..errors import BitstreamError
from ..overfit.expgolomb import BitReader, BitWriter

#: Largest alphabet (hi - lo + 1) a tensor may use; 16-bit quantisation fits.
MAX_ALPHABET = 1 << 16
MAX_PRECISION = 15
MAX_TABLE_ORDER = 15
_MAX_PREFIX = 40  # leading zeros accepted in an unsigned Exp-Golomb code (bounds the work per value)


def _ueg_length(values: np.ndarray, k: int) -> np.ndarray:
    """Bits of the order-k unsigned Exp-Golomb code of each value."""
    x = values.astype(np.int64) + (1 << k)
    return 2 * np.frexp(x.astype(np.float64))[1].astype(np.int64) - 1 - k


def _write_ueg(writer: BitWriter, value: int, k: int) -> None:
    x = int(value) + (1 << k)
    n = x.bit_length()
    if n - 1 - k:
        writer.write(0, n - 1 - k)
    writer.write(x, n)


def _read_ueg(reader: BitReader, k: int, what: str) -> int:
    zeros = 0
    while reader.read(1) == 0:
        zeros += 1
        if zeros > _MAX_PREFIX:
            raise BitstreamError(f"malformed {what}: Exp-Golomb code with more than {_MAX_PREFIX} leading zeros")
    x = (1 << (zeros + k)) | reader.read(zeros + k)
    return x - (1 << k)


def quantized_table(counts: np.ndarray, precision: int) -> np.ndarray:
    """f_j = 0 where c_j = 0, else max(1, round(c_j · 2^P / n)) (round half up, integers only)."""
    n = int(counts.sum())
    scaled = (counts.astype(np.int64) * (1 << precision) * 2 + n) // (2 * n)
    return np.where(counts > 0, np.maximum(scaled, 1), 0)


def _table_cost(counts: np.ndarray, table: np.ndarray) -> tuple[float, int]:
    """(bits of table + coded values, best table order)."""
    orders = [(int(_ueg_length(table, k).sum()), k) for k in range(MAX_TABLE_ORDER + 1)]
    table_bits, order = min(orders)
    used = counts > 0
    coded = -float(np.sum(counts[used] * np.log2(table[used] / table.sum())))
    return 8 + table_bits + coded, order


def _model(table: np.ndarray):
    import constriction

    nonzero = table[table > 0].astype(np.float64)
    return constriction.stream.model.Categorical(nonzero / nonzero.sum(), perfect=False)


def encode_int_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Integer arrays (any shapes; the decoder must know their sizes) -> one blob."""
    import constriction

    side = BitWriter()
    encoder = constriction.stream.queue.RangeEncoder()
    for i, array in enumerate(arrays):
        values = np.asarray(array).reshape(-1).astype(np.int64)
        if values.size == 0:
            side.write_signed_exp_golomb(np.zeros(1, np.int64), 0)
            _write_ueg(side, 0, 0)
            continue
        lo, hi = int(values.min()), int(values.max())
        if hi - lo + 1 > MAX_ALPHABET:
            raise ValueError(f"array {i} spans {hi - lo + 1} values, more than {MAX_ALPHABET}")
        side.write_signed_exp_golomb(np.array([lo]), 0)
        _write_ueg(side, hi - lo, 0)
        if hi == lo:
            continue
        counts = np.bincount(values - lo, minlength=hi - lo + 1)
        candidates = [(*_table_cost(counts, quantized_table(counts, p)), p) for p in range(1, MAX_PRECISION + 1)]
        _, order, precision = min(candidates)
        table = quantized_table(counts, precision)
        side.write(precision, 4)
        side.write(order, 4)
        for f in table:
            _write_ueg(side, int(f), order)
        if np.count_nonzero(table) > 1:
            index_of = np.cumsum(table > 0) - 1  # value - lo -> index among the non-zero entries
            encoder.encode(index_of[values - lo].astype(np.int32), _model(table))
    side_bytes = side.getvalue()
    words = encoder.get_compressed().astype("<u4")
    return encode_varint(len(side_bytes)) + side_bytes + encode_varint(words.size) + words.tobytes()


def decode_int_arrays(data: bytes, sizes: Sequence[int], what: str = "integer payload") -> list[np.ndarray]:
    """Inverse of :func:`encode_int_arrays` for arrays of the given sizes (flat int64 arrays).
    Any inconsistency raises :class:`BitstreamError`."""
    import constriction

    data = bytes(data)
    n_side, pos = decode_varint(data, 0, f"{what} side-information length")
    if pos + n_side > len(data):
        raise BitstreamError(f"truncated {what}: side information needs {n_side} bytes, {len(data) - pos} left")
    reader = BitReader(data[pos : pos + n_side], what=f"{what} side information")
    n_words, pos = decode_varint(data, pos + n_side, f"{what} range-coder length")
    words = data[pos:]
    if len(words) != 4 * n_words:
        raise BitstreamError(f"{what}: {len(words)} bytes of range-coder data, the blob declares {4 * n_words}")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    out = []
    for i, size in enumerate(sizes):
        lo = int(reader.read_signed_exp_golomb(1, 0)[0])
        span = _read_ueg(reader, 0, what)
        if span >= MAX_ALPHABET:
            raise BitstreamError(f"malformed {what}: array {i} declares {span + 1} values, at most {MAX_ALPHABET}")
        if span == 0:
            out.append(np.full(size, lo, dtype=np.int64))
            continue
        precision, order = reader.read(4), reader.read(4)
        if not 1 <= precision <= MAX_PRECISION:
            raise BitstreamError(f"malformed {what}: table precision {precision} of array {i}")
        table = np.array([_read_ueg(reader, order, what) for _ in range(span + 1)], dtype=np.int64)
        if table.max() > 1 << precision:
            raise BitstreamError(f"malformed {what}: frequency above 2^{precision} in array {i}")
        nonzero = np.flatnonzero(table)
        if nonzero.size == 0:
            raise BitstreamError(f"malformed {what}: array {i} has an empty frequency table")
        if nonzero.size == 1:
            out.append(np.full(size, lo + int(nonzero[0]), dtype=np.int64))
            continue
        try:
            indices = np.asarray(decoder.decode(_model(table), int(size)), dtype=np.int64)
        except (AssertionError, ValueError, RuntimeError, OverflowError) as exc:
            raise BitstreamError(f"{what}: array {i} does not decode ({exc})") from None
        if indices.size != size or (size and (indices.min() < 0 or indices.max() >= nonzero.size)):
            raise BitstreamError(f"{what}: array {i} decodes to symbols outside its table")
        out.append(lo + nonzero[indices])
    reader.expect_padding()
    if not decoder.maybe_exhausted():
        raise BitstreamError(f"malformed {what}: range-coder data left over after the last array")
    return out


def empirical_bits(arrays: Sequence[np.ndarray]) -> float:
    """Σ n·H(empirical distribution) over the arrays: the ideal cost with free tables."""
    total = 0.0
    for array in arrays:
        values = np.asarray(array).reshape(-1)
        if values.size:
            _, counts = np.unique(values, return_counts=True)
            p = counts / values.size
            total += float(-(counts * np.log2(p)).sum())
    return total
