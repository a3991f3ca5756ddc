import zlib

import pytest

from ulbc import bitstream
from ulbc.errors import BitstreamError


def make(payload=b"payload-bytes", params=b"\x01\x02", w=768, h=512, codec_id=7):
    return bitstream.Container(codec_id, w, h, params, payload).to_bytes()


def test_round_trip_and_overhead():
    data = make()
    c = bitstream.parse(data)
    assert (c.codec_id, c.width, c.height, c.params, c.payload) == (7, 768, 512, b"\x01\x02", b"payload-bytes")
    # magic 2 + version 1 + codec 1 + width 2 + height 2 + params length 1 + crc 4 = 13 (+2 params)
    assert len(data) - len(c.payload) == 15
    assert bitstream.Container(1, 768, 512, b"", b"x").overhead == 13


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**20, 2**35 - 1])
def test_varint(value):
    enc = bitstream.encode_varint(value)
    assert bitstream.decode_varint(enc, 0, "v") == (value, len(enc))


def test_every_truncation_and_every_byte_flip_is_a_clean_error():
    data = make()
    for n in range(len(data)):
        with pytest.raises(BitstreamError, match="<bitstream>"):
            bitstream.parse(data[:n])
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            corrupt = bytearray(data)
            corrupt[i] ^= mask
            with pytest.raises(BitstreamError):
                bitstream.parse(bytes(corrupt))


def test_valid_crc_but_bad_header_fields():
    def with_crc(body):
        return body + zlib.crc32(body).to_bytes(4, "big")

    good = make()[:-4]
    bad_version = bytearray(good)
    bad_version[2] = 99
    with pytest.raises(BitstreamError, match="version 99"):
        bitstream.parse(with_crc(bytes(bad_version)), "f.ulb")
    # params length pointing past the end
    body = b"UB\x01\x07" + bitstream.encode_varint(4) + bitstream.encode_varint(4) + bitstream.encode_varint(1000)
    with pytest.raises(BitstreamError, match="past the end"):
        bitstream.parse(with_crc(body))
    # zero width
    body = b"UB\x01\x07\x00\x04\x00"
    with pytest.raises(BitstreamError, match="invalid image size"):
        bitstream.parse(with_crc(body))
    # a varint that never ends
    body = b"UB\x01\x07" + b"\xff" * 8
    with pytest.raises(BitstreamError, match="malformed"):
        bitstream.parse(with_crc(body))


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        import importlib

        import ulbc.fsutil

        importlib.reload(ulbc.fsutil)
        ulbc.fsutil.write_bytes_atomic(tmp_path / "x.bin", b"abc")
    finally:
        os.umask(old)
        importlib.reload(ulbc.fsutil)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# -- decode limits (ulbc.limits), checked before a codec's decoder runs ----------------------------------
def test_seal_appends_the_crc_that_parse_checks():
    data = make()
    assert bitstream.seal(data[:-4]) == data
    damaged = bytearray(data[:-4])
    damaged[-1] ^= 0xFF
    assert bitstream.parse(bitstream.seal(bytes(damaged))).payload[-1] == data[-5] ^ 0xFF


def test_limits_read_the_environment(monkeypatch):
    from ulbc import limits
    from ulbc.errors import ConfigError

    assert limits.DecodeLimits.from_env() == limits.DecodeLimits()
    assert limits.DecodeLimits().max_pixels == 2**28
    for text, value in (("512M", 512 << 20), ("16GiB", 16 << 30), ("1e9", 10**9), ("12345", 12345)):
        monkeypatch.setenv(limits.MEMORY_VAR, text)
        assert limits.DecodeLimits.from_env().max_memory_bytes == value
    for text in ("banana", "-5", "0"):
        monkeypatch.setenv(limits.MEMORY_VAR, text)
        with pytest.raises(ConfigError, match=limits.MEMORY_VAR):
            limits.DecodeLimits.from_env()


def test_a_classical_codec_refuses_a_forged_size_before_decoding(monkeypatch):
    from ulbc.codecs import CODECS, decode_bitstream

    jpeg = CODECS["jpeg"]
    payload = bitstream.parse(jpeg().encode(__import__("numpy").zeros((8, 8, 3), "uint8"), 50)).payload
    forged = bitstream.Container(jpeg.codec_id, 20000, 20000, b"", payload).to_bytes()
    with pytest.raises(BitstreamError, match=r"^f\.ulb: header claims 20000x20000 \(4e8 pixels\), over the decode "
                                             r"limit of 2\.68e8 pixels per image \(set ULBC_DECODE_MAX_PIXELS"):
        decode_bitstream(forged, name="f.ulb")
    # 2^28 pixels (what the README promises) passes the limits; the payload's own size then disagrees.
    at_limit = bitstream.Container(jpeg.codec_id, 16384, 16384, b"", payload).to_bytes()
    with pytest.raises(BitstreamError, match="JPEG payload is 8x8, the header says 16384x16384"):
        decode_bitstream(at_limit, name="f.ulb")
    monkeypatch.setenv("ULBC_DECODE_MAX_MEMORY", "1M")
    with pytest.raises(BitstreamError, match=r"needs an estimated .* of decoder memory.*ULBC_DECODE_MAX_MEMORY"):
        decode_bitstream(bitstream.Container(jpeg.codec_id, 512, 512, b"", payload).to_bytes(), name="f.ulb")
