"""Reading input images into 8-bit RGB arrays, with every conversion explicit and documented.

Accepted as they are: 8-bit RGB. Converted (documented in the README):
  * grayscale (L), bilevel (1) and palette (P) images -> RGB by replicating / expanding;
  * images with alpha (RGBA, LA, P with transparency) -> composited on a white background;
  * CMYK / YCbCr / LAB -> RGB with Pillow's conversion.
Refused with a one-line error: unreadable or truncated files, 16-bit or floating-point images (an 8-bit
codec study would silently drop their precision), images above ``MAX_PIXELS``, empty images, and
multi-frame images (animated GIF, PNG or WebP, multi-page TIFF), which would silently become their
first frame. JPEGs carrying extra pictures (MPO: previews, gain maps) and layered PSDs are read as
their primary image, as viewers show them.
Pixels are used in stored order for every format: EXIF orientation tags are never applied (Pillow's
TIFF plugin rotates on load; that rotation is undone).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile

from .errors import InputError
from .fsutil import atomic_path
from .limits import DEFAULT_MAX_PIXELS

# Refuse truncated files instead of padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Largest accepted image (pixels): 2**28 = 268 Mpx, e.g. 16384 x 16384, the same number that caps
#: what a bitstream header may claim by default (ulbc.limits).
MAX_PIXELS = DEFAULT_MAX_PIXELS

# One limit: Pillow's bomb guard (an error above 2 * MAX_IMAGE_PIXELS, default 89 Mpx) must not refuse
# what ulbc accepts. Its warning (above MAX_IMAGE_PIXELS) precedes ulbc's own one-line refusal of the
# same image, so it is only noise.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

#: Formats whose extra frames are not further pictures of the content: an MPO's are previews, gain
#: maps or a second stereo view of its primary JPEG image, a PSD's are the layers of its composite.
_PRIMARY_FRAME_FORMATS = frozenset({"MPO", "PSD"})

#: EXIF orientation -> the transpose that undoes what ``ImageOps.exif_transpose`` did for it.
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

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


def _too_large(path: Path, what: str) -> InputError:
    return InputError(f"{path}: image is {what}, above the limit of {MAX_PIXELS} pixels (2^28)")


def _loader_orientation(img: Image.Image) -> int:
    """The EXIF orientation that Pillow applies while loading ``img`` (read before loading), or 1.

    Only the TIFF plugin does so (its ``load_end`` calls ``exif_transpose`` and reports the rotated
    size from the header on); the other plugins leave the pixels as stored.
    """
    if img.format != "TIFF":
        return 1
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _UNDO_ORIENTATION else 1


def _stored_size(img: Image.Image, orientation: int) -> tuple[int, int]:
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _check_header(img: Image.Image, path: Path, size: tuple[int, int]) -> None:
    """Refuse what no documented conversion covers, from the header alone."""
    w, h = size
    if w < 1 or h < 1:
        raise InputError(f"{path}: empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise _too_large(path, f"{w}x{h} = {w * h} pixels")
    depth = _source_bit_depth(img, path)
    if depth > 8 or img.mode in _HIGH_DEPTH_MODES:
        raise InputError(
            f"{path}: {depth}-bit image (mode {img.mode}); ulbc studies 8-bit RGB, "
            "convert it to 8 bits per channel first"
        )
    if getattr(img, "is_animated", False) and img.format not in _PRIMARY_FRAME_FORMATS:
        raise InputError(
            f"{path}: {img.format} image has {img.n_frames} frames, and ulbc would read only the first; "
            "store them as a video file (.mkv, .mp4) or a folder of PNG frames, or save the one frame wanted"
        )


def _open_checked(path: Path, decode: bool):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            orientation = _loader_orientation(img)
            size = _stored_size(img, orientation)
            _check_header(img, path, size)
            if not decode:
                return None, size, img.mode
            img.load()
            stored = img
            if orientation != 1 and ExifTags.Base.Orientation not in img.tag_v2:  # the plugin rotated it
                stored = img.transpose(_UNDO_ORIENTATION[orientation])
            if stored.size != size:
                raise InputError(f"{path}: decoded as {stored.size[0]}x{stored.size[1]}, header says {size[0]}x{size[1]}")
            return to_rgb8(stored, str(path)), size, img.mode
    except InputError:
        raise
    except Image.DecompressionBombError:
        # Pillow's guard fires (above 2 * MAX_IMAGE_PIXELS) before ulbc's own check can see the size.
        raise _too_large(path, f"over {2 * MAX_PIXELS} pixels") from None
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
