"""Hostile input media: damaged source videos, EXIF orientation, multi-frame images, the 2^28-pixel limit.

Every fixture is built here (ffmpeg's test source, Pillow), so nothing needs ../shared; the real clips
there are only checked not to be refused when present.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, needs_ffmpeg
from ulbc.cli import main
from ulbc.errors import InputError
from ulbc.imageio import MAX_PIXELS, load_rgb, probe_image

VIDEO_DATA = SHARED / "data" / "video"


# -- damaged source videos --------------------------------------------------------------------------------
def _mp4_boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 boxes: type -> (payload start, end)."""
    boxes, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        boxes[kind] = (pos + 8, pos + size)
        pos += size
    return boxes


def _flip_bytes(data: bytes, start: int, end: int, n: int, seed: int) -> bytes:
    """``n`` seeded byte inversions in the middle half of ``data[start:end]``."""
    rng, out = random.Random(seed), bytearray(data)
    quarter = (end - start) // 4
    for pos in rng.sample(range(start + quarter, end - quarter), n):
        out[pos] ^= 0xFF
    return bytes(out)


@pytest.fixture(scope="module")
def x264_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(intact, damaged) 20-frame H.264 MP4s; the damaged one has bytes inverted inside its mdat."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    folder = tmp_path_factory.mktemp("x264")
    intact = folder / "intact.mp4"
    made = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                           "testsrc=size=160x120:rate=25", "-frames:v", "20", "-c:v", "libx264", "-threads", "1",
                           "-pix_fmt", "yuv420p", "-g", "10", str(intact)], capture_output=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"ffmpeg cannot encode H.264 here: {made.stderr.decode()[-200:]}")
    data = intact.read_bytes()
    start, end = _mp4_boxes(data)[b"mdat"]
    damaged = folder / "damaged.mp4"
    damaged.write_bytes(_flip_bytes(data, start, end, 20, seed=1))
    return intact, damaged


def _ffmpeg_conceals(path: Path) -> bool:
    """Whether plain ffmpeg (ulbc's old way) decodes ``path`` with exit status 0 but reports errors."""
    plain = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-i", str(path),
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, timeout=120)
    return plain.returncode == 0 and bool(plain.stderr.strip())


def test_damaged_mp4_is_refused_naming_the_file(x264_pair):
    from ulbc.video import read_frames

    intact, damaged = x264_pair
    assert read_frames(intact).shape == (20, 120, 160, 3)
    assert _ffmpeg_conceals(damaged)  # the case of the bad-input campaign: exit 0, concealed frames
    with pytest.raises(InputError, match=r"damaged\.mp4: damaged or incomplete video, ffmpeg reports: h264: ") as info:
        read_frames(damaged)
    assert "\n" not in str(info.value) and " @ 0x" not in str(info.value)


def test_damaged_mp4_fails_frame_extraction_without_leaving_frames(x264_pair, tmp_path):
    from ulbc.video import extract_frames

    _, damaged = x264_pair
    with pytest.raises(InputError, match=r"damaged\.mp4: damaged"):
        extract_frames(damaged, tmp_path / "out" / "clip")
    assert not (tmp_path / "out" / "clip").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]  # no partial folder either


