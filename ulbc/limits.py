"""Decode limits: what a bitstream header may claim before any decoder allocates for it.

A header's width, height and frame count are checked here, against the limits below and against an
estimate of the decoder's working memory, before the codec's decoder runs
(:func:`ulbc.codecs.base.decode_container`). Codecs whose memory depends on the network a header
describes (the overfitted and NeRV decoders) check their own estimate with :func:`check_memory`
once they have read it, still before allocating.

Every limit can be overridden by an environment variable (an integer, ``1e9`` or a binary suffix:
``512M``, ``16G``):

=============================  ============  ==========================================================
variable                       default       what
=============================  ============  ==========================================================
``ULBC_DECODE_MAX_PIXELS``     2^28          pixels of one image or frame (the README's largest image)
``ULBC_DECODE_MAX_FRAMES``     10 000        frames of one clip
``ULBC_DECODE_MAX_OUTPUT``     4 GiB         bytes of decoded uint8 RGB (all frames together)
``ULBC_DECODE_MAX_MEMORY``     16 GiB        estimated working memory of one decode
=============================  ============  ==========================================================

The memory default lets the overfitted decoders take CLIC-sized photos (lottery up to about 4.9 Mpx,
coolchic about 9.8 Mpx) and still fits a 24 GB laptop; raise it on a larger machine.
The defaults are fixed (not derived from the machine's RAM) so a file decodes or is refused alike
everywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import BitstreamError, ConfigError

PIXELS_VAR = "ULBC_DECODE_MAX_PIXELS"
FRAMES_VAR = "ULBC_DECODE_MAX_FRAMES"
OUTPUT_VAR = "ULBC_DECODE_MAX_OUTPUT"
MEMORY_VAR = "ULBC_DECODE_MAX_MEMORY"

DEFAULT_MAX_PIXELS = 1 << 28
DEFAULT_MAX_FRAMES = 10_000
DEFAULT_MAX_OUTPUT = 4 << 30
DEFAULT_MAX_MEMORY = 16 << 30

#: Bytes per pixel of the decoded uint8 RGB output.
OUTPUT_BYTES_PER_PIXEL = 3

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+]?[0-9]+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def _read_env(var: str, default: int) -> int:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    match = _NUMBER.match(text)
    if not match:
        raise ConfigError(f"environment variable {var}={text!r} is not a positive number (e.g. 1e9, 512M, 16G)")
    value = int(float(match.group(1)) * _SUFFIXES[match.group(2).upper()])
    if value < 1:
        raise ConfigError(f"environment variable {var}={text!r} must be at least 1")
    return value


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
    max_output_bytes: int = DEFAULT_MAX_OUTPUT
    max_memory_bytes: int = DEFAULT_MAX_MEMORY

    @classmethod
    def from_env(cls) -> "DecodeLimits":
        """The limits in force now (read on every call, so a changed environment takes effect)."""
        return cls(_read_env(PIXELS_VAR, DEFAULT_MAX_PIXELS), _read_env(FRAMES_VAR, DEFAULT_MAX_FRAMES),
                   _read_env(OUTPUT_VAR, DEFAULT_MAX_OUTPUT), _read_env(MEMORY_VAR, DEFAULT_MAX_MEMORY))


def short_number(value: float) -> str:
    """1e10 -> '1e10', 268435456 -> '2.68e8', 640 -> '640'."""
    if abs(value) < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3g}".split("e")
    return f"{mantissa}e{int(exponent)}"


def short_bytes(value: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{int(value)} bytes"


def check_claim(width: int, height: int, n_frames: int = 1, *, working_bytes_per_pixel: float = 0.0,
                video: bool = False) -> None:
    """Refuse a header's size claim that is over a limit; raise :class:`BitstreamError` (without the
    file name: the caller puts it in front). ``working_bytes_per_pixel`` is the decoder's memory
    beyond its output, per decoded pixel (all frames)."""
    limits = DecodeLimits.from_env()
    pixels = width * height
    claim = f"{width}x{height}" + (f" x {n_frames} frames" if video else "")
    if pixels > limits.max_pixels:
        raise BitstreamError(
            f"header claims {width}x{height} ({short_number(pixels)} pixels), over the decode limit of "
            f"{short_number(limits.max_pixels)} pixels per {'frame' if video else 'image'} (set {PIXELS_VAR} to raise it)")
    if n_frames > limits.max_frames:
        raise BitstreamError(f"header claims {n_frames} frames, over the decode limit of {limits.max_frames} frames "
                             f"per clip (set {FRAMES_VAR} to raise it)")
    output = pixels * n_frames * OUTPUT_BYTES_PER_PIXEL
    if output > limits.max_output_bytes:
        raise BitstreamError(f"header claims {claim} ({short_bytes(output)} decoded), over the decode limit of "
                             f"{short_bytes(limits.max_output_bytes)} of output (set {OUTPUT_VAR} to raise it)")
    check_memory(output + pixels * n_frames * working_bytes_per_pixel, claim, limits)


def check_memory(estimate_bytes: float, what: str, limits: DecodeLimits | None = None) -> None:
    """Refuse a decode whose estimated working memory is over the limit (``what`` says what needs it,
    e.g. '4000x4000')."""
    limits = limits or DecodeLimits.from_env()
    if estimate_bytes > limits.max_memory_bytes:
        raise BitstreamError(f"header claims {what}, which needs an estimated {short_bytes(estimate_bytes)} of "
                             f"decoder memory, over the decode limit of {short_bytes(limits.max_memory_bytes)} "
                             f"(set {MEMORY_VAR} to raise it)")
