"""Video datasets: which config entries are video, where their clips are, and extracting their frames.

A dataset entry is video when it has a ``video`` block, uses the embedded clip (``sample-clip``) or
names a video registry set (UVG). Its clips are extracted once into lossless PNG frames,
``<out>/<clip>/000000.png, ...``: image codecs read them as items, video codecs as clips, and
metrics compare against exactly those pixels. PNG frames (rather than one array file per clip) can
be opened by any viewer and are read frame by frame, so a 1080p clip never has to sit in memory
twice; a 600-frame UVG clip costs about as much disk as its raw YUV.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .errors import ConfigError
from .fsutil import write_bytes_atomic
from .manifest import item_id

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".y4m", ".yuv", ".i420", ".iyuv", ".raw"})
RAW_EXTENSIONS = frozenset({".yuv", ".i420", ".iyuv", ".raw"})  # as ulbc.video.RAW_SUFFIXES
SAMPLE_CLIP_SOURCE = "sample-clip"
#: Written last into the frames folder: extraction of every clip finished with these settings.
DONE_MARKER = ".ulbc-frames.json"
_STATE_DIR = ".ulbc-clips"


def is_video_entry(entry: Mapping[str, Any]) -> bool:
    """Whether a config dataset entry is a video dataset (cheap: no file access)."""
    if "video" in entry or entry.get("source") == SAMPLE_CLIP_SOURCE:
        return True
    from .datasets import DATASETS

    spec = DATASETS.get(str(entry.get("source")))
    return spec is not None and spec.media == "video"


def frame_options(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The frame selection of an entry: first frame, frame count (None: all), step, output size."""
    video = dict(entry.get("video") or {})
    unknown = set(video) - {"first", "frames", "step", "size", "raw"}
    if unknown:
        raise ConfigError(f"video options {sorted(unknown)} unknown; known: first, frames, step, size, raw")
    first, count, step = video.get("first", 0), video.get("frames"), video.get("step", 1)
    if not isinstance(first, int) or first < 0:
        raise ConfigError(f"video option first must be an integer >= 0, got {first!r}")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ConfigError(f"video option frames must be an integer >= 1, got {count!r}")
    if not isinstance(step, int) or step < 1:
        raise ConfigError(f"video option step must be an integer >= 1, got {step!r}")
    size = video.get("size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ConfigError(f"video option size must be [width, height], got {size!r}")
        size = (int(size[0]), int(size[1]))
    return {"first": first, "count": count, "step": step, "size": size}


def _raw_spec(entry: Mapping[str, Any], registry_video: Mapping[str, Any] | None, path: Path):
    from .video import RawVideoSpec

    raw = dict((entry.get("video") or {}).get("raw") or {})
    if not raw and registry_video:
        raw = {k: registry_video[k] for k in ("width", "height", "pix_fmt", "fps") if k in registry_video}
    if not raw:
        raise ConfigError(f"{path}: a headerless raw video needs video.raw: {{width, height, pix_fmt, fps}} in the config")
    missing = {"width", "height"} - set(raw)
    if missing:
        raise ConfigError(f"{path}: video.raw needs {', '.join(sorted(missing))}")
    return RawVideoSpec(width=int(raw["width"]), height=int(raw["height"]),
                        pix_fmt=str(raw.get("pix_fmt", "yuv420p")), fps=raw.get("fps", 25))


def video_sources(entry: Mapping[str, Any], datasets_dir: str | os.PathLike) -> tuple[Path, list[str], dict | None]:
    """(root, clip files relative to it, the registry's raw-video description or None)."""
    kind = str(entry.get("source"))
    if kind == SAMPLE_CLIP_SOURCE:
        from .video import embedded_clip_path

        path = embedded_clip_path()
        return path.parent, [path.name], None
    if kind == "local":
        from .datasets import _local_items, _visible_files

        if entry.get("pattern") or any(ch in str(entry.get("path", "")) for ch in "*?["):
            root, rels = _local_items(entry)
        else:
            root = Path(os.path.abspath(os.path.expanduser(str(entry.get("path", "")))))
            if not root.is_dir():
                if root.is_file():
                    return root.parent, [root.name], None
                raise ConfigError(f"local video dataset: {entry.get('path')} does not exist")
            rels = [rel for rel in _visible_files(root, root.rglob("*")) if Path(rel).suffix.lower() in VIDEO_EXTENSIONS]
        if not rels:
            raise ConfigError(f"local video dataset: no videos ({'/'.join(sorted(VIDEO_EXTENSIONS))}) under {entry.get('path')}")
        return root, rels, None
    from .datasets import _spec, resolve_items

    root, rels = resolve_items(entry, datasets_dir)
    return root, rels, _spec(kind).video


def _settings(path: Path, options: Mapping[str, Any], raw) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "options": settings_options(options),
            "raw": None if raw is None else {"width": raw.width, "height": raw.height, "pix_fmt": raw.pix_fmt,
                                             "fps": str(raw.fps)}}


