"""x264, x265 and av1 video anchors: round trips through the registry, the rate grid, determinism,
padding of odd and tiny sizes, one-frame images, the stripped x264 SEI, option checks, and clean
errors on damaged bitstreams and missing tools."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ulbc import bitstream, video
from ulbc.codecs import CODECS, decode_bitstream, ffmpeg_codecs, get_codec, video_ffmpeg
from ulbc.errors import BitstreamError, ConfigError, ToolMissingError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

NAMES = ["x264", "x265", "av1"]


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255**2 / mse) if mse else np.inf


@pytest.fixture(scope="module")
def clip():
    """8 frames, 64x48, of the embedded traffic clip: cars moving through the crop."""
    frames = video.read_frames(video.embedded_clip_path())
    return np.ascontiguousarray(frames[:, 96:144, 128:192])


@pytest.fixture(scope="module")
def short(clip):
    """3 frames, 32x32: a stream small enough to damage at many places."""
    return np.ascontiguousarray(clip[:3, 8:40, 16:48])


def codec_or_skip(name, **options):
    reason = CODECS[name].availability()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return get_codec(name, **options)


def test_registered_with_stable_ids():
    assert {name: CODECS[name].codec_id for name in NAMES} == {"x264": 50, "x265": 51, "av1": 52}
    for name in NAMES:
        cls = CODECS[name]
        assert cls.media == "video" and not cls.uses_gpu and cls.min_size == (1, 1)
        assert 5 <= len(cls.default_rates) <= 7
        lo, hi = cls.rate_range
        assert all(lo <= r <= hi for r in cls.default_rates)
        # qp and crf: a larger value is a lower rate, and the grid starts at the lowest rate.
        assert list(cls.default_rates) == sorted(cls.default_rates, reverse=True)


@pytest.mark.parametrize("name", NAMES)
def test_version_names_ffmpeg_and_library(name):
    codec = codec_or_skip(name)
    version = codec.version()
    assert version.startswith("ffmpeg ") and codec.encoder in version
    assert any(ch.isdigit() for ch in version.split("/")[-1]), version


@pytest.mark.parametrize("name", NAMES)
def test_rate_grid_round_trip(name, clip):
    """Through the full container and the registry: sizes grow and quality rises along the grid."""
    codec = codec_or_skip(name)
    sizes, qualities = [], []
    for rate in codec.default_rates:
        data = codec.encode_clip(clip, rate)
        used, frames = decode_bitstream(data, name=f"{name}.ulbc")
        assert used.name == name and frames.shape == clip.shape and frames.dtype == np.uint8
        sizes.append(len(data))
        qualities.append(psnr(clip, frames))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    assert qualities == sorted(qualities), qualities
    # Measured on this crop: 32.9-35.0 dB at the grid's 4th point, 40-41 dB at its last.
    assert qualities[3] > 30 and qualities[-1] > 37, qualities


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name, clip):
    codec = codec_or_skip(name)
    rate = codec.default_rates[2]
    assert codec.encode_clip(clip, rate) == codec_or_skip(name).encode_clip(clip, rate)


@pytest.mark.parametrize("name", NAMES)
def test_payload_is_the_bare_stream(name, short):
    """Nothing but the frame count in the params; the payload is what the codec's demuxer reads."""
    codec = codec_or_skip(name)
    container = bitstream.parse(codec.encode_clip(short, codec.default_rates[2]))
    assert container.params == bitstream.encode_varint(3)
    probe = subprocess.run(["ffprobe", "-v", "error", "-f", codec.stream_format, "-show_entries", "stream=codec_name",
                            "-of", "csv=p=0", "pipe:"], input=container.payload, capture_output=True, timeout=60)
    assert probe.stdout.decode().strip() == {"x264": "h264", "x265": "hevc", "av1": "av1"}[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (37, 45), (17, 9)])
def test_odd_and_tiny_sizes_are_padded_and_cropped(name, shape, clip):
    codec = codec_or_skip(name)
    height, width = shape
    frames = np.ascontiguousarray(clip[:3, :height, 10 : 10 + width])
    _, out = decode_bitstream(codec.encode_clip(frames, codec.default_rates[-1]))
    assert out.shape == frames.shape
    assert psnr(frames, out) > 30  # a wrong crop offset would fail this
    coded_w, coded_h = codec.coded_size(width, height)
    assert coded_w % 2 == 0 and coded_h % 2 == 0 and coded_w >= width and coded_h >= height


