"""hevc-intra and av1-intra: colour conversion without bias, the rate grid, determinism, padding of
tiny images, clean errors on bad payloads, and a missing ffmpeg reported rather than crashed on."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ulbc import bitstream
from ulbc.codecs import CODECS, decode_bitstream, ffmpeg_codecs, get_codec
from ulbc.errors import BitstreamError, ConfigError, ToolMissingError

from conftest import KODAK

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

NAMES = ["hevc-intra", "av1-intra"]


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255**2 / mse) if mse else np.inf


def synthetic(height, width, seed=0):
    """Smooth colour gradients with mild texture: photo-like enough for rate and PSNR checks."""
    y, x = np.mgrid[0:height, 0:width].astype(float)
    rng = np.random.default_rng(seed)
    planes = [
        128 + 90 * np.sin(x / 23 + 0.5) * np.cos(y / 31),
        128 + 80 * np.cos((x + y) / 40),
        60 + 150 * x / max(width - 1, 1),
    ]
    image = np.stack(planes, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def kodak256():
    """A 256x256 centre crop of Kodak's kodim23, or of scikit-image's bundled astronaut photo."""
    from conftest import skimage_photo
    from ulbc.imageio import load_rgb

    path = KODAK / "kodim23.png"
    image = load_rgb(path if path.is_file() else skimage_photo("astronaut.png"))
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 2 - 128 : h // 2 + 128, w // 2 - 128 : w // 2 + 128])


@pytest.fixture(scope="module")
def small(kodak256):
    return np.ascontiguousarray(kodak256[100:148, 96:160])  # 64x48


def codec_or_skip(name, **options):
    reason = CODECS[name].availability()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return get_codec(name, **options)


def coded_size(codec, payload):
    """Width and height of the frame inside a bare stream, decoded without cropping."""
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", codec.stream_format, "-i", "pipe:",
            "-f", "rawvideo", "-pix_fmt", "gray", "-frames:v", "1", "pipe:"]
    out = subprocess.run(args, input=payload, capture_output=True, timeout=60, check=True).stdout
    return len(out)


def test_registered_with_stable_ids():
    assert CODECS["hevc-intra"].codec_id == 20 and CODECS["av1-intra"].codec_id == 21
    for name in NAMES:
        cls = CODECS[name]
        assert cls.min_size == (1, 1)
        assert 5 <= len(cls.default_rates) <= 7
        lo, hi = cls.rate_range
        assert all(lo <= r <= hi for r in cls.default_rates)


@pytest.mark.parametrize("name", NAMES)
def test_version_names_ffmpeg_and_library(name):
    codec = codec_or_skip(name)
    version = codec.version()
    assert version.startswith("ffmpeg ") and codec.encoder in version
    assert any(ch.isdigit() for ch in version.split("/")[-1]), version  # the library's own version


@pytest.mark.parametrize("name", NAMES)
def test_rate_grid_round_trip(name, kodak256):
    """Sizes grow and quality rises over the grid, through the full container."""
    codec = codec_or_skip(name)
    sizes, qualities = [], []
    for rate in codec.default_rates:
        data = codec.encode(kodak256, rate)
        used, image = decode_bitstream(data)
        assert used.name == name and image.shape == kodak256.shape and image.dtype == np.uint8
        sizes.append(len(data))
        qualities.append(psnr(kodak256, image))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    assert qualities == sorted(qualities), qualities
    assert qualities[0] > 22 and qualities[-1] > 38, qualities
    bpp = [8 * s / kodak256[..., 0].size for s in sizes]
    assert bpp[0] < 0.25 and bpp[-1] > 0.8, bpp  # the grids span ~0.1-2 bpp on full Kodak images


@pytest.mark.parametrize("name", NAMES)
def test_colour_conversion_is_unbiased(name, kodak256):
    """At the finest quantizer the loss is the RGB<->YCbCr rounding only: high PSNR, no colour shift."""
    codec = codec_or_skip(name)
    _, image = decode_bitstream(codec.encode(kodak256, 0))
    assert psnr(kodak256, image) > 45
    shift = (image.astype(float) - kodak256).mean(axis=(0, 1))
    assert np.all(np.abs(shift) < 0.2), shift


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name, small):
    codec = codec_or_skip(name)
    rate = codec.default_rates[2]
    assert codec.encode(small, rate) == codec.encode(small, rate)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 5), (17, 9), (9, 40)])
def test_tiny_images_are_padded_and_cropped(name, shape):
    codec = codec_or_skip(name)
    image = synthetic(*shape, seed=sum(shape))
    data = codec.encode(image, codec.default_rates[-1])
    _, out = decode_bitstream(data)
    assert out.shape == image.shape
    assert psnr(image, out) > 28  # a wrong crop offset or a transposed pad would fail this
    # The stream holds at least the encoder's minimum frame: padding happened where needed.
    h, w = shape
    min_w, min_h = codec.min_coded
    assert coded_size(codec, bitstream.parse(data).payload) == max(w, min_w) * max(h, min_h)


@pytest.mark.parametrize("name", NAMES)
def test_odd_sizes_need_no_padding(name, kodak256):
    """4:4:4 has no chroma alignment: a 45x37 image is coded as exactly 45x37 pixels."""
    codec = codec_or_skip(name)
    image = np.ascontiguousarray(kodak256[:37, :45])
    data = codec.encode(image, codec.default_rates[-1])
    assert coded_size(codec, bitstream.parse(data).payload) == 45 * 37
    _, out = decode_bitstream(data)
    assert out.shape == image.shape and psnr(image, out) > 35


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("payload", [b"garbage..." * 20, b"", b"\x00" * 64])
def test_garbage_payload_in_valid_container(name, payload):
    codec = codec_or_skip(name)
    data = bitstream.Container(codec.codec_id, 64, 48, b"", payload).to_bytes()
    with pytest.raises(BitstreamError) as info:
        decode_bitstream(data, name="bad.ulbc")
    message = str(info.value)
    assert message.startswith("bad.ulbc: ") and "\n" not in message


@pytest.mark.parametrize("name", NAMES)
def test_header_size_larger_than_stream_is_an_error(name, small):
    codec = codec_or_skip(name)
    payload = bitstream.parse(codec.encode(small, codec.default_rates[0])).payload
    for w, h in [(128, 48), (64, 96)]:
        with pytest.raises(BitstreamError):
            decode_bitstream(bitstream.Container(codec.codec_id, w, h, b"", payload).to_bytes())


@pytest.mark.parametrize("name", NAMES)
def test_unexpected_params_are_an_error(name, small):
    codec = codec_or_skip(name)
    payload = bitstream.parse(codec.encode(small, codec.default_rates[0])).payload
    with pytest.raises(BitstreamError):
        decode_bitstream(bitstream.Container(codec.codec_id, 64, 48, b"\x01", payload).to_bytes())


@pytest.mark.parametrize("name", NAMES)
def test_decoder_timeout_becomes_bitstream_error(name, small, monkeypatch):
    codec = codec_or_skip(name)
    data = codec.encode(small, codec.default_rates[0])

    def hang(args, **kwargs):
        raise subprocess.TimeoutExpired(args, kwargs.get("timeout"))

    monkeypatch.setattr(ffmpeg_codecs.subprocess, "run", hang)
    with pytest.raises(BitstreamError, match="did not finish"):
        decode_bitstream(data)


@pytest.mark.parametrize("name", NAMES)
def test_missing_ffmpeg_is_reported(name, small, monkeypatch):
    codec = codec_or_skip(name)
    data = codec.encode(small, codec.default_rates[0])
    monkeypatch.setenv("PATH", "")
    reason = CODECS[name].availability()
    assert reason and "ffmpeg not found" in reason and "\n" not in reason
    with pytest.raises(ToolMissingError):
        codec.encode(small, codec.default_rates[0])
    with pytest.raises(BitstreamError, match="not available"):
        decode_bitstream(data)
    with pytest.raises(ConfigError):
        get_codec(name)


@pytest.mark.parametrize("name", NAMES)
def test_ffmpeg_without_the_encoder_is_reported(name, small, monkeypatch):
    codec = codec_or_skip(name)
    real = ffmpeg_codecs._features(shutil.which("ffmpeg"))
    crippled = {**real, "encoders": real["encoders"] - {codec.encoder}}
    monkeypatch.setattr(ffmpeg_codecs, "_features", lambda exe: crippled)
    reason = CODECS[name].availability()
    assert reason and codec.encoder in reason
    with pytest.raises(ToolMissingError, match=codec.encoder):
        codec.encode(small, codec.default_rates[0])


def test_options_are_checked():
    with pytest.raises(ConfigError):
        get_codec("hevc-intra", preset="warp-speed")
    with pytest.raises(ConfigError):
        get_codec("av1-intra", cpu_used=11)
    with pytest.raises(ConfigError):
        get_codec("av1-intra", threads=4)  # not an option: the thread count is pinned
    for name in NAMES:
        with pytest.raises(ConfigError):
            get_codec(name).encode(np.zeros((8, 8, 3), np.uint8), 27.5)


def test_preset_changes_the_stream(small):
    fast = codec_or_skip("hevc-intra", preset="ultrafast").encode(small, 32)
    slow = codec_or_skip("hevc-intra", preset="slow").encode(small, 32)
    assert fast != slow
    for data in (fast, slow):
        _, image = decode_bitstream(data)
        assert psnr(small, image) > 30