def test_damaged_mp4_stops_the_cli(x264_pair, tmp_path, capsys):
    from ulbc.codecs import CODECS

    _, damaged = x264_pair
    if CODECS["x264"].availability():
        pytest.skip("x264 not available here")
    assert main(["encode", str(damaged), str(tmp_path / "c.ulb"), "--codec", "x264", "--rate", "33"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged.mp4: damaged or incomplete video" in err
    assert not (tmp_path / "c.ulb").exists()

    source = json.dumps({"source": "local", "path": str(damaged.parent)})
    assert main(["extract-frames", "--dataset", "d", "--source", source, "--out-dir", str(tmp_path / "frames")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged.mp4: damaged or incomplete video" in err


def test_damage_after_the_selection_is_not_seen(x264_pair, tmp_path):
    """Only what is decoded is judged: the first frames of a clip damaged near its end still read."""
    from ulbc.video import read_frames

    intact, _ = x264_pair
    data = intact.read_bytes()
    start, end = _mp4_boxes(data)[b"mdat"]
    tail = tmp_path / "tail.mp4"
    tail.write_bytes(_flip_bytes(data, end - (end - start) // 5, end, 10, seed=2))
    with pytest.raises(InputError, match=r"tail\.mp4: damaged"):
        read_frames(tail)
    assert np.array_equal(read_frames(tail, count=4), read_frames(intact, count=4))


@needs_ffmpeg
def test_damaged_lossless_clip_is_refused(tmp_path):
    """FFV1 conceals a slice whose CRC fails and ffmpeg exits 0; that must not pass either."""
    from ulbc.video import read_frames, write_lossless_clip

    frames = np.random.default_rng(3).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    clip = tmp_path / "clip.mkv"
    write_lossless_clip(frames, clip)
    assert np.array_equal(read_frames(clip), frames)
    damaged = tmp_path / "flipped.mkv"
    data = clip.read_bytes()
    damaged.write_bytes(_flip_bytes(data, 0, len(data), 4, seed=5))
    assert _ffmpeg_conceals(damaged)
    with pytest.raises(InputError, match=r"flipped\.mkv: damaged or incomplete video, ffmpeg reports: "):
        read_frames(damaged)


@needs_ffmpeg
def test_truncated_matroska_is_refused(tmp_path):
    """A Matroska file cut mid-cluster gave its first frames with exit status 0."""
    from ulbc.video import embedded_clip_path, read_frames

    data = embedded_clip_path().read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    assert _ffmpeg_conceals(cut)
    with pytest.raises(InputError, match=r"cut\.mkv: damaged or incomplete video, ffmpeg reports: .*ended prematurely"):
        read_frames(cut)


def _real_clips() -> list[Path]:
    if not VIDEO_DATA.is_dir():
        return []
    return sorted(p for p in VIDEO_DATA.rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov", ".avi"))


@needs_ffmpeg
@pytest.mark.parametrize("clip", _real_clips() or [None], ids=lambda p: p.name if p else "none")
def test_intact_real_clips_are_not_refused(clip):
    from ulbc.video import iter_frames, probe_video

    if clip is None:
        pytest.skip(f"no clips under {VIDEO_DATA} (shared data)")
    frames = sum(1 for _ in iter_frames(clip))  # one frame at a time: a 720p clip does not sit in memory
    assert frames == probe_video(clip).n_frames


# -- EXIF orientation: never applied ----------------------------------------------------------------------
def _asymmetric_image() -> np.ndarray:
    """24x16 RGB whose every flip and rotation differs: one bright 8x8 block at the top left."""
    image = np.full((16, 24, 3), 40, dtype=np.uint8)
    image[:8, :8] = 200
    image[..., 1] += np.arange(24, dtype=np.uint8)[None] * 2  # keeps left-right distinct from up-down
    return image


_ORIENTED_FORMATS = {
    "jpeg": ("jpg", {"quality": 100, "subsampling": 0}),
    "tiff": ("tif", {}),
    "tiff-lzw": ("tif", {"compression": "tiff_lzw"}),
    "png": ("png", {}),  # eXIf chunk
    "webp": ("webp", {"lossless": True}),
}


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("fmt", sorted(_ORIENTED_FORMATS))
def test_exif_orientation_is_never_applied(tmp_path, fmt, orientation):
    ext, options = _ORIENTED_FORMATS[fmt]
    stored = _asymmetric_image()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{ext}"
    Image.fromarray(stored).save(path, exif=exif, **options)
    with Image.open(path) as img:
        assert img.getexif().get(0x0112) == orientation  # the tag is really in the file

    loaded = load_rgb(path)
    assert loaded.shape == stored.shape
    if fmt == "jpeg":
        assert np.abs(loaded.astype(int) - stored).max() <= 8
    else:
        assert np.array_equal(loaded, stored)
    assert probe_image(path) == (24, 16, "RGB")


# -- multi-frame images ---------------------------------------------------------------------------------
_ANIMATED = {
    "gif": ("gif", {}),
    "apng": ("png", {}),
    "webp": ("webp", {"lossless": True}),
    "tiff": ("tif", {}),
}


def _save_frames(path: Path, n: int, **options) -> None:
    frames = [Image.new("RGB", (8, 6), (40 * i, 255 - 40 * i, 0)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], **options)


@pytest.mark.parametrize("kind", sorted(_ANIMATED))
def test_multi_frame_images_are_refused(tmp_path, kind):
    ext, options = _ANIMATED[kind]
    path = tmp_path / f"anim.{ext}"
    _save_frames(path, 3, **options)
    pattern = rf"anim\.{ext}: \w+ image has 3 frames, and ulbc would read only the first; store them as a video"
    with pytest.raises(InputError, match=pattern):
        load_rgb(path)
    with pytest.raises(InputError, match=pattern):
        probe_image(path)


@pytest.mark.parametrize("kind", sorted(_ANIMATED))
def test_single_frame_of_each_format_still_loads(tmp_path, kind):
    ext, options = _ANIMATED[kind]
    path = tmp_path / f"still.{ext}"
    _save_frames(path, 1, **options)
    assert load_rgb(path).shape == (6, 8, 3)


def test_mpo_reads_its_primary_image(tmp_path):
    """A JPEG with extra pictures (MPO, as phones write for previews and gain maps) is not an animation."""
    path = tmp_path / "photo.mpo"
    _save_frames(path, 2, format="MPO", quality=95)
    with Image.open(path) as img:
        assert img.format == "MPO" and img.n_frames == 2
    first = load_rgb(path)
    assert first.shape == (6, 8, 3) and first[..., 0].mean() < 20 and first[..., 1].mean() > 230


def test_manifest_refuses_an_animated_image(tmp_path):
    from ulbc.manifest import build_manifest

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    _save_frames(tmp_path / "b.png", 4)
    with pytest.raises(InputError, match=r"b\.png: PNG image has 4 frames"):
        build_manifest("d", tmp_path, ["a.png", "b.png"], tmp_path / "m.parquet", progress=False)
    assert not (tmp_path / "m.parquet").exists()


def test_video_codec_refuses_an_animated_gif(tmp_path, capsys):
    from ulbc.codecs import CODECS

    if CODECS["x264"].availability():
        pytest.skip("x264 not available here")
    path = tmp_path / "anim.gif"
    _save_frames(path, 5)
    assert main(["encode", str(path), str(tmp_path / "c.ulb"), "--codec", "x264", "--rate", "33"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "anim.gif: GIF image has 5 frames" in err


# -- the 2^28-pixel limit -----------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, with a token IDAT: Pillow's open reads only the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_one_pixel_limit_for_ulbc_and_pillow():
    assert MAX_PIXELS == 2**28
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_over_the_limit_cli_prints_one_line(tmp_path):
    """Pillow's bomb warning would come before ulbc's one-line refusal; the CLI prints only the latter."""
    import sys

    path = tmp_path / "over.png"
    _png_header_only(path, 16385, 16384)
    run = subprocess.run([sys.executable, "-m", "ulbc", "encode", str(path), str(tmp_path / "o.ulb"), "--codec", "jpeg"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "over.png: image is 16385x16384" in run.stderr, run.stderr


def test_largest_promised_image_passes_every_header_check(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 16384, 16384)  # exactly 2^28: between Pillow's old guard (179 M) and the limit
    assert probe_image(path) == (16384, 16384, "RGB")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # under pytest's own filters
@pytest.mark.parametrize("size", [(16385, 16384), (16384, 16385), (40000, 40000)],
                         ids=["just-over", "just-over-tall", "over-pillow-guard"])
def test_above_the_limit_is_refused_before_decoding(tmp_path, size):
    path = tmp_path / "over.png"
    _png_header_only(path, *size)
    for read in (probe_image, load_rgb):
        with pytest.raises(InputError, match=r"over\.png: image is .*above the limit of 268435456 pixels \(2\^28\)"):
            read(path)
