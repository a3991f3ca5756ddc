"""Video input: probing, frame reading and extraction, and the embedded test clip, through ffmpeg.

Every ffmpeg/ffprobe call takes an argument list (never a shell string) and has a time limit; a
decoder that stops producing frames for ``TIMEOUT_S`` seconds is killed and reported.

Frames come out as (H, W, 3) uint8 RGB in stored order: rotation metadata is not applied (as with
EXIF orientation for images) and the sample aspect ratio is ignored.

Colour policy (YCbCr sources -> RGB):
  * the matrix and range are taken from the stream's tags (``color_space``, ``color_range``);
  * untagged matrix: BT.709 for HD (height > 576 or width > 1024), else BT.601 (SMPTE 170M), the
    convention of broadcast and of most players;
  * untagged range: limited ("tv") for YCbCr, full for ``yuvj*`` and grey formats;
  * RGB sources (gbrp, rgb24, ...) are passed through unchanged; an alpha channel is dropped;
  * HDR transfers (PQ, HLG) are refused: ulbc studies 8-bit SDR RGB and does no tone mapping.
Chroma is upsampled with swscale's bicubic filter and centred chroma siting for every source (its
default, also used by the video codecs' own 4:2:0 conversion); ``accurate_rnd`` and ``bitexact``
make the result independent of the CPU. Resizing (``size=``) uses the same bicubic filter.

Headerless raw YUV files (.yuv, .i420, ...) need their layout, given as a :class:`RawVideoSpec`.

Damaged sources are refused, never concealed: ffmpeg hides decoding errors (it fills broken
macroblocks or slices from their neighbours and exits 0), so frames are decoded with
``-err_detect explode -xerror`` on one decoder thread (the result must not depend on thread timing)
and at ``-loglevel error``, where every line ffmpeg prints is data it could not decode (warnings are
not shown). The first such line stops the decoder and fails the read with a one-line
:class:`InputError` naming the file: a bit flip inside an H.264 slice, a slice-CRC mismatch in
FFV1, a Matroska file that ends mid-cluster. Damage that decodes without complaint (a flipped
residual bit) cannot be seen and is not.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from .errors import ConfigError, EncodeError, InputError, ToolMissingError
from .fsutil import atomic_path
from .imageio import encode_png, load_rgb

#: Seconds an ffmpeg or ffprobe run may go without producing anything (a frame, or its answer).
TIMEOUT_S = 300

#: File name endings of headerless raw video, which cannot be read without a :class:`RawVideoSpec`.
RAW_SUFFIXES = (".yuv", ".i420", ".iyuv", ".raw")

#: swscale flags of every YCbCr <-> RGB conversion in ulbc's video code: bicubic chroma resampling
#: (ffmpeg's default filter, the best round trip of the common ones on real footage), accurate
#: rounding, full chroma resolution on the RGB side, and CPU-independent (bitexact) results.
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int+full_chroma_inp+bitexact"

#: Height and width above which an untagged YCbCr source is taken to be HD (BT.709) rather than SD.
_SD_MAX_HEIGHT, _SD_MAX_WIDTH = 576, 1024

# ffprobe's color_space names -> the scale filter's in_color_matrix names.
_MATRICES = {
    "bt709": "bt709",
    "smpte170m": "smpte170m",
    "bt470bg": "bt470",
    "bt2020nc": "bt2020",
    "bt2020c": "bt2020",
    "smpte240m": "smpte240m",
    "fcc": "fcc",
}
_UNTAGGED = (None, "", "unknown", "reserved", "unspecified")
_HDR_TRANSFERS = {"smpte2084": "PQ (SMPTE 2084)", "arib-std-b67": "HLG (ARIB STD-B67)"}
_RGB_PREFIXES = ("rgb", "bgr", "gbr", "argb", "abgr", "0rgb", "0bgr", "pal8", "x2rgb", "x2bgr")
_GREY_PREFIXES = ("gray", "ya8", "ya16", "monow", "monob")

# Raw layouts: pix_fmt -> (bytes per sample, samples per pixel in the first plane, log2 chroma
# subsampling across, log2 chroma subsampling down, chroma planes). Chroma plane sizes round up, as
# ffmpeg's rawvideo demuxer (av_image_get_buffer_size with align 1) does for odd frame sizes.
_RAW_LAYOUTS: dict[str, tuple[int, int, int, int, int]] = {
    "yuv420p": (1, 1, 1, 1, 2),
    "yuv422p": (1, 1, 1, 0, 2),
    "yuv444p": (1, 1, 0, 0, 2),
    "nv12": (1, 1, 1, 1, 2),
    "nv21": (1, 1, 1, 1, 2),
    "gray": (1, 1, 0, 0, 0),
    "rgb24": (1, 3, 0, 0, 0),
    "bgr24": (1, 3, 0, 0, 0),
    "yuv420p10le": (2, 1, 1, 1, 2),
    "yuv422p10le": (2, 1, 1, 0, 2),
    "yuv444p10le": (2, 1, 0, 0, 2),
    "gray10le": (2, 1, 0, 0, 0),
}

_FFMPEG_MISSING = "ffmpeg not found on PATH (apt-get install ffmpeg)"
_FFPROBE_MISSING = "ffprobe not found on PATH (it comes with ffmpeg: apt-get install ffmpeg)"

# Generic closing lines ffmpeg prints after the line that says what actually went wrong.
_GENERIC_TAIL = ("Conversion failed!", "Error marking filters as finished", "Output file #0 does not contain any stream")


def _tool(name: str, missing: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise ToolMissingError(missing)
    return exe


# "[h264 @ 0x55d0d5fa7e00] error ..." -> "h264: error ...": the address says nothing to a reader.
_CONTEXT_PREFIX = re.compile(r"^\[([^\]@]+?) @ 0x[0-9a-fA-F]+\]\s*")


def _ffmpeg_lines(text: str, path: Path | None = None) -> list[str]:
    """ffmpeg's non-empty stderr lines, without the file name (the caller's message starts with it)."""
    if path is not None:
        text = text.replace(f"{_ffmpeg_path_arg(path)}: ", "")
    return [_CONTEXT_PREFIX.sub(r"\1: ", line.strip()) for line in text.splitlines() if line.strip()]


def _stderr_line(stderr: bytes, path: Path | None = None) -> str:
    """The most telling line of ffmpeg's stderr: the last one that is not a generic trailer."""
    lines = _ffmpeg_lines(stderr.decode("utf-8", "replace"), path)
    if not lines:
        return "no message"
    telling = [line for line in lines if not line.startswith(_GENERIC_TAIL)]
    return (telling or lines)[-1][:300]


