"""Classical video anchors through the ffmpeg command line: x264, x265 and AV1 (libaom).

A clip is piped to ffmpeg as raw RGB, converted to YCbCr 4:2:0 (``yuv420p``, the format video
codecs are normally run and compared in; ``pix_fmt="yuv444p"`` is an option) with the BT.709
matrix at full range, as the hevc-intra/av1-intra image codecs do, and swscale's bicubic chroma
filter (see :data:`ulbc.video.SWS_FLAGS`). Decoding converts back with the same matrix and range.
Alone, this 4:2:0 round trip measures 45-48 dB PSNR on Kodak photos and ~52 dB on footage that was
4:2:0 already: quality at the top of the rate grid is bounded by the chroma subsampling, as it is for
every 4:2:0 anchor.

Coding structure (all three codecs, the usual "low-delay P" anchor of learned video coding papers):
  * an intra frame every ``keyint`` frames (32 by default), no scene-cut keyframes, so the GOP is
    the same on every clip;
  * no B-frames and no look-ahead: every frame is coded once its predecessors are, in display
    order (x264/x265 ``tune=zerolatency``; libaom's realtime mode with ``lag-in-frames=0``, its
    only low-delay mode that spends bits sensibly at a fixed quantizer: the good-quality mode with
    no look-ahead gave inter frames 10x larger at the same crf);
  * a fixed quantizer (x264/x265 ``qp``, libaom ``crf`` in constant-quality mode), so the frame
    rate handed to the encoder does not change the bits;
  * one encoder thread (x265 one pool thread and one frame thread), so the bytes do not depend on
    the machine.

The payload is the codec's bare elementary stream (Annex B H.264/HEVC, low-overhead AV1 OBUs), with
no container, so the bytes counted are the codec's own. x265 runs with ``info=0`` (no settings SEI);
x264 always writes its settings as a user-data SEI (~570 bytes, 0.03 bpp on an 8-frame 320x240
clip), which is removed from the stream before it is stored: decoders ignore it, and the tests check
that the decoded frames are unchanged. AV1's temporal delimiters (2 bytes a frame) stay: the OBU
demuxer needs them.

Frames are padded by edge replication to what the encoder accepts (even sizes for 4:2:0, and at
least 32x32 for x265) and cropped back to the container's size on decoding.
"""

from __future__ import annotations

import functools
import re
import subprocess
from abc import abstractmethod
from typing import Any, ClassVar

import ffmpeg
import numpy as np

from ..errors import BitstreamError, EncodeError, ToolMissingError
from ..video import SWS_FLAGS
from . import ffmpeg_codecs as _ff
from . import register_codec
from .base import Option, PayloadResult, VideoCodec

PIX_FMTS = ("yuv420p", "yuv444p")

# ffmpeg lines that say nothing about the cause: closing lines, and repeats of an earlier message.
_GENERIC = (*_ff._GENERIC_TAIL, "Cannot determine format of input stream", "Last message repeated",
            "Error while opening encoder", "Error initializing output stream")

# The x264 settings SEI: a user_data_unregistered message (payload type 5) under x264's UUID.
_X264_SEI_UUID = bytes.fromhex("dc45e9bde6d948b7962cd820d923eeef")
_NAL_SEI = 6
_SEI_USER_DATA_UNREGISTERED = 5


def _strip_emulation_prevention(nal: bytes) -> bytes:
    return re.sub(b"\x00\x00\x03", b"\x00\x00", nal)


def _is_x264_settings_sei(nal: bytes) -> bool:
    """Whether an H.264 NAL unit (header byte first) is an SEI holding only x264's settings message."""
    if not nal or nal[0] & 0x1F != _NAL_SEI:
        return False
    rbsp = _strip_emulation_prevention(nal[1:])
    pos, values = 0, []
    for _ in range(2):  # payload type, then payload size: runs of 0xFF plus a final byte
        value = 0
        while pos < len(rbsp) and rbsp[pos] == 0xFF:
            value, pos = value + 255, pos + 1
        if pos >= len(rbsp):
            return False
        values.append(value + rbsp[pos])
        pos += 1
    payload_type, payload_size = values
    end = pos + payload_size
    # Exactly one message, then the RBSP stop bit: nothing else is dropped with it.
    return (payload_type == _SEI_USER_DATA_UNREGISTERED and rbsp[pos : pos + 16] == _X264_SEI_UUID
            and rbsp[end:] == b"\x80")


