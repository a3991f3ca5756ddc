"""Video codecs used as still-image codecs: one intra frame through the ffmpeg command line.

Each image is piped to ``ffmpeg`` as raw RGB, converted to 4:4:4 YCbCr and coded as a single frame;
the payload is the codec's bare elementary stream (Annex B HEVC, low-overhead AV1 OBUs), with no
container around it, so the bytes counted are the codec's own. Decoding pipes the stream back
through ffmpeg and converts to RGB with the same matrix and range, so the colour conversion adds
no bias (alone it round-trips Kodak at about 53 dB, every channel within +-1).

Everything goes through pipes: no temporary files, and every ffmpeg call has a time limit.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
import re
import shutil
import subprocess
from typing import Any, ClassVar

import ffmpeg
import numpy as np

from ..errors import BitstreamError, EncodeError, ToolMissingError
from . import register_codec
from .base import Codec, Option

#: Seconds one ffmpeg run may take; a decoder stuck on a hostile stream becomes an error, not a hang.
TIMEOUT_S = 300

_MISSING = "ffmpeg not found on PATH (apt-get install ffmpeg)"

# One colour conversion, the same both ways: BT.709 matrix, full range (256 levels per channel, so
# the round trip loses less than with limited range). The scaler only converts formats (4:4:4 in
# and out, nothing is resampled); accurate_rnd avoids swscale's biased fast rounding and bitexact
# keeps the result independent of the CPU's SIMD flavour.
_MATRIX = "bt709"
_RANGE = "pc"
_SWS_FLAGS = "neighbor+accurate_rnd+full_chroma_int+bitexact"
# Tag the stream with what it holds, so other players show it right too (a few bytes of VUI).
_COLOUR_TAGS = {"colorspace": "bt709", "color_primaries": "bt709", "color_trc": "iec61966-2-1", "color_range": "pc"}

# Generic closing lines ffmpeg prints after the line that says what actually went wrong.
_GENERIC_TAIL = (
    "Conversion failed!",
    "Error marking filters as finished",
    "Output file #0 does not contain any stream",
    "Cannot determine format of input stream",
)


def _ffmpeg_exe() -> str | None:
    """Looked up on every call (cheap), so a changed PATH is seen at once."""
    return shutil.which("ffmpeg")


@functools.lru_cache(maxsize=None)
def _features(exe: str) -> dict[str, frozenset[str]] | str:
    """Encoders, decoders, muxers and demuxers of one ffmpeg binary, or a reason it cannot say."""
    listings = {}
    for flag in ("-encoders", "-decoders", "-formats"):
        try:
            proc = subprocess.run([exe, "-hide_banner", flag], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{exe} {flag} failed ({type(exc).__name__})"
        if proc.returncode != 0:
            return f"{exe} {flag} exited with status {proc.returncode}"
        listings[flag] = proc.stdout.decode("utf-8", "replace").splitlines()
    found: dict[str, set[str]] = {"encoders": set(), "decoders": set(), "muxers": set(), "demuxers": set()}
    for flag, key in (("-encoders", "encoders"), ("-decoders", "decoders")):
        body = False
        for line in listings[flag]:
            if line.strip().startswith("---"):
                body = True
            elif body and len(line.split()) >= 2:
                found[key].add(line.split()[1])
    body = False
    for line in listings["-formats"]:
        if line.strip() == "--":
            body = True
        elif body and len(line) > 4:
            flags, names = line[:3], line[4:].split()
            if names:
                for name in names[0].split(","):
                    if "D" in flags:
                        found["demuxers"].add(name)
                    if "E" in flags:
                        found["muxers"].add(name)
    return {key: frozenset(value) for key, value in found.items()}


@functools.lru_cache(maxsize=None)
def _ffmpeg_release(exe: str) -> str:
    """'ffmpeg 5.1.9-0+deb12u1' from the first line of ``ffmpeg -version``."""
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "ffmpeg (version unknown)"
    first = out.decode("utf-8", "replace").splitlines()[:1]
    parts = first[0].split() if first else []
    if len(parts) >= 3 and parts[:2] == ["ffmpeg", "version"]:
        return f"ffmpeg {parts[2]}"
    return "ffmpeg (version unknown)"


def _stderr_line(stderr: bytes) -> str:
    """The most telling line of ffmpeg's stderr: the last one that is not a generic trailer."""
    lines = [re.sub(r" @ 0x[0-9a-fA-F]+\]", "]", line).strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "no message"
    telling = [line for line in lines if not line.startswith(_GENERIC_TAIL)]
    return (telling or lines)[-1][:300]


def _run(args: list[str], data: bytes, error: type[Exception], what: str) -> bytes:
    """Run one ffmpeg command with ``data`` on stdin; return stdout or raise ``error`` in one line."""
    try:
        proc = subprocess.run(args, input=data, capture_output=True, timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ToolMissingError(_MISSING) from None
    except subprocess.TimeoutExpired:
        raise error(f"ffmpeg did not finish {what} within {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise error(f"ffmpeg failed {what}: {_stderr_line(proc.stderr)}")
    return proc.stdout


def _global_args(exe: str, loglevel: str = "error") -> list[str]:
    # -sws_flags also covers any converter ffmpeg inserts by itself (say, a stream that is not 4:4:4).
    return [exe, "-hide_banner", "-nostats", "-loglevel", loglevel, "-sws_flags", _SWS_FLAGS]


class FfmpegTool:
    """Finding ffmpeg and what it can do, for every codec that runs it: the subclass names its
    ``encoder``, the ``decoders`` it accepts (first found wins) and its raw ``stream_format``."""

    name: ClassVar[str]
    encoder: ClassVar[str]
    decoders: ClassVar[tuple[str, ...]]
    stream_format: ClassVar[str]

    @classmethod
    def _tool(cls, *, encoding: bool) -> tuple[str, str]:
        """(ffmpeg path, decoder to use); raises :class:`ToolMissingError` naming what is missing."""
        exe = _ffmpeg_exe()
        if exe is None:
            raise ToolMissingError(_MISSING)
        features = _features(exe)
        if isinstance(features, str):
            raise ToolMissingError(features)
        decoder = next((d for d in cls.decoders if d in features["decoders"]), None)
        lacking = [] if decoder else [f"decoder {cls.decoders[0]!r}"]
        if cls.stream_format not in features["demuxers"]:
            lacking.append(f"demuxer {cls.stream_format!r}")
        if encoding and cls.encoder not in features["encoders"]:
            lacking.append(f"encoder {cls.encoder!r}")
        if encoding and cls.stream_format not in features["muxers"]:
            lacking.append(f"muxer {cls.stream_format!r}")
        if lacking:
            raise ToolMissingError(f"{exe} has no {', '.join(lacking)} (install an ffmpeg built with it)")
        return exe, decoder

    def _require(self, *, encoding: bool) -> tuple[str, str]:
        try:
            return self._tool(encoding=encoding)
        except ToolMissingError as exc:
            raise ToolMissingError(f"codec {self.name!r}: {exc}") from None

    @classmethod
    def availability(cls) -> str | None:
        try:
            cls._tool(encoding=True)
        except ToolMissingError as exc:
            return str(exc)
        return None


class _FfmpegIntraCodec(FfmpegTool, Codec):
    """One yuv444p intra frame coded by an ffmpeg encoder, stored as the bare elementary stream."""

    #: ffmpeg encoder name.
    encoder: ClassVar[str]
    #: ffmpeg decoders that read the stream, best first; the first one present is used.
    decoders: ClassVar[tuple[str, ...]]
    #: ffmpeg muxer/demuxer of the bare stream.
    stream_format: ClassVar[str]
    #: Smallest frame the encoder accepts; smaller images are padded by edge replication.
    min_coded: ClassVar[tuple[int, int]] = (1, 1)
    #: Finds the encoder library's version in the verbose log of an encode.
    version_pattern: ClassVar[str]
    integer_rates = True  # QP and crf are integers

    @abstractmethod
    def encoder_options(self, rate: float, *, verbose: bool = False) -> dict[str, Any]:
        """ffmpeg output options that select and tune the encoder for ``rate``."""

    # -- description -------------------------------------------------------------------------------
    def label_tags(self):
        return ("intra", "4:4:4")

    def version(self) -> str:
        exe = _ffmpeg_exe()
        if exe is None:
            return "ffmpeg missing"
        return f"{_ffmpeg_release(exe)} / {_library_version(exe, type(self))}"

    # -- coding --------------------------------------------------------------------------------------
    def _encode_command(self, exe: str, width: int, height: int, rate: float, *, verbose: bool = False) -> list[str]:
        """The encode: raw RGB on stdin, the bare stream on stdout (verbose: log only, no output)."""
        target, fmt = ("-", "null") if verbose else ("pipe:", self.stream_format)
        stream = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}")
            .filter("scale", out_color_matrix=_MATRIX, out_range=_RANGE, flags=_SWS_FLAGS)
            .filter("format", "yuv444p")
            .output(target, format=fmt, **{"frames:v": 1}, **_COLOUR_TAGS,
                    **self.encoder_options(rate, verbose=verbose))
        )
        return ffmpeg.compile(stream, cmd=_global_args(exe, "verbose" if verbose else "error"))

    def encode_payload(self, image, rate, *, device, seed):
        exe, _ = self._require(encoding=True)
        height, width = image.shape[:2]
        coded_w, coded_h = max(width, self.min_coded[0]), max(height, self.min_coded[1])
        if (coded_w, coded_h) != (width, height):
            # The decoder crops back to the container's size, so the padding costs a few bits only.
            image = np.pad(image, ((0, coded_h - height), (0, coded_w - width), (0, 0)), mode="edge")
        args = self._encode_command(exe, coded_w, coded_h, rate)
        payload = _run(args, np.ascontiguousarray(image).tobytes(), EncodeError, f"encoding with {self.encoder}")
        if not payload:
            raise EncodeError(f"ffmpeg {self.encoder} produced no output")
        return b"", payload

    def decode_payload(self, params, payload, width, height, *, device):
        if params:
            raise BitstreamError(f"{self.name} streams carry no parameters, found {len(params)} bytes")
        exe, decoder = self._require(encoding=False)
        # Crop, not reshape: the container's size is the truth, whatever padding the encoder got.
        stream = (
            ffmpeg.input("pipe:", format=self.stream_format, **{"c:v": decoder})
            .filter("crop", w=width, h=height, x=0, y=0, exact=1)
            .filter("scale", in_color_matrix=_MATRIX, in_range=_RANGE, flags=_SWS_FLAGS)
            .filter("format", "rgb24")
            # passthrough: without it ffmpeg may repeat the frame to fill its default 25 fps clock.
            .output("pipe:", format="rawvideo", fps_mode="passthrough")
        )
        raw = _run(ffmpeg.compile(stream, cmd=_global_args(exe)), payload, BitstreamError, f"decoding the {self.stream_format} stream")
        expected = width * height * 3
        if len(raw) != expected:
            raise BitstreamError(
                f"{self.stream_format} stream decoded to {len(raw)} bytes, expected one {width}x{height} RGB frame ({expected})"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()


@functools.lru_cache(maxsize=None)
def _library_version(exe: str, cls: type[_FfmpegIntraCodec]) -> str:
    """Encoder library version from the verbose log of a tiny encode (run once per process)."""
    codec = cls()
    w, h = max(32, cls.min_coded[0]), max(32, cls.min_coded[1])
    args = codec._encode_command(exe, w, h, cls.default_rates[0], verbose=True)
    try:
        proc = subprocess.run(args, input=bytes(w * h * 3), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return cls.encoder
    match = re.search(cls.version_pattern, proc.stderr.decode("utf-8", "replace"))
    return f"{cls.encoder} {match.group(1)}" if match else cls.encoder


# The preset names libx264 and libx265 share.
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")

X26X_PRESET_OPTION = Option("medium", "choice", choices=X26X_PRESETS, help="encoder preset (speed against efficiency)")


@register_codec
class HevcIntraCodec(_FfmpegIntraCodec):
    """HEVC intra (libx265), fixed QP, 4:4:4 (the range-extensions profile): the codec inside HEIC."""

    name = "hevc-intra"
    codec_id = 20
    description = "HEVC intra frame (libx265 through ffmpeg), yuv444p, bare Annex B stream"
    rate_param = "qp"
    default_rates = (47, 42, 37, 32, 27, 22)
    rate_range = (0, 51)
    option_specs = {"preset": X26X_PRESET_OPTION}
    encoder = "libx265"
    decoders = ("hevc",)
    stream_format = "hevc"
    # ffmpeg's libx265 wrapper refuses frames under 16 px a side and shrinks the CTU to 16 below
    # 32 px, which the slowest presets' transform depth rejects; 32 px works with every preset.
    min_coded = (32, 32)
    version_pattern = r"HEVC encoder version (\S+)"

    def encoder_options(self, rate, *, verbose=False):
        # info=0 drops x265's "info" SEI (~3 KB of settings text) that would be counted as payload.
        x265 = f"qp={int(rate)}:info=0:log-level={'info' if verbose else 'error'}"
        return {"c:v": self.encoder, "preset": self.options["preset"], "x265-params": x265}


@register_codec
class Av1IntraCodec(_FfmpegIntraCodec):
    """AV1 intra (libaom all-intra mode, still-picture header), constant quality, 4:4:4."""

    name = "av1-intra"
    codec_id = 21
    description = "AV1 still picture (libaom all-intra through ffmpeg), yuv444p, bare OBU stream"
    rate_param = "crf"
    default_rates = (58, 52, 44, 36, 24, 12)
    rate_range = (0, 63)
    # cpu_used 4: the same libaom speed as the avif codec's default, so the two differ in
    # container and chroma sampling rather than encoder effort; 1-2 s per Kodak image on one
    # thread (cpu_used 6 is ~4x faster and ~0.4 dB worse). ffmpeg 5.1 passes on 0-8.
    option_specs = {"cpu_used": Option(4, "int", low=0, high=8, help="libaom speed (0 slowest and best)")}
    encoder = "libaom-av1"
    decoders = ("libdav1d", "libaom-av1")
    stream_format = "obu"
    version_pattern = r"\[libaom-av1[^\]]*\] v(\d\S*)"

    def encoder_options(self, rate, *, verbose=False):
        return {
            "c:v": self.encoder,
            "usage": "allintra",
            "still-picture": 1,
            "cpu-used": self.options["cpu_used"],
            "crf": int(rate),
            "b:v": 0,  # constant quality: crf alone sets the quantizer
            # One thread: with row-mt, libaom's bytes depend on the thread count (ffmpeg's default
            # is the machine's core count), so results would differ between machines.
            "threads": 1,
        }
