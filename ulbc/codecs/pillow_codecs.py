"""Classical image codecs that run in-process through Pillow (and the pillow-jxl-plugin)."""

from __future__ import annotations

import io
import math
from abc import abstractmethod
from typing import ClassVar

import numpy as np
from PIL import Image, features

from ..errors import BitstreamError
from . import register_codec
from .base import Codec


def _decode_with_pillow(payload: bytes, expected_format: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.format != expected_format:
                raise BitstreamError(f"payload is {img.format}, expected {expected_format}")
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except BitstreamError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BitstreamError(f"{expected_format} payload does not decode ({exc})") from None


class _PillowCodec(Codec):
    """Common path: ``Image.save(format=..., **kwargs)`` to bytes; decoding checks the format."""

    pillow_format: ClassVar[str]
    feature: ClassVar[str | None] = None

    @classmethod
    def availability(cls) -> str | None:
        if cls.feature and not features.check(cls.feature):
            return f"this Pillow build has no {cls.feature} support"
        return None

    def version(self) -> str:
        lib = features.version(self.feature) if self.feature else None
        return f"Pillow {Image.__version__}" + (f" / {self.feature} {lib}" if lib else "")

    @abstractmethod
    def save_kwargs(self, rate: float, width: int, height: int) -> dict:
        """Keyword arguments of ``Image.save`` for this rate and image size."""

    def encode_payload(self, image, rate, *, device, seed):
        buf = io.BytesIO()
        h, w = image.shape[:2]
        Image.fromarray(image, "RGB").save(buf, format=self.pillow_format, **self.save_kwargs(rate, w, h))
        return b"", buf.getvalue()

    def decode_payload(self, params, payload, width, height, *, device):
        return _decode_with_pillow(payload, self.pillow_format)


@register_codec
class JpegCodec(_PillowCodec):
    name = "jpeg"
    codec_id = 1
    description = "JPEG (libjpeg-turbo through Pillow), baseline, optimised Huffman tables by default"
    rate_param = "quality"
    default_rates = (5, 10, 20, 30, 50, 70, 90)
    rate_range = (1, 100)
    pillow_format = "JPEG"
    feature = "jpg"
    # optimize: per-image Huffman tables, lossless and ~10 % smaller; Pillow's own default is off,
    # which costs JPEG about 15 BD-rate points on Kodak.
    option_defaults = {"subsampling": "4:2:0", "optimize": True}

    def save_kwargs(self, rate, width, height):
        return {"quality": int(rate), "subsampling": self.options["subsampling"], "optimize": bool(self.options["optimize"])}


@register_codec
class WebpCodec(_PillowCodec):
    name = "webp"
    codec_id = 2
    description = "WebP lossy (libwebp through Pillow)"
    rate_param = "quality"
    default_rates = (5, 15, 30, 50, 70, 85, 95)
    rate_range = (0, 100)
    pillow_format = "WEBP"
    feature = "webp"
    option_defaults = {"method": 6}

    def save_kwargs(self, rate, width, height):
        return {"quality": int(rate), "method": int(self.options["method"]), "lossless": False, "exact": False}


@register_codec
class AvifCodec(_PillowCodec):
    name = "avif"
    codec_id = 3
    description = "AVIF still image (libavif/libaom through Pillow)"
    rate_param = "quality"
    default_rates = (10, 25, 40, 55, 70, 85)
    rate_range = (0, 100)
    pillow_format = "AVIF"
    feature = "avif"
    # One encoder thread: libaom's output then does not depend on the machine's core count.
    option_defaults = {"speed": 4, "subsampling": "4:2:0", "max_threads": 1}

    def save_kwargs(self, rate, width, height):
        return {
            "quality": int(rate),
            "speed": int(self.options["speed"]),
            "subsampling": self.options["subsampling"],
            "max_threads": int(self.options["max_threads"]),
        }


@register_codec
class Jpeg2000Codec(_PillowCodec):
    name = "jpeg2000"
    codec_id = 4
    description = "JPEG 2000 (OpenJPEG through Pillow), 9/7 wavelet, one quality layer"
    # Compression ratio against 24-bit RGB: bpp ~= 24 / ratio, so the grid runs from high ratio (low rate).
    rate_param = "ratio"
    default_rates = (240, 120, 60, 30, 20, 12)
    rate_range = (1, 10000)
    pillow_format = "JPEG2000"
    feature = "jpg_2000"

    def save_kwargs(self, rate, width, height):
        # OpenJPEG needs every resolution level to keep at least one pixel.
        levels = max(1, min(6, int(math.floor(math.log2(min(width, height)))) + 1))
        return {
            "quality_mode": "rates",
            "quality_layers": [float(rate)],
            "irreversible": True,
            "num_resolutions": levels,
            "no_jp2": True,  # raw J2K codestream: no JP2 boxes to pay for
        }


def _jxl_quality_from_distance(distance: float) -> float:
    """Invert libjxl's JxlEncoderDistanceFromQuality so the config can speak butteraugli distance."""
    if distance <= 0.1:
        return 100.0
    if distance <= 6.4:
        return 100.0 - (distance - 0.1) / 0.09
    # Below quality 30 libjxl uses d = 53/3000 q^2 - 23/20 q + 25; take the root in [0, 30].
    a, b, c = 53.0 / 3000.0, -23.0 / 20.0, 25.0 - distance
    return max(0.0, (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))


@register_codec
class JpegXlCodec(_PillowCodec):
    name = "jpegxl"
    codec_id = 5
    description = "JPEG XL (libjxl through pillow-jxl-plugin), bare codestream"
    rate_param = "distance"
    default_rates = (12, 8, 5, 3, 2, 1, 0.5)
    rate_range = (0.1, 25)
    pillow_format = "JXL"
    option_defaults = {"effort": 7}

    @classmethod
    def availability(cls) -> str | None:
        try:
            import pillow_jxl  # noqa: F401  (registers the JXL plugin with Pillow)
        except ImportError:
            return "pillow-jxl-plugin is not installed (pip install pillow-jxl-plugin)"
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return f"Pillow {Image.__version__} / pillow-jxl-plugin {version('pillow-jxl-plugin')}"

    def save_kwargs(self, rate, width, height):
        import pillow_jxl  # noqa: F401

        return {
            "quality": _jxl_quality_from_distance(float(rate)),
            "effort": int(self.options["effort"]),
            "use_container": False,
            "lossless": False,
        }

    def decode_payload(self, params, payload, width, height, *, device):
        import pillow_jxl  # noqa: F401

        return _decode_with_pillow(payload, self.pillow_format)
