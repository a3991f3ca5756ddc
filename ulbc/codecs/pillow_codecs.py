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
from .base import Codec, Option

#: Chroma subsamplings Pillow's JPEG and AVIF encoders both take (AVIF's 4:0:0 drops the colour).
CHROMA_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")


def _decode_with_pillow(payload: bytes, expected_format: str, width: int, height: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.format != expected_format:
                raise BitstreamError(f"payload is {img.format}, expected {expected_format}")
            if img.size != (width, height):  # before decoding: the payload's own size claim
                raise BitstreamError(f"{expected_format} payload is {img.size[0]}x{img.size[1]}, the header says {width}x{height}")
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except BitstreamError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
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
        return _decode_with_pillow(payload, self.pillow_format, width, height)


@register_codec
class JpegCodec(_PillowCodec):
    name = "jpeg"
    codec_id = 1
    description = "JPEG (libjpeg-turbo through Pillow), baseline, optimised Huffman tables by default"
    rate_param = "quality"
    default_rates = (5, 10, 20, 30, 50, 70, 90)
    rate_range = (1, 100)
    integer_rates = True
    pillow_format = "JPEG"
    feature = "jpg"
    option_specs = {
        "subsampling": Option("4:2:0", "choice", choices=CHROMA_SUBSAMPLINGS, help="chroma subsampling"),
        # Pillow's own default is off, which costs JPEG about 15 BD-rate points on Kodak.
        "optimize": Option(True, "bool", help="per-image Huffman tables (lossless, ~10 % smaller)"),
    }

    def save_kwargs(self, rate, width, height):
        return {"quality": int(rate), "subsampling": self.options["subsampling"], "optimize": bool(self.options["optimize"])}

    def label_tags(self):
        return (self.options["subsampling"],)


@register_codec
class WebpCodec(_PillowCodec):
    name = "webp"
    codec_id = 2
    description = "WebP lossy (libwebp through Pillow)"
    rate_param = "quality"
    default_rates = (5, 15, 30, 50, 70, 85, 95)
    rate_range = (0, 100)
    integer_rates = True
    pillow_format = "WEBP"
    feature = "webp"
    option_specs = {"method": Option(6, "int", low=0, high=6, help="libwebp effort (0 fast, 6 slowest and best)")}

    def save_kwargs(self, rate, width, height):
        return {"quality": int(rate), "method": int(self.options["method"]), "lossless": False, "exact": False}

    def label_tags(self):
        return ("4:2:0",)  # lossy WebP (VP8) has no other chroma format


@register_codec
class AvifCodec(_PillowCodec):
    name = "avif"
    codec_id = 3
    description = "AVIF still image (libavif/libaom through Pillow)"
    rate_param = "quality"
    default_rates = (10, 25, 40, 55, 70, 85)
    rate_range = (0, 100)
    integer_rates = True
    pillow_format = "AVIF"
    feature = "avif"
    option_specs = {
        "speed": Option(4, "int", low=0, high=10, help="libavif speed (0 slowest and best, 10 fastest)"),
        "subsampling": Option("4:2:0", "choice", choices=CHROMA_SUBSAMPLINGS, help="chroma subsampling"),
        # One thread by default: libaom's output then does not depend on the machine's core count.
        "max_threads": Option(1, "int", low=1, help="encoder threads"),
    }

    def label_tags(self):
        return (self.options["subsampling"],)

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
    option_specs = {"effort": Option(7, "int", low=1, high=10, help="libjxl effort (1 fastest, 10 slowest)")}

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

        return _decode_with_pillow(payload, self.pillow_format, width, height)