def strip_x264_settings_sei(stream: bytes) -> bytes:
    """Remove x264's settings SEI NAL units from an Annex B H.264 stream; all other bytes stay."""
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", stream)]
    if not starts:
        return stream
    # A NAL unit's segment runs from the zero bytes in front of its start code to the next segment.
    bounds = []
    for i, start in enumerate(starts):
        floor = starts[i - 1] + 3 if i else 0  # never into the previous NAL unit (it ends non-zero)
        begin = start
        while begin > floor and stream[begin - 1] == 0:
            begin -= 1
        bounds.append(begin)
    pieces = [stream[: bounds[0]]]
    for i, begin in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else len(stream)
        nal = stream[starts[i] + 3 : end].rstrip(b"\x00")
        if not _is_x264_settings_sei(nal):
            pieces.append(stream[begin:end])
    return b"".join(pieces)


def _cause(stderr: bytes) -> str:
    """The first line of ffmpeg's stderr that names a cause: with a damaged stream the decoder's
    first complaint is the root one, the rest follow from it."""
    lines = [re.sub(r" @ 0x[0-9a-fA-F]+\]", "]", line).strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "no message"
    telling = [line for line in lines if not line.startswith(_GENERIC)]
    return (telling or lines)[0][:300]


def _run(args: list[str], data: bytes, error: type[Exception], what: str) -> bytes:
    """Run one ffmpeg command with ``data`` on stdin; return stdout or raise ``error`` in one line."""
    try:
        proc = subprocess.run(args, input=data, capture_output=True, timeout=_ff.TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ToolMissingError(_ff._MISSING) from None
    except subprocess.TimeoutExpired:
        raise error(f"ffmpeg did not finish {what} within {_ff.TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise error(f"ffmpeg failed {what}: {_cause(proc.stderr)}")
    return proc.stdout


class _FfmpegVideoCodec(_ff.FfmpegTool, VideoCodec):
    """A clip coded by an ffmpeg encoder and stored as the bare elementary stream."""

    #: ffmpeg encoder name.
    encoder: ClassVar[str]
    #: ffmpeg decoders that read the stream, best first; the first one present is used.
    decoders: ClassVar[tuple[str, ...]]
    #: ffmpeg muxer/demuxer of the bare stream.
    stream_format: ClassVar[str]
    #: Smallest frame the encoder accepts; smaller frames are padded by edge replication.
    min_coded: ClassVar[tuple[int, int]] = (1, 1)
    integer_rates = True  # QP and crf are integers
    option_specs = {
        "keyint": Option(32, "int", low=1, high=10000, help="frames from one intra frame to the next (1: all intra)"),
        "pix_fmt": Option("yuv420p", "choice", choices=PIX_FMTS, help="the YCbCr format the encoder codes"),
    }

    @abstractmethod
    def encoder_options(self, rate: float, *, verbose: bool = False) -> dict[str, Any]:
        """ffmpeg output options that select and tune the encoder for ``rate``."""

    def postprocess(self, stream: bytes) -> tuple[bytes, dict[str, Any]]:
        """The encoder's stream as stored, and facts about what was changed."""
        return stream, {}

    # -- description -------------------------------------------------------------------------------
    def label_tags(self):
        chroma = {"yuv420p": "4:2:0", "yuv444p": "4:4:4"}[self.options["pix_fmt"]]
        return ("intra" if self.options["keyint"] == 1 else "inter", chroma)

    def version(self) -> str:
        exe = _ff._ffmpeg_exe()
        if exe is None:
            return "ffmpeg missing"
        return f"{_ff._ffmpeg_release(exe)} / {_library_version(exe, type(self))}"

    # -- coding --------------------------------------------------------------------------------------
    def coded_size(self, width: int, height: int) -> tuple[int, int]:
        """The frame size the encoder gets for a ``width`` x ``height`` clip."""
        coded_w, coded_h = max(width, self.min_coded[0]), max(height, self.min_coded[1])
        if self.options["pix_fmt"] == "yuv420p":  # 4:2:0 chroma needs whole 2x2 blocks
            coded_w, coded_h = coded_w + coded_w % 2, coded_h + coded_h % 2
        return coded_w, coded_h

    def _encode_command(self, exe: str, width: int, height: int, n_frames: int, rate: float, *,
                        verbose: bool = False) -> list[str]:
        """The encode: raw RGB frames on stdin, the bare stream on stdout."""
        stream = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=self.nominal_fps)
            .filter("scale", out_color_matrix=_ff._MATRIX, out_range=_ff._RANGE, flags=SWS_FLAGS)
            .filter("format", self.options["pix_fmt"])
            .output("pipe:", format=self.stream_format, **{"frames:v": n_frames}, **_ff._COLOUR_TAGS,
                    **self.encoder_options(rate, verbose=verbose))
        )
        return ffmpeg.compile(stream, cmd=_ff._global_args(exe, "verbose" if verbose else "error"))

    def encode_clip_payload(self, frames, rate, *, device, seed):
        exe, _ = self._require(encoding=True)
        n_frames, height, width = frames.shape[:3]
        coded_w, coded_h = self.coded_size(width, height)
        if (coded_w, coded_h) != (width, height):
            # The decoder crops back to the container's size, so the padding costs a few bits only.
            frames = np.pad(frames, ((0, 0), (0, coded_h - height), (0, coded_w - width), (0, 0)), mode="edge")
        args = self._encode_command(exe, coded_w, coded_h, n_frames, rate)
        stream = _run(args, np.ascontiguousarray(frames).tobytes(), EncodeError, f"encoding with {self.encoder}")
        if not stream:
            raise EncodeError(f"ffmpeg {self.encoder} produced no output")
        payload, info = self.postprocess(stream)
        return PayloadResult(b"", payload, info)

    def decode_clip_payload(self, params, payload, width, height, n_frames, *, device):
        if params:
            raise BitstreamError(f"{self.name} streams carry no parameters, found {len(params)} bytes")
        exe, decoder = self._require(encoding=False)
        stream = (
            ffmpeg.input("pipe:", format=self.stream_format, **{"c:v": decoder})
            .filter("scale", in_color_matrix=_ff._MATRIX, in_range=_ff._RANGE, flags=SWS_FLAGS)
            .filter("format", "rgb24")
            # Crop in RGB, after the chroma was upsampled on the padded frame as the encoder saw it.
            .filter("crop", w=width, h=height, x=0, y=0, exact=1)
            # passthrough: ffmpeg neither repeats nor drops frames; one frame more than the header
            # says is enough to tell a stream that holds too many.
            .output("pipe:", format="rawvideo", fps_mode="passthrough", **{"frames:v": n_frames + 1})
        )
        # -xerror: a decoding error fails the decode instead of being concealed.
        cmd = [*_ff._global_args(exe), "-xerror"]
        raw = _run(ffmpeg.compile(stream, cmd=cmd), payload, BitstreamError, f"decoding the {self.stream_format} stream")
        frame_bytes = width * height * 3
        if len(raw) != n_frames * frame_bytes:
            whole = len(raw) // frame_bytes
            found = f"{whole} frame{'' if whole == 1 else 's'}" + (" and a part" if len(raw) % frame_bytes else "")
            raise BitstreamError(
                f"{self.stream_format} stream decoded to {found} of {width}x{height}, the header says {n_frames}"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(n_frames, height, width, 3).copy()


@functools.lru_cache(maxsize=None)
def _library_version(exe: str, cls: type[_FfmpegVideoCodec]) -> str:
    """Encoder library version, read from a tiny encode (run once per process)."""
    codec = cls()
    w, h = codec.coded_size(32, 32)
    args = codec._encode_command(exe, w, h, 1, cls.default_rates[0], verbose=True)
    try:
        proc = subprocess.run(args, input=bytes(w * h * 3), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return cls.encoder
    text = proc.stdout.decode("latin-1") + proc.stderr.decode("utf-8", "replace")
    match = re.search(cls.version_pattern, text)
    return f"{cls.encoder} {match.group(1)}" if match else cls.encoder


@register_codec
class X264Codec(_FfmpegVideoCodec):
    """H.264 (libx264), low-delay P, fixed QP."""

    name = "x264"
    codec_id = 50
    description = "H.264 (libx264 through ffmpeg), low-delay P, fixed QP, yuv420p, bare Annex B stream"
    rate_param = "qp"
    # 6 QP steps double the quantizer step. Measured on the 320x240 cars clip: 0.019-0.39 bpp over
    # 30 frames, 0.028-0.51 over the embedded 8 (the intra frame weighs more in a short clip).
    default_rates = (51, 45, 39, 33, 27, 21)
    rate_range = (0, 51)
    option_specs = {"preset": _ff.X26X_PRESET_OPTION, **_FfmpegVideoCodec.option_specs}
    encoder = "libx264"
    decoders = ("h264",)
    stream_format = "h264"
    # The settings SEI names the version: "x264 - core 164 r3095 baee400".
    version_pattern = r"x264 - core (\d+(?: r\d+)?(?: [0-9a-f]+)?)"

    def encoder_options(self, rate, *, verbose=False):
        keyint = self.options["keyint"]
        return {
            "c:v": self.encoder,
            "preset": self.options["preset"],
            "tune": "zerolatency",
            "qp": int(rate),
            "x264-params": f"keyint={keyint}:scenecut=0:bframes=0",
            "threads": 1,
        }

    def postprocess(self, stream):
        stripped = strip_x264_settings_sei(stream)
        return stripped, {"x264_sei_bytes_removed": len(stream) - len(stripped)}


@register_codec
class X265Codec(_FfmpegVideoCodec):
    """HEVC (libx265), low-delay P, fixed QP."""

    name = "x265"
    codec_id = 51
    description = "HEVC (libx265 through ffmpeg), low-delay P, fixed QP, yuv420p, bare Annex B stream"
    rate_param = "qp"
    # As x264's grid; 0.011-0.36 bpp over the 30 cars frames, 0.019-0.46 over the embedded 8.
    default_rates = (51, 45, 39, 33, 27, 21)
    rate_range = (0, 51)
    option_specs = {"preset": _ff.X26X_PRESET_OPTION, **_FfmpegVideoCodec.option_specs}
    encoder = "libx265"
    decoders = ("hevc",)
    stream_format = "hevc"
    # As for hevc-intra: ffmpeg's libx265 wrapper refuses frames under 16 px a side, and 32 px
    # works with every preset.
    min_coded = (32, 32)
    version_pattern = r"HEVC encoder version (\S+)"

    def encoder_options(self, rate, *, verbose=False):
        keyint = self.options["keyint"]
        # info=0 drops x265's settings SEI (a few KB of text), which would be counted as payload.
        x265 = (f"qp={int(rate)}:keyint={keyint}:scenecut=0:bframes=0:open-gop=0:info=0"
                f":pools=1:frame-threads=1:log-level={'info' if verbose else 'error'}")
        return {"c:v": self.encoder, "preset": self.options["preset"], "tune": "zerolatency", "x265-params": x265}


@register_codec
class Av1Codec(_FfmpegVideoCodec):
    """AV1 (libaom realtime mode), low-delay, constant quality."""

    name = "av1"
    codec_id = 52
    description = "AV1 (libaom realtime mode through ffmpeg), low-delay, constant quality, yuv420p, bare OBU stream"
    rate_param = "crf"
    # 0.021-0.27 bpp over the 30 cars frames, 0.053-0.45 over the embedded 8: libaom's coarsest
    # quantizer (crf 63) costs more bits than x265 at QP 51.
    default_rates = (63, 55, 47, 39, 31, 23)
    rate_range = (0, 63)
    # cpu_used 6: a middle speed of libaom's realtime mode (0-8 is what ffmpeg 5.1 passes on); the
    # 8-frame 320x240 clip takes ~0.3 s per rate on one thread.
    option_specs = {"cpu_used": Option(6, "int", low=0, high=8, help="libaom speed (0 slowest and best)"),
                    **_FfmpegVideoCodec.option_specs}
    encoder = "libaom-av1"
    # ffmpeg 5's native "av1" decoder needs a hardware device: list the software ones only.
    decoders = ("libdav1d", "libaom-av1")
    stream_format = "obu"
    version_pattern = r"\[libaom-av1[^\]]*\] v(\d\S*)"

    def encoder_options(self, rate, *, verbose=False):
        keyint = self.options["keyint"]
        return {
            "c:v": self.encoder,
            "usage": "realtime",
            "cpu-used": self.options["cpu_used"],
            "crf": int(rate),
            "b:v": 0,  # constant quality: crf alone sets the quantizer
            "g": keyint,
            "keyint_min": keyint,
            "lag-in-frames": 0,
            # One thread: with row-mt, libaom's bytes depend on the thread count.
            "threads": 1,
        }