def test_coded_sizes():
    assert get_codec("x264").coded_size(45, 37) == (46, 38)
    assert get_codec("x264", pix_fmt="yuv444p").coded_size(45, 37) == (45, 37)
    assert get_codec("x265").coded_size(45, 7) == (46, 32)
    assert get_codec("av1").coded_size(1, 1) == (2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_one_frame_image(name, clip):
    """An image is a one-frame clip: the container says one frame, and the image decoder gives (H, W, 3)."""
    codec = codec_or_skip(name)
    image = np.ascontiguousarray(clip[0, :40, :50])
    result = codec.encode_result(image, codec.default_rates[-1], name="still.png")
    container = bitstream.parse(result.data)
    assert (container.width, container.height) == (50, 40) and container.params[:1] == b"\x01"
    _, frames = decode_bitstream(result.data)
    assert frames.shape == (1, 40, 50, 3) and psnr(image, frames[0]) > 35
    still = codec.decode_payload(container.params[1:], container.payload, 50, 40, device="cpu")
    assert np.array_equal(still, frames[0])


@pytest.mark.parametrize("name", NAMES)
def test_yuv444_option(name, clip):
    codec = codec_or_skip(name, pix_fmt="yuv444p")
    data = codec.encode_clip(clip, codec.default_rates[-1])
    _, frames = decode_bitstream(data)  # the stream says 4:4:4; the decoder needs no option
    assert frames.shape == clip.shape and psnr(clip, frames) > 37


@pytest.mark.parametrize("name", NAMES)
def test_keyint_one_is_all_intra_and_larger(name, clip):
    low_delay = codec_or_skip(name).encode_clip(clip, CODECS[name].default_rates[2])
    all_intra = codec_or_skip(name, keyint=1).encode_clip(clip, CODECS[name].default_rates[2])
    assert len(all_intra) > 1.3 * len(low_delay)  # prediction between frames pays on moving footage


def test_x264_settings_sei_is_removed_without_changing_the_frames(clip):
    codec = codec_or_skip("x264")
    exe = shutil.which("ffmpeg")
    args = codec._encode_command(exe, 64, 48, len(clip), 33)
    full = subprocess.run(args, input=clip.tobytes(), capture_output=True, timeout=60, check=True).stdout
    assert video_ffmpeg._X264_SEI_UUID in full and b"x264 - core" in full
    result = codec.encode_clip_result(clip, 33)
    stored = bitstream.parse(result.data).payload
    assert stored == video_ffmpeg.strip_x264_settings_sei(full)
    assert b"x264 - core" not in stored and result.info["x264_sei_bytes_removed"] == len(full) - len(stored) > 300
    decoded_full = codec.decode_clip_payload(b"", full, 64, 48, len(clip), device="cpu")
    decoded_stored = codec.decode_clip_payload(b"", stored, 64, 48, len(clip), device="cpu")
    assert np.array_equal(decoded_full, decoded_stored)


def _sei(payload_type, body):
    return bytes([0x06, payload_type, len(body)]) + body + b"\x80"


def test_strip_x264_sei_keeps_everything_else():
    x264 = _sei(5, video_ffmpeg._X264_SEI_UUID + b"x264 - core 164")
    other_uuid = _sei(5, bytes(range(16)) + b"someone else")
    two_messages = bytes([0x06, 5, 20]) + video_ffmpeg._X264_SEI_UUID + b"abcd" + bytes([1, 1, 7]) + b"\x80"
    sps, slice_ = b"\x67\x64\x00\x0a\xac", b"\x65\x88\x84\x00\x00\x03\x01\xff"
    stream = (b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + x264 + b"\x00\x00\x00\x01" + other_uuid
              + b"\x00\x00\x01" + two_messages + b"\x00\x00\x00\x01" + slice_)
    expected = (b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + other_uuid + b"\x00\x00\x01" + two_messages
                + b"\x00\x00\x00\x01" + slice_)
    assert video_ffmpeg.strip_x264_settings_sei(stream) == expected
    assert video_ffmpeg.strip_x264_settings_sei(expected) == expected
    assert video_ffmpeg.strip_x264_settings_sei(b"") == b""


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_bitstreams_fail_cleanly(name, short):
    """Every truncation and every flipped byte of a whole bitstream is a one-line BitstreamError."""
    codec = codec_or_skip(name)
    data = codec.encode_clip(short, codec.default_rates[0])
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_bitstream(data[:n])
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x5A
        with pytest.raises(BitstreamError) as info:
            decode_bitstream(bytes(corrupt), name="bad.ulbc")
        assert str(info.value).startswith("bad.ulbc: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_payload_damage_behind_a_valid_checksum(name, short):
    """The codec's decoder fed damaged bytes (CRC recomputed) decodes or raises BitstreamError."""
    codec = codec_or_skip(name)
    container = bitstream.parse(codec.encode_clip(short, codec.default_rates[0]))
    payload = container.payload
    candidates = [payload[:n] for n in (0, 1, len(payload) // 3, len(payload) // 2, len(payload) - 1)]
    candidates += [b"\x00" * 64, b"garbage..." * 20]
    step = max(1, len(payload) // 10)  # each decode is an ffmpeg process: sample the positions
    for i in range(0, len(payload), step):
        damaged = bytearray(payload)
        damaged[i] ^= 0xFF
        candidates.append(bytes(damaged))
    for bad in candidates:
        data = bitstream.Container(codec.codec_id, 32, 32, container.params, bad).to_bytes()
        try:
            _, frames = decode_bitstream(data, name="bad.ulbc")
        except BitstreamError as exc:
            assert str(exc).startswith("bad.ulbc: ") and "\n" not in str(exc)
            continue
        assert frames.shape == short.shape


@pytest.mark.parametrize("name", NAMES)
def test_frame_count_must_match_the_header(name, short):
    codec = codec_or_skip(name)
    container = bitstream.parse(codec.encode_clip(short, codec.default_rates[0]))
    for declared in (2, 4):
        params = bitstream.encode_varint(declared)
        data = bitstream.Container(codec.codec_id, 32, 32, params, container.payload).to_bytes()
        with pytest.raises(BitstreamError, match=f"header says {declared}"):
            decode_bitstream(data)
    with pytest.raises(BitstreamError, match="carry no parameters"):
        decode_bitstream(bitstream.Container(codec.codec_id, 32, 32, container.params + b"\x00",
                                             container.payload).to_bytes())


@pytest.mark.parametrize("name", NAMES)
def test_header_size_larger_than_the_stream(name, short):
    codec = codec_or_skip(name)
    container = bitstream.parse(codec.encode_clip(short, codec.default_rates[0]))
    with pytest.raises(BitstreamError):
        decode_bitstream(bitstream.Container(codec.codec_id, 64, 32, container.params, container.payload).to_bytes())


def test_decoder_timeout_becomes_bitstream_error(short, monkeypatch):
    codec = codec_or_skip("x264")
    data = codec.encode_clip(short, codec.default_rates[0])

    def hang(args, **kwargs):
        raise subprocess.TimeoutExpired(args, kwargs.get("timeout"))

    monkeypatch.setattr(video_ffmpeg.subprocess, "run", hang)
    with pytest.raises(BitstreamError, match="did not finish"):
        decode_bitstream(data)


@pytest.mark.parametrize("name", NAMES)
def test_missing_ffmpeg_is_reported(name, short, monkeypatch):
    codec = codec_or_skip(name)
    data = codec.encode_clip(short, codec.default_rates[0])
    monkeypatch.setenv("PATH", "")
    reason = CODECS[name].availability()
    assert reason and "ffmpeg not found" in reason and "\n" not in reason
    with pytest.raises(ToolMissingError):
        codec.encode_clip(short, codec.default_rates[0])
    with pytest.raises(BitstreamError, match="not available"):
        decode_bitstream(data)
    with pytest.raises(ConfigError):
        get_codec(name)


@pytest.mark.parametrize("name", NAMES)
def test_ffmpeg_without_the_encoder_is_reported(name, short, monkeypatch):
    codec = codec_or_skip(name)
    real = ffmpeg_codecs._features(shutil.which("ffmpeg"))
    monkeypatch.setattr(ffmpeg_codecs, "_features", lambda exe: {**real, "encoders": real["encoders"] - {codec.encoder}})
    reason = CODECS[name].availability()
    assert reason and codec.encoder in reason
    with pytest.raises(ToolMissingError, match=codec.encoder):
        codec.encode_clip(short, codec.default_rates[0])


def test_options_are_checked(short):
    for name, options in [("x264", {"preset": "warp-speed"}), ("x265", {"preset": 3}), ("av1", {"cpu_used": 9}),
                          ("av1", {"cpu_used": True}), ("x264", {"keyint": 0}), ("x265", {"keyint": 2.5}),
                          ("av1", {"pix_fmt": "yuv422p"}), ("x264", {"threads": 4}), ("av1", {"preset": "fast"})]:
        with pytest.raises(ConfigError):
            get_codec(name, **options)
    for name in NAMES:
        with pytest.raises(ConfigError):
            get_codec(name).encode_clip(short, 27.5)
        with pytest.raises(ConfigError):
            get_codec(name).encode_clip(short, 64)


def test_preset_changes_the_stream(clip):
    fast = codec_or_skip("x265", preset="ultrafast").encode_clip(clip, 33)
    slow = codec_or_skip("x265", preset="slow").encode_clip(clip, 33)
    assert fast != slow
    for data in (fast, slow):
        _, frames = decode_bitstream(data)
        assert psnr(clip, frames) > 30
