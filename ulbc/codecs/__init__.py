"""Codec registry: config names -> :class:`Codec` classes, and bitstream codec ids -> classes.

Codecs register themselves with :func:`register_codec` when their module is imported; the modules
are imported below so ``ulbc.codecs.CODECS`` is complete after ``import ulbc.codecs``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import bitstream
from ..errors import BitstreamError, ConfigError
from .base import Codec, adapt_container, decode_container, format_rate

CODECS: dict[str, type[Codec]] = {}
_BY_ID: dict[int, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: add a codec under its ``name`` and ``codec_id`` (both must be unique)."""
    if cls.name in CODECS:
        raise ValueError(f"codec name {cls.name!r} registered twice")
    if cls.codec_id in _BY_ID:
        raise ValueError(f"codec id {cls.codec_id} of {cls.name!r} already used by {_BY_ID[cls.codec_id].name!r}")
    CODECS[cls.name] = cls
    _BY_ID[cls.codec_id] = cls
    return cls


def codec_class(name: str) -> type[Codec]:
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; registered codecs: {', '.join(sorted(CODECS))}") from None


def get_codec(name: str, **options: Any) -> Codec:
    """Instantiate a registered, available codec with encoder ``options``."""
    cls = codec_class(name)
    reason = cls.availability()
    if reason:
        raise ConfigError(f"codec {name!r} is not available here: {reason}")
    return cls(**options)


def codec_for_id(codec_id: int, name: str = "<bitstream>") -> Codec:
    try:
        cls = _BY_ID[codec_id]
    except KeyError:
        raise BitstreamError(f"{name}: unknown codec id {codec_id}") from None
    reason = cls.availability()
    if reason:
        raise BitstreamError(f"{name}: needs codec {cls.name!r}, which is not available here: {reason}")
    return cls()


def decode_bitstream(data: bytes, *, device: str = "cpu", name: str = "<bitstream>") -> tuple[Codec, np.ndarray]:
    """Decode a complete ulbc bitstream; the file alone says which codec and parameters to use."""
    container = bitstream.parse(data, name)
    codec = codec_for_id(container.codec_id, name)
    return codec, decode_container(container, codec, device=device, name=name)


def decode_bitstream_data(data: bytes, *, device: str, name: str, target: str = "human"):
    """Parse, pick the codec from the header, decode on the device its decoder uses. Returns
    (codec, container, image, device); ``target`` "machine": the image adapted for a vision model
    (codecs whose ``targets`` include it), checked to be possible before anything is decoded."""
    from ..provenance import resolve_device

    container = bitstream.parse(data, name)
    codec = codec_for_id(container.codec_id, name)
    if target not in codec.targets:
        raise BitstreamError(f"{name}: {codec.name} has no decode for {target}s (it decodes for "
                             f"{', '.join(t + 's' for t in codec.targets)})")
    dev = resolve_device(device, codec.uses_gpu and codec.gpu_decoder)
    image = decode_container(container, codec, device=dev, name=name)
    if target == "machine":
        image = adapt_container(container, codec, image, name=name)
    return codec, container, image, dev


def read_and_decode(path: str | os.PathLike, *, device: str = "cpu") -> tuple[Codec, np.ndarray]:
    with open(path, "rb") as fh:
        data = fh.read()
    return decode_bitstream(data, device=device, name=str(path))


# Importing the modules registers their codecs.
from . import pillow_codecs  # noqa: E402,F401
from . import ffmpeg_codecs  # noqa: E402,F401
from . import overfitted  # noqa: E402,F401
from . import video_ffmpeg  # noqa: E402,F401
from . import nerv  # noqa: E402,F401
from . import compressai_zoo  # noqa: E402,F401
from . import compressai_adapter  # noqa: E402,F401
from . import glc  # noqa: E402,F401
from . import misc  # noqa: E402,F401

__all__ = [
    "CODECS",
    "Codec",
    "codec_class",
    "codec_for_id",
    "decode_bitstream",
    "format_rate",
    "get_codec",
    "read_and_decode",
    "register_codec",
]
