"""Signed Exp-Golomb coding of integer arrays (the network-parameter payload of overfitted codecs).

Mapping signed -> unsigned is the zig-zag map used by Cool-chic (spec §2.3)::

    v <= 0  ->  u = -2v          (0, -1, -2, ... -> 0, 2, 4, ...)
    v >  0  ->  u =  2v - 1      (1, 2, 3, ...   -> 1, 3, 5, ...)

Why zig-zag rather than sign-magnitude: zero costs no sign bit and the code length grows
smoothly with |v|, which suits the peaked, roughly symmetric distribution of quantised weights.

An order-k code of ``u`` writes ``x = u + 2^k`` (``n = bit_length(x)`` bits) preceded by
``n - 1 - k`` zero bits, so a value costs ``2 * floor(log2(u + 2^k)) + 1 - k`` bits. Bits are
written MSB-first; a stream is flushed to whole bytes by appending zero bits at the end.

The decoder never trusts the input: a prefix longer than ``MAX_PREFIX_ZEROS`` zeros, a code that
runs past the end, or non-zero / too many padding bits all raise ``BitstreamError``.
"""

from __future__ import annotations

import numpy as np

from ..errors import BitstreamError

# Longest run of leading zeros a decoder accepts. It bounds the work per value (an all-zero stream
# fails after at most 33 bits) and the magnitude: |v| < 2^(32 + k) always fits.
MAX_PREFIX_ZEROS = 32
# Largest order we write or accept; orders above this never pay off for NN parameters.
MAX_ORDER = 24
# Magnitude guard before the int64 zig-zag arithmetic (checked again against the prefix bound).
_MAX_ABS = 1 << 48


def _check_order(k: int) -> int:
    if not (isinstance(k, (int, np.integer)) and 0 <= int(k) <= MAX_ORDER):
        raise ValueError(f"Exp-Golomb order must be an integer in [0, {MAX_ORDER}], got {k!r}")
    return int(k)


