"""Manifest Parquet: schema, order, hashes, metadata, duplicate ids, bad inputs and sharding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import ulbc
from ulbc.errors import ConfigError, InputError
from ulbc.manifest import (
    build_clip_manifest,
    build_manifest,
    clip_hash,
    item_id,
    num_shards,
    read_manifest,
    shard_name,
    shard_rows,
)


def save(path: Path, mode: str, size: tuple[int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bands = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    shape = (size[1], size[0], bands) if bands > 1 else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "imgs"
    save(root / "zeta.png", "RGB", (16, 12), 1)
    save(root / "alpha.png", "L", (9, 7), 2)
    save(root / "sub" / "mid.png", "RGBA", (5, 11), 3)
    save(root / "beta.jpg", "RGB", (20, 10), 4)
    return root, ["zeta.png", "sub/mid.png", "beta.jpg", "alpha.png"]  # deliberately unsorted


def test_build_manifest_schema_order_and_hashes(images, tmp_path):
    root, rel = images
    out = tmp_path / "m" / "toy.parquet"
    frame = build_manifest("toy", root, rel, out, progress=False)
    assert list(frame.columns) == ["item", "path", "width", "height", "mode", "sha256", "clip", "frames"]
    assert set(frame["clip"]) == {""} and set(frame["frames"]) == {1}
    assert list(frame["item"]) == ["alpha", "beta", "sub/mid", "zeta"]
    assert list(frame["path"]) == ["alpha.png", "beta.jpg", "sub/mid.png", "zeta.png"]
    assert list(frame["width"]) == [9, 20, 5, 16] and list(frame["height"]) == [7, 10, 11, 12]
    assert list(frame["mode"]) == ["L", "RGB", "RGBA", "RGB"]
    for row in frame.itertuples(index=False):
        assert row.sha256 == hashlib.sha256((root / row.path).read_bytes()).hexdigest()
    assert str(frame["width"].dtype) == "int32" and str(frame["height"].dtype) == "int32"

    table = pq.read_table(out)
    assert table.schema.field("width").type == pa.int32()
    assert table.schema.field("item").type == pa.string()
    meta = table.schema.metadata
    assert meta[b"ulbc.dataset"] == b"toy"
    assert meta[b"ulbc.root"] == str(root.resolve()).encode()
    assert meta[b"ulbc.ulbc_version"] == ulbc.__version__.encode()
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy.parquet"]  # no temporary left

    df, got_root, dataset = read_manifest(out)
    assert dataset == "toy" and got_root == root.resolve()
    assert df.equals(frame)


def test_item_id():
    assert item_id("a/b/c.png") == "a/b/c"
    assert item_id("x.tar.png") == "x.tar"
    assert item_id("noext") == "noext"


def test_duplicate_ids_name_both_files(tmp_path):
    save(tmp_path / "a.png", "RGB", (4, 4))
    save(tmp_path / "a.jpg", "RGB", (4, 4))
    out = tmp_path / "m.parquet"
    with pytest.raises(ConfigError) as info:
        build_manifest("dup", tmp_path, ["a.png", "a.jpg"], out, progress=False)
    message = str(info.value)
    assert "a.png" in message and "a.jpg" in message and "'a'" in message and "\n" not in message
    assert not out.exists()


def test_empty_dataset(tmp_path):
    with pytest.raises(ConfigError, match=f"dataset empty: no images found under {tmp_path}"):
        build_manifest("empty", tmp_path, [], tmp_path / "m.parquet", progress=False)


def test_16_bit_png_is_refused_with_its_name(tmp_path):
    save(tmp_path / "fine.png", "RGB", (4, 4))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).save(deep)  # mode I;16
    out = tmp_path / "m.parquet"
    with pytest.raises(InputError) as info:
        build_manifest("d", tmp_path, ["fine.png", "deep.png"], out, progress=False)
    assert str(deep) in str(info.value) and "16-bit" in str(info.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.png", "fine.png"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="unreadable manifest"):
        read_manifest(junk)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(InputError, match="not a ulbc manifest"):
        read_manifest(other)
    with pytest.raises(InputError, match="unreadable manifest"):
        num_shards(junk, 10)


@pytest.fixture
def five(tmp_path) -> tuple[Path, object]:
    for i in range(5):
        save(tmp_path / "d" / f"im{i}.png", "RGB", (3 + i, 4), i)
    out = tmp_path / "five.parquet"
    frame = build_manifest("five", tmp_path / "d", [f"im{i}.png" for i in range(5)], out, progress=False)
    return out, frame


@pytest.mark.parametrize("per_job, shards", [(1, 5), (2, 3), (4, 2), (5, 1), (100, 1)])
def test_num_shards(five, per_job, shards):
    out, _ = five
    assert num_shards(out, per_job) == shards


def test_shard_rows_cover_every_item_once(five):
    _, frame = five
    parts = [shard_rows(frame, s, 2) for s in range(3)]
    assert [len(p) for p in parts] == [2, 2, 1]  # the last shard is partial
    assert [i for p in parts for i in p["item"]] == list(frame["item"])
    assert list(parts[2].index) == [0]
    for bad in (3, -1):
        with pytest.raises(ConfigError, match=f"shard {bad} out of range"):
            shard_rows(frame, bad, 2)
    with pytest.raises(ConfigError, match="items_per_job"):
        shard_rows(frame, 0, 0)


def test_shard_name():
    assert shard_name(0) == "00000"
    assert shard_name(42) == "00042"
    assert shard_name(12345) == "12345"


def test_frames_manifest_and_clip_manifest(tmp_path):
    root = tmp_path / "frames"
    rel = [f"{clip}/{i:06d}.png" for clip, n in (("walk", 3), ("bike", 2)) for i in range(n)]
    for k, r in enumerate(rel):
        save(root / r, "RGB", (8, 6), k)
    items = build_manifest("v", root, rel, tmp_path / "v.parquet", video=True, progress=False)
    assert list(items["clip"]) == ["bike", "bike", "walk", "walk", "walk"]
    clips = build_clip_manifest(tmp_path / "v.parquet", tmp_path / "v.clips.parquet")
    assert list(clips["item"]) == ["bike", "walk"] and list(clips["frames"]) == [2, 3]
    assert list(clips["path"]) == ["bike", "walk"] and list(clips["width"]) == [8, 8]
    walk = items[items["clip"] == "walk"]["sha256"].tolist()
    assert clips.loc[1, "sha256"] == clip_hash(walk)
    df, got_root, dataset = read_manifest(tmp_path / "v.clips.parquet")
    assert dataset == "v" and got_root == root.resolve() and len(df) == 2


def test_clip_manifest_of_an_image_dataset_has_one_frame_clips(images, tmp_path):
    root, rel = images
    build_manifest("toy", root, rel, tmp_path / "t.parquet", progress=False)
    clips = build_clip_manifest(tmp_path / "t.parquet", tmp_path / "t.clips.parquet")
    items, _, _ = read_manifest(tmp_path / "t.parquet")
    assert list(clips["item"]) == list(items["item"]) == list(clips["clip"])
    assert list(clips["sha256"]) == list(items["sha256"]) and set(clips["frames"]) == {1}


def test_frames_of_one_clip_must_share_a_size(tmp_path):
    save(tmp_path / "f" / "c" / "000000.png", "RGB", (8, 6))
    save(tmp_path / "f" / "c" / "000001.png", "RGB", (6, 6))
    build_manifest("v", tmp_path / "f", ["c/000000.png", "c/000001.png"], tmp_path / "v.parquet", video=True,
                   progress=False)
    with pytest.raises(InputError, match="differ in size"):
        build_clip_manifest(tmp_path / "v.parquet", tmp_path / "v.clips.parquet")


def test_max_side_downscales_into_png_originals(images, tmp_path):
    import json

    from ulbc.cli import main

    root, _ = images
    out = tmp_path / "m.parquet"
    source = json.dumps({"source": "local", "path": str(root), "max_side": 10})
    assert main(["manifest", "--dataset", "d", "--source", source, "--datasets-dir", str(tmp_path),
                 "--images-dir", str(tmp_path / "small"), "--out", str(out)]) in (0, None)
    frame, new_root, _ = read_manifest(out)
    assert new_root == (tmp_path / "small").resolve()
    sizes = {row.item: (row.path, row.width, row.height, row.mode) for row in frame.itertuples()}
    # Longer side at most 10, aspect ratio kept; 9x7 was small enough and keeps its size; all RGB PNG.
    assert sizes == {"zeta": ("zeta.png", 10, 8, "RGB"), "alpha": ("alpha.png", 9, 7, "RGB"),
                     "sub/mid": ("sub/mid.png", 5, 10, "RGB"), "beta": ("beta.png", 10, 5, "RGB")}
    small = np.asarray(Image.open(new_root / "alpha.png"))
    original = np.asarray(Image.open(root / "alpha.png").convert("RGB"))
    assert np.array_equal(small, original)  # unscaled items are the same pixels


def test_max_side_names_clashing_items_and_refuses_video(tmp_path):
    from ulbc.config import check_study, validate_with_schema
    from ulbc.datasets import downscale_items

    save(tmp_path / "a.png", "RGB", (8, 8))
    save(tmp_path / "a.jpg", "RGB", (8, 8))
    with pytest.raises(ConfigError, match="would both become"):
        downscale_items(tmp_path, ["a.jpg", "a.png"], 4, tmp_path / "out")
    config = validate_with_schema({"datasets": {"v": {"source": "sample-clip", "max_side": 64}},
                                   "methods": {"jpeg": {}}, "anchor": "jpeg"})
    with pytest.raises(ConfigError, match="datasets.v: max_side is for image datasets"):
        check_study(config)
