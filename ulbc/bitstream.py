"""The ulbc bitstream container: one self-describing file per encoded item.

Layout (all integers unsigned; varint = LEB128, at most 5 bytes)::

    magic     2 bytes  b"UB"
    version   1 byte   container format version (FORMAT_VERSION)
    codec_id  1 byte   stable id of the codec in the registry
    width     varint   image width in pixels
    height    varint   image height in pixels
    n_params  varint   length of the codec's parameter block
    params    n_params bytes the codec's decoder needs beyond its payload (often empty)
    payload   ...      the codec's own stream, up to the last 4 bytes
    crc32     4 bytes  big-endian CRC-32 of everything before it

A 768x512 image with no parameters costs 13 bytes of container overhead. The CRC catches every
truncation and every corrupted byte before a codec's decoder sees the payload.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import BitstreamError

MAGIC = b"UB"
FORMAT_VERSION = 1
_MAX_VARINT_BYTES = 5
MAX_DIMENSION = 1 << 20
_MIN_SIZE = len(MAGIC) + 2 + 3 + 4


def encode_varint(value: int) -> bytes:
    if value < 0 or value >= 1 << (7 * _MAX_VARINT_BYTES):
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise BitstreamError(f"truncated header field '{what}'")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BitstreamError(f"malformed header field '{what}'")


@dataclass(frozen=True)
class Container:
    codec_id: int
    width: int
    height: int
    params: bytes
    payload: bytes
    version: int = FORMAT_VERSION

    @property
    def overhead(self) -> int:
        """Bytes the container adds around the payload (header, parameters, checksum)."""
        return len(self.to_bytes()) - len(self.payload)

    def to_bytes(self) -> bytes:
        if not 0 <= self.codec_id <= 255:
            raise ValueError(f"codec id {self.codec_id} does not fit in one byte")
        if not (1 <= self.width <= MAX_DIMENSION and 1 <= self.height <= MAX_DIMENSION):
            raise ValueError(f"image size {self.width}x{self.height} outside 1..{MAX_DIMENSION}")
        body = b"".join(
            [
                MAGIC,
                bytes([self.version, self.codec_id]),
                encode_varint(self.width),
                encode_varint(self.height),
                encode_varint(len(self.params)),
                self.params,
                self.payload,
            ]
        )
        return seal(body)


def seal(body: bytes) -> bytes:
    """``body`` with its CRC-32 appended: a complete file once ``body`` is a container without its
    checksum (tests use it to hand a codec's own parser damaged data behind a valid checksum)."""
    return bytes(body) + struct.pack(">I", zlib.crc32(body))


def parse(data: bytes, name: str = "<bitstream>") -> Container:
    """Parse and verify a container; raise :class:`BitstreamError` naming ``name`` on any defect."""
    try:
        if len(data) < _MIN_SIZE:
            raise BitstreamError(f"too short ({len(data)} bytes) to be a ulbc bitstream")
        if data[:2] != MAGIC:
            raise BitstreamError("not a ulbc bitstream (bad magic number)")
        body, stored_crc = data[:-4], struct.unpack(">I", data[-4:])[0]
        if zlib.crc32(body) != stored_crc:
            raise BitstreamError("checksum mismatch: the file is corrupted or truncated")
        version, codec_id = body[2], body[3]
        if version != FORMAT_VERSION:
            raise BitstreamError(f"unsupported container version {version} (this ulbc reads {FORMAT_VERSION})")
        width, pos = decode_varint(body, 4, "width")
        height, pos = decode_varint(body, pos, "height")
        n_params, pos = decode_varint(body, pos, "params length")
        if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
            raise BitstreamError(f"invalid image size {width}x{height} in header")
        if pos + n_params > len(body):
            raise BitstreamError("parameter block runs past the end of the file")
        params = body[pos : pos + n_params]
        payload = body[pos + n_params :]
        return Container(codec_id, width, height, bytes(params), bytes(payload), version)
    except BitstreamError as exc:
        raise BitstreamError(f"{name}: {exc}") from None
