"""Bad and unusual inputs: each is converted as documented or refused with one line naming the file."""

import numpy as np
import pytest
from PIL import Image

from ulbc.errors import InputError
from ulbc.imageio import load_rgb, probe_image


def test_rgb_png_loads(tmp_path, photo):
    p = tmp_path / "a.png"
    Image.fromarray(photo).save(p)
    assert np.array_equal(load_rgb(p), photo)
    assert probe_image(p) == (photo.shape[1], photo.shape[0], "RGB")


def test_grayscale_is_replicated(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), "L").save(p)
    rgb = load_rgb(p)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_rgba_composited_on_white(tmp_path):
    p = tmp_path / "t.png"
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[1, 1] = (0, 0, 0, 0)  # fully transparent -> white
    Image.fromarray(arr, "RGBA").save(p)
    rgb = load_rgb(p)
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_cmyk_converted(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p)
    rgb = load_rgb(p)
    assert rgb.shape == (8, 8, 3) and rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60


def test_one_by_one(tmp_path):
    p = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(p)
    assert load_rgb(p).tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("mode", ["I;16", "RGB16"])
def test_16_bit_refused(tmp_path, mode):
    p = tmp_path / "deep.png"
    if mode == "I;16":
        Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(p)
    else:  # a 16-bit RGB PNG, which Pillow would silently reduce to 8 bits
        import zlib, struct

        raw = b"".join(b"\x00" + b"\x12\x34" * 3 * 4 for _ in range(4))

        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

        ihdr = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match=r"deep\.png: 16-bit"):
        load_rgb(p)
    with pytest.raises(InputError, match="16-bit"):
        probe_image(p)


def test_truncated_file(tmp_path, photo):
    p = tmp_path / "cut.png"
    Image.fromarray(photo).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.png: unreadable or truncated"):
        load_rgb(p)


def test_not_an_image_and_missing(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"notes\.png: unreadable"):
        load_rgb(p)
    with pytest.raises(InputError, match="no such file"):
        load_rgb(tmp_path / "absent.png")


def test_too_large_refused(tmp_path, monkeypatch):
    import ulbc.imageio as io_mod

    p = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(p)
    monkeypatch.setattr(io_mod, "MAX_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big\.png: image is 64x64 = 4096 pixels, above the limit"):
        load_rgb(p)
