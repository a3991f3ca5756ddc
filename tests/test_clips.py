"""Video datasets: config entries, frame extraction into a study, and clips on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ulbc.clips import (
    DONE_MARKER,
    extract_dataset_frames,
    frame_items,
    frame_options,
    is_video_entry,
    load_input_frames,
    save_frames,
)
from ulbc.errors import ConfigError, InputError


def test_which_entries_are_video():
    assert is_video_entry({"source": "sample-clip"})
    assert is_video_entry({"source": "uvg"})
    assert is_video_entry({"source": "local", "path": "x", "video": {}})
    assert not is_video_entry({"source": "local", "path": "x"})
    assert not is_video_entry({"source": "kodak"})


def test_frame_options_are_checked():
    assert frame_options({"video": {"frames": 4, "size": [32, 24]}}) == {"first": 0, "count": 4, "step": 1,
                                                                       "size": (32, 24)}
    for bad in ({"frames": 0}, {"step": 0}, {"first": -1}, {"size": [32]}, {"fps": 3}):
        with pytest.raises(ConfigError):
            frame_options({"video": bad})


def test_embedded_clip_extraction_is_reused_and_redone_on_change(tmp_path):
    out = tmp_path / "frames"
    entry = {"source": "sample-clip", "video": {"frames": 3, "size": [32, 24]}}
    frames = extract_dataset_frames(entry, tmp_path, out)
    assert frames == [f"cars_8f/{i:06d}.png" for i in range(3)] == frame_items(out)
    assert json.loads((out / DONE_MARKER).read_text())["frames"] == 3
    stamp = (out / "cars_8f" / "000000.png").stat().st_mtime_ns
    extract_dataset_frames(entry, tmp_path, out)  # same settings: nothing is rewritten
    assert (out / "cars_8f" / "000000.png").stat().st_mtime_ns == stamp
    entry["video"]["frames"] = 2
    assert extract_dataset_frames(entry, tmp_path, out) == [f"cars_8f/{i:06d}.png" for i in range(2)]


def test_local_raw_videos_need_their_geometry(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    # Two 16x8 I420 frames: 16*8 luma + 2 * 8*4 chroma bytes each.
    frame_bytes = 16 * 8 * 3 // 2
    (clips / "walk.yuv").write_bytes(np.arange(2 * frame_bytes, dtype=np.uint8).tobytes())
    (clips / "stale").mkdir()
    with pytest.raises(ConfigError, match="video.raw"):
        extract_dataset_frames({"source": "local", "path": str(clips), "video": {}}, tmp_path, tmp_path / "f")
    out = tmp_path / "f"
    (out / "gone").mkdir(parents=True)  # a clip no longer in the dataset must not stay an item
    entry = {"source": "local", "path": str(clips), "video": {"raw": {"width": 16, "height": 8}}}
    assert extract_dataset_frames(entry, tmp_path, out) == ["walk/000000.png", "walk/000001.png"]
    assert not (out / "gone").exists()
    entry["video"]["frames"] = 3
    with pytest.raises(InputError, match="walk.yuv"):
        extract_dataset_frames(entry, tmp_path, out)
    assert not (out / DONE_MARKER).exists()  # a failed extraction is never taken as finished
    with pytest.raises(ConfigError, match="not finished"):
        frame_items(out)


def test_save_frames_is_atomic_and_refuses_to_overwrite(tmp_path):
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    paths = save_frames(frames, tmp_path / "out")
    assert [p.name for p in paths] == ["000000.png", "000001.png"]
    with pytest.raises(ConfigError, match="already exists"):
        save_frames(frames, tmp_path / "out")
    with pytest.raises(Exception):
        save_frames(np.zeros((2, 4, 6, 3), np.float64), tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written


def test_load_input_frames(tmp_path, photo):
    from ulbc.imageio import save_png
    from ulbc.video import embedded_clip_path

    clip = load_input_frames(embedded_clip_path(), frames=2)
    assert clip.shape == (2, 240, 320, 3)
    save_png(photo, tmp_path / "p.png")
    assert load_input_frames(tmp_path / "p.png").shape == (1, *photo.shape)
    (tmp_path / "c.yuv").write_bytes(bytes(16 * 8 * 3 // 2))
    with pytest.raises(ConfigError, match="--raw"):
        load_input_frames(tmp_path / "c.yuv")
    assert load_input_frames(tmp_path / "c.yuv", raw="16x8").shape == (1, 8, 16, 3)
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        load_input_frames(tmp_path / "c.yuv", raw="16by8")


def test_cli_encodes_a_clip_and_decodes_it_in_a_fresh_process(tmp_path):
    from ulbc.codecs import CODECS
    from ulbc.video import embedded_clip_path, load_clip

    if CODECS["x264"].availability():
        pytest.skip("x264 not available here")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "ulbc", *a], capture_output=True, text=True, env=env,
                                    timeout=300)
    enc = run("encode", str(embedded_clip_path()), str(tmp_path / "c.ulb"), "--codec", "x264", "--frames", "3",
              "--rate", "33", "--recon", str(tmp_path / "recon"))
    assert enc.returncode == 0, enc.stderr
    report = json.loads(enc.stdout)
    assert report["frames"] == 3
    assert report["bpp"] == pytest.approx(8 * (tmp_path / "c.ulb").stat().st_size / (3 * 320 * 240))
    dec = run("decode", str(tmp_path / "c.ulb"), str(tmp_path / "dec"))
    assert dec.returncode == 0, dec.stderr
    assert json.loads(dec.stdout)["frames"] == 3
    assert np.array_equal(load_clip(tmp_path / "dec"), load_clip(tmp_path / "recon"))