def _ffmpeg_path_arg(path: Path) -> str:
    # The file: protocol stops a name with a colon ("a:b.mp4") or a leading dash being misread.
    return f"file:{path}"


# -- descriptions -------------------------------------------------------------------------------------
def _as_fraction(value: int | float | str | Fraction, what: str) -> Fraction:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    try:
        # str() first, so 29.97 becomes 2997/100 rather than the binary float's 33-digit fraction.
        fps = value if isinstance(value, Fraction) else Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{what} must be a positive number, got {value!r}") from None
    if fps <= 0:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return fps


@dataclass(frozen=True)
class RawVideoSpec:
    """Layout of a headerless raw video file: frame size, pixel format and frame rate.

    ``color_matrix`` (a scale-filter name: bt709, bt601, smpte170m, bt470, bt2020, ...) and
    ``color_range`` ("tv" limited, "pc" full) say how to convert it to RGB; ``None`` for the matrix
    follows the same HD/SD rule as untagged containers.
    """

    width: int
    height: int
    pix_fmt: str = "yuv420p"
    fps: int | float | str | Fraction = 25
    color_matrix: str | None = None
    color_range: str = "tv"

    def __post_init__(self) -> None:
        for key in ("width", "height"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"raw video {key} must be a positive integer, got {value!r}")
            object.__setattr__(self, key, int(value))
        if self.pix_fmt not in _RAW_LAYOUTS:
            raise ConfigError(f"raw video pix_fmt {self.pix_fmt!r} is not supported; use one of {', '.join(_RAW_LAYOUTS)}")
        matrices = sorted({*_MATRICES.values(), "bt601"})
        if self.color_matrix is not None and self.color_matrix not in matrices:
            raise ConfigError(f"raw video color_matrix {self.color_matrix!r} is not one of {', '.join(matrices)}")
        if self.color_range not in ("tv", "pc"):
            raise ConfigError(f"raw video color_range must be 'tv' (limited) or 'pc' (full), got {self.color_range!r}")
        object.__setattr__(self, "fps", _as_fraction(self.fps, "raw video fps"))

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame, as ffmpeg's rawvideo demuxer lays it out."""
        sample_bytes, samples, shift_x, shift_y, chroma_planes = _RAW_LAYOUTS[self.pix_fmt]
        chroma_w = -(-self.width >> shift_x)  # ceil division by 2**shift
        chroma_h = -(-self.height >> shift_y)
        return sample_bytes * (samples * self.width * self.height + chroma_planes * chroma_w * chroma_h)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file."""

    path: str
    width: int
    height: int
    #: Exact number of decodable frames.
    n_frames: int
    #: Average frame rate; ``None`` when the file states none.
    fps: Fraction | None
    pix_fmt: str
    codec: str
    #: YCbCr matrix used to convert to RGB (scale-filter name); ``None`` for RGB and grey sources.
    color_matrix: str | None
    #: Range of the source samples: "tv" (limited) or "pc" (full).
    color_range: str


def _default_matrix(width: int, height: int) -> str:
    return "bt709" if height > _SD_MAX_HEIGHT or width > _SD_MAX_WIDTH else "smpte170m"


def _colour(path: Path, stream: dict, width: int, height: int) -> tuple[str | None, str]:
    """(matrix, range) to convert a probed stream to RGB with, per the module's colour policy."""
    pix_fmt = stream.get("pix_fmt") or ""
    transfer = stream.get("color_transfer")
    if transfer in _HDR_TRANSFERS:
        raise InputError(f"{path}: HDR video ({_HDR_TRANSFERS[transfer]} transfer) is not supported; ulbc reads 8-bit SDR")
    tagged_range = {"tv": "tv", "pc": "pc"}.get(stream.get("color_range"))
    if pix_fmt.startswith(_RGB_PREFIXES):
        return None, "pc"
    if pix_fmt.startswith(_GREY_PREFIXES):
        return None, tagged_range or "pc"
    space = stream.get("color_space")
    if space in _UNTAGGED:
        matrix = _default_matrix(width, height)
    elif space in _MATRICES:
        matrix = _MATRICES[space]
    else:
        raise InputError(f"{path}: colour matrix {space!r} is not supported (known: {', '.join(_MATRICES)})")
    return matrix, tagged_range or ("pc" if pix_fmt.startswith("yuvj") else "tv")


