"""Dataset registry, bundled samples, local folders/globs and fetching a fake registry entry."""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import skimage_photo
from test_download import FixtureServer, no_proxy  # noqa: F401  (no_proxy is an autouse fixture)
from ulbc import datasets
from ulbc.datasets import (
    DATASETS,
    SAMPLE_FILES,
    DatasetSpec,
    RemoteFile,
    fetch_dataset,
    list_datasets,
    resolve_items,
)
from ulbc.errors import ConfigError

HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Registry files without a published sha256 (fetched only with allow_unverified=True).
KNOWN_UNVERIFIED = {"uvg"}


def png_bytes(seed: int, size=(12, 8)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# -- registry -----------------------------------------------------------------------------------------
def test_registry_entries_are_well_formed():
    assert {"kodak", "clic2020", "div2k", "uvg", "coco-val2017"} <= set(DATASETS)
    assert [s.name for s in list_datasets()] == sorted(DATASETS)
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.media in ("image", "video")
        assert spec.files and spec.include and spec.description and spec.homepage and spec.license
        filenames = [f.filename for f in spec.files]
        assert len(set(filenames)) == len(filenames), name
        for f in spec.files:
            assert f.url.startswith(("https://", "http://")), f.url
            assert "/" not in f.filename
            if f.sha256 is None:
                assert name in KNOWN_UNVERIFIED, f"{name}: {f.filename} has no sha256"
            else:
                assert HEX64.match(f.sha256), f"{name}: {f.sha256!r}"
            assert f.size is None or f.size > 0
        hashes = [f.sha256 for f in spec.files if f.sha256]
        assert len(set(hashes)) == len(hashes), f"{name}: repeated sha256"


def test_registry_contents():
    kodak = DATASETS["kodak"]
    assert [f.filename for f in kodak.files] == [f"kodim{i:02d}.png" for i in range(1, 25)]
    assert all(f.url == f"https://r0k.us/graphics/kodak/kodak/{f.filename}" for f in kodak.files)
    assert not any(f.extract for f in kodak.files)
    uvg = DATASETS["uvg"]
    assert uvg.media == "video" and len(uvg.files) == 7
    assert {"width", "height", "pix_fmt", "fps"} <= set(uvg.video)
    assert (uvg.video["width"], uvg.video["height"], uvg.video["pix_fmt"]) == (1920, 1080, "yuv420p")
    assert all(f.url.endswith(".7z") and f.extract for f in uvg.files)
    coco = DATASETS["coco-val2017"]
    assert {f.filename for f in coco.files} == {"val2017.zip", "annotations_trainval2017.zip"}
    for name in ("clic2020", "div2k", "coco-val2017"):
        assert DATASETS[name].verified


# -- samples ------------------------------------------------------------------------------------------
def test_samples_materialise_without_network(tmp_path, no_network):
    root, items = resolve_items({"source": "samples"}, tmp_path)
    assert root == (tmp_path / "samples").resolve()
    assert items == sorted(SAMPLE_FILES) and len(items) == 4
    for name in items:
        assert (root / name).read_bytes() == skimage_photo(name).read_bytes()
    # Idempotent: a second call leaves the same bytes.
    again_root, again = resolve_items({"source": "samples"}, tmp_path)
    assert (again_root, again) == (root, items)


# -- local ----------------------------------------------------------------------------------------------
@pytest.fixture
def local_tree(tmp_path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    files = {
        "b.png": png_bytes(1),
        "a.JPG": b"\xff\xd8 not decoded here",
        "sub/c.png": png_bytes(2),
        "sub/deeper/d.TIFF": b"II*\x00",
        "notes.txt": b"not an image",
        ".hidden.png": png_bytes(3),
        ".cache/e.png": png_bytes(4),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return root


def test_local_folder_recursive_image_extensions(local_tree, tmp_path):
    root, items = resolve_items({"source": "local", "path": str(local_tree)}, tmp_path / "resources")
    assert root == local_tree
    assert items == ["a.JPG", "b.png", "sub/c.png", "sub/deeper/d.TIFF"]


def test_local_relative_path_is_from_working_directory(local_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, items = resolve_items({"source": "local", "path": "imgs"}, "resources")
    assert root == local_tree and "b.png" in items


def test_local_pattern_key(local_tree, tmp_path):
    root, items = resolve_items({"source": "local", "path": str(local_tree), "pattern": "**/*.png"}, tmp_path)
    assert root == local_tree
    assert items == ["b.png", "sub/c.png"]


def test_local_glob_in_path(local_tree, tmp_path):
    root, items = resolve_items({"source": "local", "path": str(local_tree / "sub" / "*.png")}, tmp_path)
    assert root == local_tree / "sub"
    assert items == ["c.png"]
    root, items = resolve_items({"source": "local", "path": str(local_tree / "**" / "*.png")}, tmp_path)
    assert root == local_tree
    assert items == ["b.png", "sub/c.png"]


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"path": "{root}/nothing-here/*.png"}, "nothing-here/*.png"),
        ({"path": "{root}", "pattern": "*.webp"}, "*.webp"),
        ({"path": "{root}/missing"}, "missing does not exist"),
        ({"path": "{root}/sub/deeper/d.TIFF"}, "is not a folder"),
    ],
)
def test_local_no_match_is_config_error(local_tree, tmp_path, entry, fragment):
    entry = {k: v.format(root=local_tree) for k, v in entry.items()}
    with pytest.raises(ConfigError) as info:
        resolve_items({"source": "local", **entry}, tmp_path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_local_pattern_must_stay_inside(local_tree, tmp_path):
    (tmp_path / "outside.png").write_bytes(png_bytes(5))
    with pytest.raises(ConfigError, match="must stay inside"):
        resolve_items({"source": "local", "path": str(local_tree), "pattern": "../*.png"}, tmp_path)


def test_local_folder_without_images(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(ConfigError, match="no images"):
        resolve_items({"source": "local", "path": str(tmp_path / "docs")}, tmp_path)


def test_unknown_source_lists_known_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_items({"source": "imagenet-99"}, tmp_path)
    message = str(info.value)
    assert "imagenet-99" in message and "kodak" in message and "samples" in message and "local" in message
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet-99'"):
        fetch_dataset("imagenet-99", tmp_path)


def test_registry_dataset_must_be_fetched_first(tmp_path):
    with pytest.raises(ConfigError, match="ulbc datasets fetch kodak"):
        resolve_items({"source": "kodak"}, tmp_path)


# -- fetching a fake registry entry -------------------------------------------------------------------
@pytest.fixture
def fake_registry(monkeypatch):
    inner = {"sub/c.png": png_bytes(12), "sub/d.png": png_bytes(13), "sub/readme.txt": b"about"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in inner.items():
            zf.writestr(name, data)
    files = {"/a.png": png_bytes(10), "/b.png": png_bytes(11), "/pack.zip": buf.getvalue()}
    with FixtureServer(files=dict(files)) as server:
        spec = DatasetSpec(
            name="fake",
            media="image",
            description="test entry",
            homepage=server.url("/"),
            license="test",
            files=tuple(
                RemoteFile(url=server.url(path), sha256=sha(data), filename=path[1:], size=len(data),
                           extract=path.endswith(".zip"))
                for path, data in files.items()
            ),
            include=("*.png", "sub/*.png"),
        )
        monkeypatch.setitem(DATASETS, "fake", spec)
        yield server, spec, files, inner


def test_fetch_fake_dataset_and_resolve(fake_registry, tmp_path):
    server, spec, files, inner = fake_registry
    folder = fetch_dataset("fake", tmp_path, progress=False)
    assert folder == tmp_path / "fake"
    assert (folder / "a.png").read_bytes() == files["/a.png"]
    assert (folder / "sub" / "c.png").read_bytes() == inner["sub/c.png"]
    assert (folder / datasets.ARCHIVE_DIR / "pack.zip").read_bytes() == files["/pack.zip"]
    marker = json.loads((folder / datasets.COMPLETE_MARKER).read_text())
    assert [f["filename"] for f in marker["files"]] == ["a.png", "b.png", "pack.zip"]
    assert sorted(p for p, _ in server.requests) == ["/a.png", "/b.png", "/pack.zip"]

    root, items = resolve_items({"source": "fake"}, tmp_path)
    assert root == folder.resolve()
    assert items == ["a.png", "b.png", "sub/c.png", "sub/d.png"]  # hidden files and .archives excluded

    # Fetching again touches nothing; without the completion marker, files verify locally and the
    # extraction done-file prevents unpacking twice.
    server.requests.clear()
    assert fetch_dataset("fake", tmp_path, progress=False) == folder
    (folder / datasets.COMPLETE_MARKER).unlink()
    (folder / "sub" / "c.png").write_bytes(b"edited after extraction")
    assert fetch_dataset("fake", tmp_path, progress=False) == folder
    assert server.requests == []
    assert (folder / "sub" / "c.png").read_bytes() == b"edited after extraction"
    assert (folder / datasets.COMPLETE_MARKER).is_file()


def test_fetch_unverified_needs_permission(fake_registry, tmp_path, monkeypatch):
    server, spec, files, inner = fake_registry
    loose = RemoteFile(url=server.url("/a.png"), sha256=None, filename="a.png")
    monkeypatch.setitem(DATASETS, "fake", DatasetSpec(**{**spec.__dict__, "files": (loose,), "include": ("*.png",)}))
    with pytest.raises(ConfigError) as info:
        fetch_dataset("fake", tmp_path, progress=False)
    message = str(info.value)
    assert "a.png" in message and "sha256" in message and "allow-unverified" in message
    assert server.requests == [] and not (tmp_path / "fake" / "a.png").exists()
    folder = fetch_dataset("fake", tmp_path, allow_unverified=True, progress=False)
    marker = json.loads((folder / datasets.COMPLETE_MARKER).read_text())
    assert marker["files"][0]["sha256"] == sha(files["/a.png"])  # recorded so it can be pinned later
    assert marker["files"][0]["verified"] is False


def test_fetch_failure_writes_no_marker(fake_registry, tmp_path, monkeypatch):
    server, spec, files, inner = fake_registry
    bad = RemoteFile(url=server.url("/b.png"), sha256="0" * 64, filename="b.png")
    monkeypatch.setitem(DATASETS, "fake", DatasetSpec(**{**spec.__dict__, "files": (bad,)}))
    from ulbc.errors import DownloadError

    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_dataset("fake", tmp_path, progress=False)
    assert not (tmp_path / "fake" / datasets.COMPLETE_MARKER).exists()
    with pytest.raises(ConfigError, match="not fetched"):
        resolve_items({"source": "fake"}, tmp_path)