def extract_dataset_frames(entry: Mapping[str, Any], datasets_dir: str | os.PathLike, out_dir: str | os.PathLike,
                           *, progress: bool = True) -> list[str]:
    """Extract every clip of a video dataset entry into ``out_dir/<clip>/NNNNNN.png``.

    Clips already extracted with the same source file and options are kept. Returns the frame
    paths relative to ``out_dir``, sorted. The done-marker is written last.
    """
    from .video import extract_frames

    out = Path(out_dir)
    options = frame_options(entry)
    root, rels, registry_video = video_sources(entry, datasets_dir)
    state = out / _STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    (out / DONE_MARKER).unlink(missing_ok=True)
    clips: dict[str, str] = {}
    for rel in rels:
        clip = item_id(rel).replace("/", "_")
        if clip in clips:
            raise ConfigError(f"{root / rel} and {root / clips[clip]} give the same clip name {clip!r}; rename one")
        clips[clip] = rel
        path = root / rel
        raw = _raw_spec(entry, registry_video, path) if path.suffix.lower() in RAW_EXTENSIONS else None
        settings = _settings(path, options, raw)
        record = state / f"{clip}.json"
        dest = out / clip
        try:
            if dest.is_dir() and json.loads(record.read_text()) == settings:
                continue
        except (OSError, ValueError):
            pass
        record.unlink(missing_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        extract_frames(path, dest, first=options["first"], count=options["count"], step=options["step"],
                       size=options["size"], raw=raw)
        write_bytes_atomic(record, (json.dumps(settings, sort_keys=True) + "\n").encode())
    # Frames of clips no longer in the dataset must not become items.
    for stale in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in clips):
        shutil.rmtree(stale)
        (state / f"{stale.name}.json").unlink(missing_ok=True)
    frames = sorted(PurePosixPath(clip, p.name).as_posix() for clip in clips for p in (out / clip).glob("*.png"))
    summary = {"clips": len(clips), "frames": len(frames), "options": settings_options(options)}
    write_bytes_atomic(out / DONE_MARKER, (json.dumps(summary, indent=1) + "\n").encode())
    return frames


def settings_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def frame_items(frames_dir: str | os.PathLike) -> list[str]:
    """Frame paths (relative, sorted) of an extracted frames folder; it must be complete."""
    out = Path(frames_dir)
    if not (out / DONE_MARKER).is_file():
        raise ConfigError(f"{out}: frame extraction has not finished (no {DONE_MARKER})")
    return sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png") if not p.parent.name.startswith("."))


def save_frames(frames, dest_dir: str | os.PathLike) -> list[Path]:
    """Write (T, H, W, 3) frames as ``000000.png, ...`` into a new folder, atomically: they are written
    into a hidden sibling that is renamed at the end, so a failure leaves no partial folder."""
    from .imageio import save_png

    dest = Path(dest_dir)
    if dest.exists():
        raise ConfigError(f"{dest}: already exists; decoded frames go into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for index, frame in enumerate(frames):
            save_png(frame, tmp / f"{index:06d}.png")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(dest.glob("*.png"))


def load_input_frames(path: str | os.PathLike, *, frames: int | None = None, raw: str | None = None):
    """Frames for a video codec from the command line: a video file, a folder of frames or one image
    (a one-frame clip). ``raw`` is ``WIDTHxHEIGHT[:PIX_FMT[:FPS]]`` for headerless YUV."""
    import numpy as np

    from .imageio import load_rgb
    from .video import RawVideoSpec, load_clip, read_frames

    path = Path(path)
    if path.is_dir():
        clip = load_clip(path)
        return clip[:frames] if frames else clip
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        spec = None
        if path.suffix.lower() in RAW_EXTENSIONS or raw:
            if not raw:
                raise ConfigError(f"{path}: a headerless raw video needs --raw WIDTHxHEIGHT[:PIX_FMT[:FPS]]")
            try:
                size, *rest = raw.split(":")
                width, height = (int(v) for v in size.lower().split("x"))
            except ValueError:
                raise ConfigError(f"--raw {raw!r}: expected WIDTHxHEIGHT[:PIX_FMT[:FPS]]") from None
            spec = RawVideoSpec(width=width, height=height, pix_fmt=rest[0] if rest else "yuv420p",
                                fps=float(rest[1]) if len(rest) > 1 else 25)
        return read_frames(path, count=frames, raw=spec)
    return np.ascontiguousarray(load_rgb(path)[None])