def _frame_rate(text: str | None) -> Fraction | None:
    try:
        num, den = (int(part) for part in (text or "").split("/"))
    except ValueError:
        return None
    return Fraction(num, den) if num > 0 and den > 0 else None


def _ffprobe(path: Path, *, count_frames: bool) -> dict:
    """The first video stream's description from ffprobe (with an exact frame count if asked)."""
    exe = _tool("ffprobe", _FFPROBE_MISSING)
    entries = "stream=codec_name,width,height,pix_fmt,nb_frames,nb_read_frames,avg_frame_rate,r_frame_rate," \
              "color_space,color_range,color_transfer"
    args = [exe, "-hide_banner", "-v", "error", "-select_streams", "v:0", "-show_entries", entries, "-of", "json"]
    if count_frames:
        args.append("-count_frames")
    args.append(_ffmpeg_path_arg(path))
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ToolMissingError(_FFPROBE_MISSING) from None
    except subprocess.TimeoutExpired:
        raise InputError(f"{path}: ffprobe did not finish within {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise InputError(f"{path}: unreadable video ({_stderr_line(proc.stderr, path)})")
    try:
        streams = json.loads(proc.stdout.decode("utf-8", "replace")).get("streams") or []
    except ValueError:
        raise InputError(f"{path}: ffprobe gave no readable description") from None
    if not streams:
        raise InputError(f"{path}: no video stream")
    return streams[0]


def _count(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _probe(path: Path, raw: RawVideoSpec | None, *, count_frames: bool) -> VideoInfo:
    """Probe ``path``; with ``count_frames=False``, ``n_frames`` is -1 where the container does not say."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if raw is not None:
        size = path.stat().st_size
        if size % raw.frame_bytes:
            raise InputError(
                f"{path}: {size} bytes is not a whole number of {raw.width}x{raw.height} {raw.pix_fmt} frames "
                f"({raw.frame_bytes} bytes each)"
            )
        if raw.pix_fmt in ("rgb24", "bgr24") or raw.pix_fmt.startswith("gray"):
            matrix = None
        else:
            matrix = raw.color_matrix or _default_matrix(raw.width, raw.height)
        return VideoInfo(str(path), raw.width, raw.height, size // raw.frame_bytes, raw.fps, raw.pix_fmt, "rawvideo",
                         matrix, raw.color_range)
    if path.suffix.lower() in RAW_SUFFIXES:
        raise InputError(f"{path}: headerless raw video; give its width, height and pixel format (RawVideoSpec)")
    stream = _ffprobe(path, count_frames=count_frames)
    width, height = _count(stream.get("width")) or 0, _count(stream.get("height")) or 0
    if width < 1 or height < 1:
        raise InputError(f"{path}: the video stream has no frame size ({width}x{height})")
    matrix, rng = _colour(path, stream, width, height)
    if count_frames:
        # ffprobe leaves the count out ("N/A") when it read no frame at all.
        n_frames = _count(stream.get("nb_read_frames")) or 0
    else:
        n_frames = _count(stream.get("nb_frames"))
    fps = _frame_rate(stream.get("avg_frame_rate")) or _frame_rate(stream.get("r_frame_rate"))
    return VideoInfo(str(path), width, height, -1 if n_frames is None else n_frames, fps,
                     stream.get("pix_fmt") or "unknown", stream.get("codec_name") or "unknown", matrix, rng)


def probe_video(path: str | os.PathLike, *, raw: RawVideoSpec | None = None) -> VideoInfo:
    """Describe the first video stream of ``path`` (or a raw file laid out as ``raw``).

    The frame count is the container's when it states one (MP4 does) and is otherwise counted by
    decoding the stream (Matroska, bare streams), so it is always exact.
    """
    path = Path(path)
    info = _probe(path, raw, count_frames=False)
    return info if info.n_frames >= 0 else _probe(path, raw, count_frames=True)


# -- reading ------------------------------------------------------------------------------------------
def _check_selection(path: Path, first, count, step, size) -> None:
    def is_int(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(first) or first < 0:
        raise ConfigError(f"{path}: first must be an integer >= 0, got {first!r}")
    if not is_int(step) or step < 1:
        raise ConfigError(f"{path}: step must be an integer >= 1, got {step!r}")
    if count is not None and (not is_int(count) or count < 1):
        raise ConfigError(f"{path}: count must be an integer >= 1 or None (all frames), got {count!r}")
    if size is not None and (not isinstance(size, (tuple, list)) or len(size) != 2
                             or not all(is_int(v) and v >= 1 for v in size)):
        raise ConfigError(f"{path}: size must be (width, height) in positive integers, got {size!r}")


def _shortage(path: Path, total: int, first: int, count: int | None, step: int) -> InputError:
    """The error for a clip with fewer frames than a selection needs."""
    if total == 0:
        return InputError(f"{path}: the video has no frames")
    if count is None:
        return InputError(f"{path}: the video has {total} frames; first={first} is past its end")
    needed = first + (count - 1) * step + 1
    return InputError(
        f"{path}: the video has {total} frames; {count} frames from frame {first} with step {step} need {needed}"
    )


def _decode_command(exe: str, path: Path, info: VideoInfo, raw: RawVideoSpec | None, first: int,
                    count: int | None, step: int, width: int, height: int) -> list[str]:
    if raw is not None:
        stream = ffmpeg.input(_ffmpeg_path_arg(path), format="rawvideo", pix_fmt=raw.pix_fmt,
                              s=f"{raw.width}x{raw.height}", framerate=str(raw.fps))
    else:
        stream = ffmpeg.input(_ffmpeg_path_arg(path), noautorotate=None, err_detect="explode", threads=1)
    video = stream["v:0"]
    # trim and framestep count decoded frames, so the selection does not depend on timestamps.
    if first:
        video = video.filter("trim", start_frame=first)
    if step > 1:
        video = video.filter("framestep", step=step)
    colour = {}
    if info.color_matrix is not None:
        colour = {"in_color_matrix": info.color_matrix, "in_range": info.color_range}
    elif info.pix_fmt.startswith(_GREY_PREFIXES):
        colour = {"in_range": info.color_range}
    # An explicit output size also keeps every frame at one size should the stream change size.
    video = video.filter("scale", width, height, flags=SWS_FLAGS, **colour).filter("format", "rgb24")
    # passthrough: no frame is repeated or dropped to fit a constant output frame rate.
    out = {"format": "rawvideo", "fps_mode": "passthrough"}
    if count is not None:
        out["frames:v"] = count
    # -xerror: a decoding error (or a frame the decoder marks corrupt) ends ffmpeg with an error status.
    return ffmpeg.compile(video.output("pipe:", **out),
                          cmd=[exe, "-hide_banner", "-nostats", "-loglevel", "error", "-xerror"])


class _Watchdog:
    """Kills a process that makes no progress for ``timeout_s`` seconds."""

    def __init__(self, proc: subprocess.Popen, timeout_s: float) -> None:
        self.proc, self.timeout_s, self.fired = proc, timeout_s, False
        self._deadline = time.monotonic() + timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ffmpeg-watchdog", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    def _watch(self) -> None:
        while not self._stop.wait(max(0.05, min(1.0, self._deadline - time.monotonic()))):
            if time.monotonic() >= self._deadline:
                self.fired = True
                self.proc.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _ErrorLog:
    """Reads ffmpeg's stderr in a thread. At ``-loglevel error`` each line is an error, so the first
    one kills ffmpeg: what it would decode after it is concealment, not the source."""

    _KEEP_LINES, _MAX_LINE = 20, 4096

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.more = 0  # lines beyond the ones kept
        self._proc = proc
        self._thread = threading.Thread(target=self._read, name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._proc.stderr.readline(self._MAX_LINE):
            line = chunk.decode("utf-8", "replace").strip()
            if not line:
                continue
            if len(self.lines) < self._KEEP_LINES:
                self.lines.append(line)
            else:
                self.more += 1
            if self._proc.poll() is None:
                self._proc.kill()

    def join(self) -> None:
        self._thread.join()

    def failure(self, path: Path) -> InputError:
        lines = _ffmpeg_lines("\n".join(self.lines), path)
        telling = [line for line in lines if not line.startswith(_GENERIC_TAIL)] or lines
        extra = len(lines) - 1 + self.more
        return InputError(f"{path}: damaged or incomplete video, ffmpeg reports: {telling[0][:300]}"
                          + (f" (and {extra} more error line{'s' * (extra > 1)})" if extra else ""))


def _read_into(stream, buf: bytearray) -> int:
    """Fill ``buf`` from ``stream``; return the bytes read (fewer only at end of stream)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def iter_frames(path: str | os.PathLike, *, first: int = 0, count: int | None = None, step: int = 1,
                size: tuple[int, int] | None = None, raw: RawVideoSpec | None = None) -> Iterator[np.ndarray]:
    """Yield frames ``first, first + step, ...`` (``count`` of them, or up to the end) of ``path`` as
    (H, W, 3) uint8 RGB arrays, one at a time, resized to ``size=(width, height)`` if given.

    Raises :class:`InputError` (one line, naming the file) for an unreadable or damaged file (any
    error ffmpeg reports while decoding, see the module doc), a video without frames, or one too
    short for the selection; checked before decoding when the container states its frame count,
    otherwise once the decoder runs dry. Frames already yielded before an error are not to be used.
    """
    path = Path(path)
    _check_selection(path, first, count, step, size)
    info = _probe(path, raw, count_frames=False)
    if info.n_frames >= 0 and (info.n_frames == 0 or first >= info.n_frames
                               or (count is not None and first + (count - 1) * step >= info.n_frames)):
        raise _shortage(path, info.n_frames, first, count, step)
    width, height = size or (info.width, info.height)
    args = _decode_command(_tool("ffmpeg", _FFMPEG_MISSING), path, info, raw, first, count, step, width, height)
    frame_bytes = width * height * 3
    produced = 0
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise ToolMissingError(_FFMPEG_MISSING) from None
    errors = _ErrorLog(proc)
    watchdog = _Watchdog(proc, TIMEOUT_S)
    try:
        while count is None or produced < count:
            buf = bytearray(frame_bytes)
            got = _read_into(proc.stdout, buf)
            if got < frame_bytes:
                break  # end of stream (a partial frame means ffmpeg failed; its status says why)
            watchdog.progress()
            produced += 1
            yield np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
        proc.stdout.close()
        returncode = proc.wait()
    finally:
        watchdog.stop()
        if proc.poll() is None:  # the caller stopped early, or an error: do not leave ffmpeg behind
            proc.kill()
            proc.wait()
        errors.join()
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
    if watchdog.fired:
        raise InputError(f"{path}: ffmpeg produced no frame for {TIMEOUT_S} s; decoding abandoned")
    if errors.lines:
        raise errors.failure(path)
    if returncode != 0:
        raise InputError(f"{path}: ffmpeg failed decoding the video (exit status {returncode}, no message)")
    if produced == 0 or (count is not None and produced < count):
        total = info.n_frames if raw is not None else _probe(path, raw, count_frames=True).n_frames
        raise _shortage(path, max(total, produced), first, count, step)


def read_frames(path: str | os.PathLike, *, first: int = 0, count: int | None = None, step: int = 1,
                size: tuple[int, int] | None = None, raw: RawVideoSpec | None = None) -> np.ndarray:
    """Frames of ``path`` as one (T, H, W, 3) uint8 RGB array; options as for :func:`iter_frames`.

    The whole selection is held in memory (briefly twice, while it is stacked): for long clips use
    :func:`iter_frames` or :func:`extract_frames`.
    """
    return np.stack(list(iter_frames(path, first=first, count=count, step=step, size=size, raw=raw)))


def _dir_mode() -> int:
    current = os.umask(0)
    os.umask(current)
    return 0o777 & ~current


def extract_frames(src: str | os.PathLike, dest_dir: str | os.PathLike, *, first: int = 0, count: int | None = None,
                   step: int = 1, size: tuple[int, int] | None = None, raw: RawVideoSpec | None = None) -> list[Path]:
    """Write the selected frames of ``src`` as lossless RGB PNGs ``000000.png, 000001.png, ...`` in
    ``dest_dir`` and return their paths.

    The frames are written into a temporary sibling folder that is renamed to ``dest_dir`` only when
    all of them are there, so a failure never leaves a partial folder; an existing ``dest_dir`` is
    replaced.
    """
    dest = Path(dest_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        names = []
        for index, frame in enumerate(iter_frames(src, first=first, count=count, step=step, size=size, raw=raw)):
            name = f"{index:06d}.png"
            (tmp / name).write_bytes(encode_png(frame))
            names.append(name)
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it private; the result gets the usual mode
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [dest / name for name in names]


def load_clip(frames_dir: str | os.PathLike) -> np.ndarray:
    """Read a folder of frame PNGs (as :func:`extract_frames` writes) back, in name order, as
    (T, H, W, 3) uint8 RGB."""
    folder = Path(frames_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(f"{folder}: no PNG frames in the folder")
    head = load_rgb(files[0])
    clip = np.empty((len(files), *head.shape), dtype=np.uint8)
    clip[0] = head
    for index, file in enumerate(files[1:], start=1):
        frame = load_rgb(file)
        if frame.shape != head.shape:
            raise InputError(
                f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, but {files[0].name} is {head.shape[1]}x{head.shape[0]}"
            )
        clip[index] = frame
    return clip


def write_lossless_clip(frames: np.ndarray, dest: str | os.PathLike, *, fps: int | float | str | Fraction = 25) -> None:
    """Store (T, H, W, 3) uint8 RGB frames losslessly (FFV1 planar RGB in Matroska), atomically.

    :func:`read_frames` gives the same pixels back. The file is byte-for-byte reproducible (no
    muxer date or random ids).
    """
    dest = Path(dest)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
        raise InputError(f"{dest}: expected (T, H, W, 3) uint8 RGB frames, got {frames.dtype} {frames.shape}")
    n_frames, height, width = frames.shape[:3]
    rate = _as_fraction(fps, "fps")
    exe = _tool("ffmpeg", _FFMPEG_MISSING)
    with atomic_path(dest) as tmp:
        stream = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=str(rate))
            .filter("format", "gbrp")  # planar RGB: FFV1 has no packed rgb24, and no YCbCr step may creep in
            .output(_ffmpeg_path_arg(tmp), format="matroska", vcodec="ffv1", level=3, g=1, slicecrc=1,
                    fflags="+bitexact", **{"frames:v": n_frames, "flags:v": "+bitexact"})
        )
        args = ffmpeg.compile(stream, cmd=[exe, "-hide_banner", "-nostats", "-loglevel", "error", "-y"])
        try:
            proc = subprocess.run(args, input=np.ascontiguousarray(frames).tobytes(), capture_output=True,
                                  timeout=TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise ToolMissingError(_FFMPEG_MISSING) from None
        except subprocess.TimeoutExpired:
            raise EncodeError(f"{dest}: ffmpeg did not finish writing the clip within {TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise EncodeError(f"{dest}: ffmpeg failed writing the clip: {_stderr_line(proc.stderr, tmp)}")


# -- the embedded clip ---------------------------------------------------------------------------------
#: Frames and size of the embedded clip (see ulbc/data/NOTICE.md for its origin and licence).
EMBEDDED_CLIP_SHAPE = (8, 240, 320, 3)


def embedded_clip_path() -> Path:
    """The bundled 8-frame 320x240 clip of real traffic footage (lossless FFV1, BT.601 limited range)."""
    return Path(__file__).resolve().parent / "data" / "cars_8f.mkv"
