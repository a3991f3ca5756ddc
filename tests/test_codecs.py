"""Every registered codec: round trip through the container, determinism, rate monotonicity, tiny
images, and corrupted bitstreams (clean errors, no crash, no hang)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ulbc import bitstream
from ulbc.codecs import CODECS, get_codec
from ulbc.codecs import decode_bitstream as _decode_bitstream
from ulbc.errors import BitstreamError, ConfigError, InputError

from conftest import STANDIN_CODECS, quick_options

NAMES = sorted(CODECS)


def codec_or_skip(name):
    reason = CODECS[name].availability()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return get_codec(name, **quick_options(name))


def decode_bitstream(data, **kwargs):
    """Decode as the registry does; a video codec returns a one-frame clip for an image: unwrap it."""
    codec, out = _decode_bitstream(data, **kwargs)
    if codec.media == "video":
        assert out.ndim == 4 and out.shape[0] == 1, "an image is a one-frame clip"
        out = out[0]
    return codec, out


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255**2 / mse) if mse else np.inf


def test_registry_ids_unique_and_grids_sane():
    ids = [cls.codec_id for cls in CODECS.values()]
    assert len(ids) == len(set(ids))
    assert {"jpeg", "webp", "avif", "jpeg2000", "jpegxl", "hevc-intra", "av1-intra"} <= set(CODECS)
    for cls in CODECS.values():
        if cls.name in STANDIN_CODECS:  # a model's rate points, all of them (zoo 1-8 or 1-6, GLC 0-3)
            first = int(cls.rate_range[0])
            assert list(cls.default_rates) == list(range(first, first + len(cls.default_rates))), cls.name
            continue
        assert 5 <= len(cls.default_rates) <= 7, cls.name
        lo, hi = cls.rate_range
        assert all(lo <= r <= hi for r in cls.default_rates)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_determinism_and_monotonic_rate(name, photo):
    codec = codec_or_skip(name)
    sizes, qualities = [], []
    # CompressAI's stand-ins are random models, one per quality: the grid's ends suffice.
    rates = sorted({codec.default_rates[0], codec.default_rates[-1]}) if name in STANDIN_CODECS else codec.default_rates
    for rate in rates:
        data = codec.encode(photo, rate)
        assert codec.encode(photo, rate) == data, "encoder must be deterministic"
        used, image = decode_bitstream(data)
        assert used.name == name and image.shape == photo.shape and image.dtype == np.uint8
        sizes.append(len(data))
        qualities.append(psnr(photo, image))
    if name in STANDIN_CODECS:
        # Random stand-in weights (no zoo or GLC weights here) have no rate-distortion order; the real
        # weights' curves are benchmarks/compressai_kodak.py's.
        return
    # The grid runs from low to high rate: sizes and quality grow (allow tiny quality noise).
    if codec.rate_param == "lambda":
        # Overfitted codecs at the 150-iteration smoke budget: neighbouring λ points are within
        # optimiser noise (their RD curves are measured in benchmarks/overfitted_rd.py); the ends of
        # the grid must still be ordered.
        assert sizes[-1] > sizes[0], sizes
    else:
        assert sizes == sorted(sizes), sizes
    # The video INRs at their 400-step smoke budget gain about 3 dB across the width grid on
    # kodim23, and where exactly depends on the CPU's float paths: the ends must be ordered by 1 dB.
    margin = 1 if codec.rate_param == "width" else 3
    assert qualities[-1] > qualities[0] + margin, qualities
    # A working codec beats the image's flat mean colour by far at its highest rate, whichever photo
    # and CPU it ran on; absolute quality targets belong in benchmarks/ (overfitted_rd, video_rd).
    flat = np.broadcast_to(photo.reshape(-1, 3).mean(axis=0).round().astype(np.uint8), photo.shape)
    assert qualities[-1] > psnr(photo, flat) + 8, (qualities, psnr(photo, flat))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 5), (17, 9)])
def test_tiny_images(name, shape):
    codec = codec_or_skip(name)
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    _, out = decode_bitstream(codec.encode(image, codec.default_rates[-1]))
    assert out.shape == image.shape


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_bitstreams_fail_cleanly(name, photo):
    codec = codec_or_skip(name)
    data = codec.encode(photo[:16, :16].copy(), codec.default_rates[0])
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_bitstream(data[:n])
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x5A
        with pytest.raises(BitstreamError):
            decode_bitstream(bytes(corrupt))


@pytest.mark.parametrize("name", NAMES)
def test_payload_garbage_behind_a_valid_checksum(name, photo):
    """A decoder fed damaged payload bytes (CRC recomputed) must decode or raise BitstreamError."""
    codec = codec_or_skip(name)
    container = bitstream.parse(codec.encode(photo[:16, :16].copy(), codec.default_rates[0]))
    payload = container.payload
    step = max(1, len(payload) // 12)  # every decode of an ffmpeg codec is a process: sample positions
    candidates = [payload[: len(payload) // 2], b"", b"\x00" * 64]
    for i in range(0, len(payload), step):
        damaged = bytearray(payload)
        damaged[i] ^= 0xFF
        candidates.append(bytes(damaged))
    for bad in candidates:
        data = bitstream.Container(codec.codec_id, 16, 16, container.params, bad).to_bytes()
        try:
            _, image = decode_bitstream(data)
        except BitstreamError:
            continue
        assert image.shape == (16, 16, 3)


def test_unknown_codec_and_bad_options_and_rates(photo):
    with pytest.raises(ConfigError, match="unknown codec 'nope'"):
        get_codec("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        get_codec("jpeg", colour="blue")
    with pytest.raises(ConfigError, match="outside"):
        get_codec("jpeg").encode(photo, 500)
    with pytest.raises(InputError, match="uint8"):
        get_codec("jpeg").encode(photo.astype(np.float32), 50)


def test_unknown_codec_id_in_file():
    body = b"UB\x01\xee\x04\x04\x00payload"
    with pytest.raises(BitstreamError, match="unknown codec id 238"):
        decode_bitstream(body + zlib.crc32(body).to_bytes(4, "big"), name="x.ulb")


def test_jxl_distance_mapping_inverts_libjxl():
    from ulbc.codecs.pillow_codecs import _jxl_quality_from_distance

    def libjxl(q):  # JxlEncoderDistanceFromQuality
        if q >= 100:
            return 0.0
        if q >= 30:
            return 0.1 + (100 - q) * 0.09
        return 53 / 3000 * q * q - 23 / 20 * q + 25

    for d in (0.5, 1, 3, 6.4, 8, 12, 20):
        assert libjxl(_jxl_quality_from_distance(d)) == pytest.approx(d, abs=1e-9)


def test_encoder_library_failure_is_one_line(monkeypatch, photo):
    from ulbc.codecs.pillow_codecs import JpegCodec
    from ulbc.errors import EncodeError

    def broken(self, rate, width, height):
        raise OSError("encoder error -2\nwith a second line")

    monkeypatch.setattr(JpegCodec, "save_kwargs", broken)
    with pytest.raises(EncodeError, match=r"^img\.png: jpeg encoder failed \(encoder error -2\)$"):
        get_codec("jpeg").encode(photo, 50, name="img.png")