def _as_int64(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"Exp-Golomb coding needs integer values, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False).ravel()
    if arr.size and int(np.abs(arr).max()) >= _MAX_ABS:
        raise ValueError(f"value too large for Exp-Golomb coding: max |v| = {int(np.abs(arr).max())}")
    return arr


def zigzag(values: np.ndarray) -> np.ndarray:
    """Signed -> unsigned map (v <= 0 -> -2v, v > 0 -> 2v - 1), as int64."""
    v = _as_int64(values)
    return np.where(v > 0, 2 * v - 1, -2 * v)


def unzigzag(u: np.ndarray) -> np.ndarray:
    """Inverse of ``zigzag``."""
    u = np.asarray(u, dtype=np.int64)
    return np.where(u % 2 == 1, (u + 1) // 2, -(u // 2))


def _bit_length(x: np.ndarray) -> np.ndarray:
    # frexp is exact for integers below 2^53: x = m * 2^e with m in [0.5, 1) -> bit_length = e.
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


def code_lengths(values: np.ndarray, k: int) -> np.ndarray:
    """Per-value code length in bits for order ``k``: ``2 * floor(log2(u + 2^k)) + 1 - k``."""
    k = _check_order(k)
    x = zigzag(values) + (1 << k)
    n = _bit_length(x)
    if n.size and int(n.max()) - 1 - k > MAX_PREFIX_ZEROS:
        raise ValueError(f"value too large for an order-{k} Exp-Golomb code with at most {MAX_PREFIX_ZEROS} prefix zeros")
    return 2 * n - 1 - k


def code_bits(values: np.ndarray, k: int) -> int:
    """Total number of bits of the order-``k`` code of ``values`` (no byte padding)."""
    return int(code_lengths(values, k).sum())


def best_order(values: np.ndarray, kmax: int = 8) -> int:
    """The order in ``0..kmax`` with the fewest bits (the smallest such order on ties)."""
    kmax = _check_order(kmax)
    totals = [code_bits(values, k) for k in range(kmax + 1)]
    return int(np.argmin(totals))


def _code_bit_array(values: np.ndarray, k: int) -> np.ndarray:
    """All codes concatenated, as an array of 0/1 uint8 (vectorised: one pass per bit position)."""
    k = _check_order(k)
    x = zigzag(values) + (1 << k)
    n = _bit_length(x)
    if n.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if int(n.max()) - 1 - k > MAX_PREFIX_ZEROS:
        raise ValueError(f"value too large for an order-{k} Exp-Golomb code with at most {MAX_PREFIX_ZEROS} prefix zeros")
    lengths = 2 * n - 1 - k
    ends = np.cumsum(lengths)  # one past the last bit (the LSB of x) of each code
    bits = np.zeros(int(ends[-1]), dtype=np.uint8)
    for j in range(int(n.max())):  # bit j of x (LSB = 0) sits j places before the code's end
        sel = j < n
        bits[ends[sel] - 1 - j] = (x[sel] >> j) & 1
    return bits


class BitWriter:
    """Accumulates bits MSB-first; ``getvalue`` pads with zero bits to a whole number of bytes."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._nbits = 0

    @property
    def bit_length(self) -> int:
        """Bits written so far (before padding)."""
        return self._nbits

    @property
    def pad_bits(self) -> int:
        """Zero bits ``getvalue`` will append to reach a byte boundary (0..7)."""
        return (-self._nbits) % 8

    def write_bits(self, bits: np.ndarray) -> None:
        """Appends an array of 0/1 values."""
        arr = np.asarray(bits, dtype=np.uint8).ravel()
        if arr.size and int(arr.max()) > 1:
            raise ValueError("write_bits expects only 0/1 values")
        self._chunks.append(arr)
        self._nbits += arr.size

    def write(self, value: int, nbits: int) -> None:
        """Appends ``value`` as an unsigned ``nbits``-bit field, MSB first."""
        if nbits < 0 or value < 0 or (nbits < 64 and value >> nbits):
            raise ValueError(f"value {value} does not fit in {nbits} bits")
        self.write_bits(np.array([(value >> (nbits - 1 - i)) & 1 for i in range(nbits)], dtype=np.uint8))

    def write_signed_exp_golomb(self, values: np.ndarray, k: int) -> None:
        """Appends the order-``k`` zig-zag Exp-Golomb codes of all ``values``."""
        self.write_bits(_code_bit_array(values, k))

    def getvalue(self) -> bytes:
        """The bytes written so far, zero-padded at the end (the writer stays usable)."""
        if not self._chunks:
            return b""
        return np.packbits(np.concatenate(self._chunks)).tobytes()


class BitReader:
    """Reads bits MSB-first from ``data``; every over-run raises ``BitstreamError``."""

    def __init__(self, data: bytes, what: str = "Exp-Golomb stream") -> None:
        raw = np.frombuffer(bytes(data), dtype=np.uint8)
        # Keep the bits as an ASCII '0'/'1' string: str.find and int(s, 2) run at C speed.
        self._bits = (np.unpackbits(raw) + ord("0")).tobytes().decode("ascii")
        self._pos = 0
        self._what = what

    @property
    def position(self) -> int:
        """Index of the next bit to be read."""
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._bits) - self._pos

    def read(self, nbits: int) -> int:
        """Reads an unsigned ``nbits``-bit field."""
        if nbits < 0:
            raise ValueError(f"cannot read {nbits} bits")
        if self._pos + nbits > len(self._bits):
            raise BitstreamError(f"truncated {self._what}: needs {nbits} more bits at bit {self._pos}")
        if nbits == 0:
            return 0
        value = int(self._bits[self._pos : self._pos + nbits], 2)
        self._pos += nbits
        return value

    def read_signed_exp_golomb(self, count: int, k: int) -> np.ndarray:
        """Reads ``count`` order-``k`` zig-zag Exp-Golomb values as int64."""
        k = _check_order(k)
        if count < 0:
            raise ValueError(f"cannot read {count} values")
        bits, pos, end = self._bits, self._pos, len(self._bits)
        xs = np.empty(count, dtype=np.int64)
        for i in range(count):
            one = bits.find("1", pos, pos + MAX_PREFIX_ZEROS + 1)
            if one < 0:
                if pos + MAX_PREFIX_ZEROS + 1 > end:
                    raise BitstreamError(f"truncated {self._what}: value {i} of {count} has no end")
                raise BitstreamError(f"malformed {self._what}: more than {MAX_PREFIX_ZEROS} leading zeros in value {i}")
            stop = one + (one - pos) + k + 1
            if stop > end:
                raise BitstreamError(f"truncated {self._what}: value {i} of {count} runs past the end")
            xs[i] = int(bits[one:stop], 2)
            pos = stop
        self._pos = pos
        return unzigzag(xs - (1 << k))

    def expect_padding(self) -> None:
        """Checks that only the final byte's zero padding is left (catches trailing garbage)."""
        rest = self._bits[self._pos :]
        if len(rest) >= 8:
            raise BitstreamError(f"malformed {self._what}: {len(rest)} unread bits at the end")
        if "1" in rest:
            raise BitstreamError(f"malformed {self._what}: non-zero padding bits")


def encode_signed(values: np.ndarray, k: int) -> bytes:
    """Order-``k`` zig-zag Exp-Golomb code of ``values`` (flattened), zero-padded to whole bytes."""
    writer = BitWriter()
    writer.write_signed_exp_golomb(values, k)
    return writer.getvalue()


def decode_signed(data: bytes, count: int, k: int, *, strict: bool = True) -> np.ndarray:
    """Decodes ``count`` values written by ``encode_signed`` with the same ``k``.

    With ``strict`` (default) the stream must end right after the values plus < 8 zero padding
    bits; anything else raises ``BitstreamError``.
    """
    reader = BitReader(data)
    values = reader.read_signed_exp_golomb(count, k)
    if strict:
        reader.expect_padding()
    return values
