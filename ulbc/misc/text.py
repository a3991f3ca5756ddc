"""The text of a MISC file, coded by one of a few lossless methods, each with a stable id.

The paper counts text at 8 bits per character, uncompressed. Its captions are a few hundred
characters of plain English, too short for a compressor to learn much from them: brotli does best
because it carries a built-in dictionary of common words and phrases. On the 433 characters of
details and overall description in tests/test_misc_parts.py, raw deflate (zlib without header and
checksum) took 4.55 bits per character and brotli 3.99; on the 250-character description alone,
5.25 and 4.48. ``auto`` codes with every method and keeps the shortest, so a file never pays more
than its UTF-8 plus the method's id.
"""

from __future__ import annotations

import zlib
from typing import Callable

from ..errors import BitstreamError, ConfigError

#: Longest text a file may hold (bytes, decoded): far above five lines of an LMM's answer.
MAX_TEXT_BYTES = 1 << 16


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15)
    try:
        out = unpacker.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error as exc:
        raise BitstreamError(f"the deflated text is damaged ({exc})") from None
    if len(out) > MAX_TEXT_BYTES or unpacker.unconsumed_tail:
        raise BitstreamError(f"the text inflates to more than {MAX_TEXT_BYTES} bytes")
    if not unpacker.eof or unpacker.unused_data:
        raise BitstreamError("the deflated text is truncated or followed by other bytes")
    return out


def _brotli_pack(data: bytes) -> bytes:
    import brotli

    return brotli.compress(data, mode=brotli.MODE_TEXT, quality=11)


def _brotli_unpack(data: bytes) -> bytes:
    import brotli

    # Fed a few bytes at a time, so that a forged stream that expands without end is stopped
    # after one step past the limit (brotli's own output limit is not honoured by every build).
    decompressor = brotli.Decompressor()
    out = bytearray()
    try:
        for start in range(0, len(data), 16):
            out += decompressor.process(data[start : start + 16])
            if len(out) > MAX_TEXT_BYTES:
                raise BitstreamError(f"the text decompresses to more than {MAX_TEXT_BYTES} bytes")
    except brotli.error as exc:
        raise BitstreamError(f"the brotli text is damaged ({' '.join(str(exc).split())})") from None
    if not decompressor.is_finished():
        raise BitstreamError("the brotli text is truncated")
    return bytes(out)


def _same(data: bytes) -> bytes:
    return data


#: Method name -> (id stored in the file, pack, unpack). Never reorder or reuse an id.
METHODS: dict[str, tuple[int, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "utf8": (0, _same, _same),
    "deflate": (1, _deflate, _inflate),
    "brotli": (2, _brotli_pack, _brotli_unpack),
}
CHOICES = ("auto", *METHODS)
_BY_ID = {method_id: name for name, (method_id, _, _) in METHODS.items()}


def encode_text(text: str, method: str = "auto") -> tuple[int, bytes]:
    """(method id, coded bytes) of ``text``; ``auto`` keeps the shortest (the lowest id on a tie)."""
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise ConfigError(f"the text has {len(data)} bytes, at most {MAX_TEXT_BYTES}")
    if method == "auto":
        coded = [(method_id, pack(data)) for method_id, pack, _ in METHODS.values()]
        return min(coded, key=lambda c: (len(c[1]), c[0]))
    if method not in METHODS:
        raise ConfigError(f"unknown text coding {method!r}; known: {', '.join(CHOICES)}")
    method_id, pack, _ = METHODS[method]
    return method_id, pack(data)


def decode_text(method_id: int, data: bytes) -> str:
    """The text of :func:`encode_text`; BitstreamError when the method or the bytes are wrong."""
    if method_id not in _BY_ID:
        raise BitstreamError(f"unknown text coding id {method_id}")
    raw = METHODS[_BY_ID[method_id]][2](data)
    if len(raw) > MAX_TEXT_BYTES:
        raise BitstreamError(f"the text has more than {MAX_TEXT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("the text is not UTF-8") from None
    return text


def method_name(method_id: int) -> str:
    return _BY_ID[method_id]
