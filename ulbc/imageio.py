"""Reading input images into 8-bit RGB arrays, with every conversion explicit and documented.

Accepted as they are: 8-bit RGB. Converted (documented in the README):
  * grayscale (L), bilevel (1) and palette (P) images -> RGB by replicating / expanding;
  * images with alpha (RGBA, LA, P with transparency) -> composited on a white background;
  * CMYK / YCbCr / LAB -> RGB with Pillow's conversion.
Refused with a one-line error: unreadable or truncated files, 16-bit or floating-point images (an 8-bit
codec study would silently drop their precision), images above ``MAX_PIXELS``, empty images.
Pixels are used in stored order; EXIF orientation tags are not applied.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .errors import InputError
from .fsutil import atomic_path

# Refuse truncated files instead of padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Largest accepted image (pixels). 2**28 = 268 Mpx, e.g. 16384 x 16384.
MAX_PIXELS = 2**28

_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "RGB;16", "RGBA;16"}


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _source_bit_depth(img: Image.Image, path: Path) -> int:
    """Bits per sample of the file as stored (Pillow silently reduces 16-bit RGB PNGs to 8 bits)."""
    if img.format == "PNG":
        depth = _png_bit_depth(path)
        if depth is not None:
            return depth
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample
        if bits:
            return int(max(bits) if isinstance(bits, tuple) else bits)
    return 16 if img.mode in _HIGH_DEPTH_MODES else 8


def to_rgb8(img: Image.Image, name: str) -> np.ndarray:
    """Convert an opened 8-bit Pillow image to an (H, W, 3) uint8 array (see module doc)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputError(f"{name}: cannot convert image mode {mode!r} to RGB ({exc})") from None
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"{name}: unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Load ``path`` as an (H, W, 3) uint8 RGB array or raise :class:`InputError` with one line."""
    return load_rgb_and_mode(path)[0]


def _check_header(img: Image.Image, path: Path) -> None:
    """Refuse what no documented conversion covers, from the header alone."""
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{path}: empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InputError(f"{path}: image is {w}x{h} = {w * h} pixels, above the limit of {MAX_PIXELS}")
    depth = _source_bit_depth(img, path)
    if depth > 8 or img.mode in _HIGH_DEPTH_MODES:
        raise InputError(
            f"{path}: {depth}-bit image (mode {img.mode}); ulbc studies 8-bit RGB, "
            "convert it to 8 bits per channel first"
        )


def _open_checked(path: Path, decode: bool):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            _check_header(img, path)
            if not decode:
                return None, img.size, img.mode
            img.load()
            return to_rgb8(img, str(path)), img.size, img.mode
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: unreadable or truncated image ({msg})") from None


def load_rgb_and_mode(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Like :func:`load_rgb`, also returning the file's original Pillow mode (e.g. 'RGBA', 'CMYK')."""
    arr, _, mode = _open_checked(Path(path), decode=True)
    return arr, mode


def probe_image(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, original mode) from the header only: cheap enough for 10^5-item manifests.

    Applies every header check of :func:`load_rgb`; a file whose pixel data is truncated passes
    here and fails with a one-line error when it is loaded for encoding.
    """
    _, (w, h), mode = _open_checked(Path(path), decode=False)
    return w, h, mode


def image_info(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, original mode) of an image after fully decoding it, so broken files fail here."""
    arr, mode = load_rgb_and_mode(path)
    return arr.shape[1], arr.shape[0], mode


def encode_png(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png_bytes(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb8(img, name)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: unreadable PNG ({exc})") from None


def save_png(rgb: np.ndarray, dest: str | os.PathLike) -> None:
    """Write an RGB array as a lossless PNG, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(encode_png(rgb, compress_level=6))
