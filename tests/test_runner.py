"""Shard stages without Snakemake: encode -> decode (pack only) -> metrics, error recording, atomicity."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ulbc.errors import UlbcError
from ulbc.manifest import build_manifest
from ulbc.pack import PackReader
from ulbc.runner import MethodSpec, decode_shard, encode_shard, evaluate_shard, metrics_shard
from ulbc.schema import METRIC_ROW_SCHEMA


@pytest.fixture()
def dataset(tmp_path, photo_large):
    root = tmp_path / "data"
    root.mkdir()
    names = []
    for i in range(3):
        name = f"p{i}.png"
        Image.fromarray(np.ascontiguousarray(np.roll(photo_large, 7 * i, axis=1))).save(root / name)
        names.append(name)
    manifest = tmp_path / "manifest.parquet"
    build_manifest("toy", root, names, manifest)
    return root, manifest


def run_all(tmp_path, manifest, spec, shard=0, per_job=2, on_error="fail"):
    w = tmp_path / "w"
    encode_shard(manifest, shard, per_job, spec, w / "b.zip", w / "e.parquet", on_error=on_error, progress=False)
    decode_shard(w / "b.zip", w / "d.zip", w / "d.parquet", on_error=on_error, progress=False)
    metrics_shard(manifest, shard, per_job, spec, w / "e.parquet", w / "d.parquet", w / "d.zip", w / "m.parquet",
                  config_hash="abc", progress=False)
    return w, pq.read_table(w / "m.parquet")


def test_shard_pipeline(tmp_path, dataset):
    _, manifest = dataset
    spec = MethodSpec("jpeg-q40", "jpeg", 40)
    w, table = run_all(tmp_path, manifest, spec)
    assert table.schema.equals(METRIC_ROW_SCHEMA, check_metadata=False)
    df = table.to_pandas()
    assert list(df["item"]) == ["p0", "p1"]  # shard 0 of 2 items per job
    assert (df["method"] == "jpeg-q40").all() and (df["rate_label"] == "quality40").all()
    assert (df["status"] == "ok").all() and df["ms_ssim_rgb"].between(0.9, 1).all()
    with PackReader(w / "b.zip") as pack:
        assert pack.names() == ["p0.ulb", "p1.ulb"]
        assert [len(pack.read(n)) for n in pack.names()] == list(df["bytes"])
    assert df["seed"].nunique() == 2  # per-item seeds
    # The last, partial shard.
    _, last = run_all(tmp_path / "s1", manifest, spec, shard=1)
    assert last.column("item").to_pylist() == ["p2"]


def test_evaluate_shard_is_decode_then_metrics_without_leftovers(tmp_path, dataset):
    """The workflow's one-job decode + metrics gives the rows of the two stages run separately and leaves
    no decoded images behind."""
    _, manifest = dataset
    spec = MethodSpec("webp", "webp", 50)
    w, separate = run_all(tmp_path, manifest, spec)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rows = evaluate_shard(manifest, 0, 2, spec, w / "b.zip", w / "e.parquet", tmp_path / "one.parquet",
                          config_hash="abc", progress=False, scratch=scratch)
    combined = pq.read_table(tmp_path / "one.parquet")
    assert rows == combined.num_rows == 2
    timing = ["decode_s"]
    assert combined.drop_columns(timing).equals(separate.drop_columns(timing))
    assert not list(scratch.iterdir())


def test_evaluate_shard_error_leaves_no_output(tmp_path, dataset):
    _, manifest = dataset
    spec = MethodSpec("webp", "webp", 50)
    w = tmp_path / "w"
    encode_shard(manifest, 0, 2, spec, w / "b.zip", w / "e.parquet", progress=False)
    data = bytearray((w / "b.zip").read_bytes())
    (tmp_path / "bad.zip").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UlbcError, match="bad.zip"):
        evaluate_shard(manifest, 0, 2, spec, tmp_path / "bad.zip", w / "e.parquet", tmp_path / "out.parquet",
                       progress=False)
    assert not (tmp_path / "out.parquet").exists()


def test_encoding_is_reproducible(tmp_path, dataset):
    _, manifest = dataset
    spec = MethodSpec("webp", "webp", 50)
    encode_shard(manifest, 0, 3, spec, tmp_path / "a.zip", tmp_path / "a.parquet", progress=False)
    encode_shard(manifest, 0, 3, spec, tmp_path / "b.zip", tmp_path / "b.parquet", progress=False)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_changed_input_is_caught(tmp_path, dataset):
    root, manifest = dataset
    Image.new("RGB", (256, 192), (1, 2, 3)).save(root / "p1.png")
    with pytest.raises(UlbcError, match=r"p1\.png: changed since the manifest"):
        encode_shard(manifest, 0, 3, MethodSpec("jpeg", "jpeg", 50), tmp_path / "x.zip", tmp_path / "x.parquet",
                     progress=False)
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.glob(".x.zip*"))


def test_record_mode_keeps_failed_rows(tmp_path, dataset):
    root, manifest = dataset
    (root / "p1.png").write_bytes((root / "p1.png").read_bytes()[:300])  # truncated after the manifest
    _, table = run_all(tmp_path, manifest, MethodSpec("jpeg", "jpeg", 50), per_job=3, on_error="record")
    df = table.to_pandas().set_index("item")
    assert df.loc["p1", "status"] == "encode_error" and "p1.png" in df.loc["p1", "error"]
    assert np.isnan(df.loc["p1", "psnr_rgb"]) and np.isnan(df.loc["p1", "bpp"])
    assert (df.drop(index="p1")["status"] == "ok").all()


def test_corrupt_pack_entry_fails_decode(tmp_path, dataset):
    from ulbc.pack import write_pack

    _, manifest = dataset
    spec = MethodSpec("jpeg", "jpeg", 50)
    encode_shard(manifest, 0, 3, spec, tmp_path / "b.zip", tmp_path / "e.parquet", progress=False)
    with PackReader(tmp_path / "b.zip") as pack:
        entries = [(n, pack.read(n)) for n in pack.names()]
    name, data = entries[1]
    entries[1] = (name, data[:-10])
    write_pack(tmp_path / "bad.zip", entries)
    with pytest.raises(UlbcError, match=r"bad\.zip:p1\.ulb: .*checksum"):
        decode_shard(tmp_path / "bad.zip", tmp_path / "d.zip", tmp_path / "d.parquet", progress=False)
    assert not (tmp_path / "d.zip").exists() and not (tmp_path / "d.parquet").exists()


def test_overfitted_codec_rows_carry_rate_split_and_encoder_facts(tmp_path):
    """Same-size items are encoded as one batch; rows get bits_* and macs from the file."""
    import json

    from conftest import QUICK_OPTIONS

    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for i in range(2):
        Image.fromarray(np.roll(base, 5 * i, axis=0)).save(root / f"t{i}.png")
    manifest = tmp_path / "manifest.parquet"
    build_manifest("toy", root, ["t0.png", "t1.png"], manifest)
    spec = MethodSpec("lottery", "lottery", 1e-3, {**QUICK_OPTIONS["lottery"], "iterations": 40, "batch_size": 2})
    _, table = run_all(tmp_path, manifest, spec)
    df = table.to_pandas()
    assert (df["status"] == "ok").all() and len(df) == 2
    assert (df["bits_nn"] > 0).all() and (df["bits_mask"] > 0).all() and (df["bits_latent"] >= 0).all()
    assert (df["bits_nn"] + df["bits_mask"] + df["bits_latent"] < 8 * df["bytes"]).all()
    assert (df["macs_per_pixel"] > 0).all()
    info = [json.loads(s) for s in df["encode_info"]]
    assert all(i["batch"] == 2 and i["iterations"] == 40 for i in info)
    # Classical codecs leave those columns empty.
    _, classic = run_all(tmp_path / "c", manifest, MethodSpec("jpeg", "jpeg", 50))
    assert classic.column("bits_nn").null_count == 2 and set(classic.column("encode_info").to_pylist()) == {""}


def test_video_codec_on_an_image_dataset_codes_one_frame_clips(tmp_path, dataset):
    """The clip manifest of an image dataset lists each image as a one-frame clip: a video codec codes
    it and the row is an ordinary image row, with bpp over the image's pixels."""
    from ulbc.codecs import CODECS
    from ulbc.manifest import build_clip_manifest

    if CODECS["x264"].availability():
        pytest.skip("x264 not available here")
    _, manifest = dataset
    clips = tmp_path / "clips.parquet"
    build_clip_manifest(manifest, clips)
    _, table = run_all(tmp_path, clips, MethodSpec("x264", "x264", 33))
    df = table.to_pandas()
    assert list(df["item"]) == ["p0", "p1"] and (df["level"] == "image").all() and (df["status"] == "ok").all()
    assert (df["frames"] == 1).all() and (df["clip"] == "").all()
    assert (df["bpp"] == 8 * df["bytes"] / (df["width"] * df["height"])).all()
    assert df["psnr_rgb"].between(25, 50).all()


def test_a_clip_whose_frames_changed_is_refused(tmp_path):
    from ulbc.manifest import build_clip_manifest
    from ulbc.runner import load_clip_verified
    from ulbc.manifest import read_manifest

    root = tmp_path / "frames"
    (root / "walk").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(root / "walk" / f"{i:06d}.png")
    build_manifest("v", root, ["walk/000000.png", "walk/000001.png"], tmp_path / "v.parquet", video=True,
                   progress=False)
    build_clip_manifest(tmp_path / "v.parquet", tmp_path / "c.parquet")
    rows, got_root, _ = read_manifest(tmp_path / "c.parquet")
    row = next(rows.itertuples(index=False))
    assert load_clip_verified(got_root, row)[1].shape == (2, 6, 8, 3)
    Image.fromarray(np.full((6, 8, 3), 99, np.uint8)).save(root / "walk" / "000001.png")
    with pytest.raises(UlbcError, match="changed since the manifest"):
        load_clip_verified(got_root, row)
    (root / "walk" / "000001.png").unlink()
    with pytest.raises(UlbcError, match="holds 1 frames"):
        load_clip_verified(got_root, row)


@pytest.fixture()
def marked_dataset(tmp_path):
    """Three same-size images; p1 carries the marker pixel that makes the test codec fail."""
    root = tmp_path / "data"
    root.mkdir()
    ramp = np.add.outer(np.arange(24), np.arange(32))[:, :, None] * np.array([3, 2, 1])
    for i in range(3):
        image = ((ramp + 40 * i) % 256).astype(np.uint8)
        image[0, 0] = MARKER if i == 1 else (0, 0, 0)
        Image.fromarray(image).save(root / f"p{i}.png")
    manifest = tmp_path / "manifest.parquet"
    build_manifest("toy", root, [f"p{i}.png" for i in range(3)], manifest, progress=False)
    return root, manifest


MARKER = (1, 2, 3)


@pytest.fixture()
def batching_jpeg(monkeypatch):
    """jpeg encoding same-size images in batches of 8, failing any batch that holds a marked image (or,
    with ``fail_batches_over``, any batch larger than that); ``calls`` records each batch's size and
    each result's info says the size of the batch it came from."""
    from ulbc.codecs import CODECS
    from ulbc.codecs.base import Codec

    cls = CODECS["jpeg"]
    state = {"calls": [], "fail_batches_over": None}

    def encode_payload_batch(self, images, rate, *, device, seeds):
        state["calls"].append(len(images))
        if any(tuple(img[0, 0]) == MARKER for img in images):
            raise RuntimeError("marked image")
        if state["fail_batches_over"] is not None and len(images) > state["fail_batches_over"]:
            raise MemoryError("batch too large")
        results = Codec.encode_payload_batch(self, images, rate, device=device, seeds=seeds)
        for result in results:
            result.info = {"batch": len(images)}
        return results

    monkeypatch.setattr(cls, "batch_size", lambda self, device="cpu": 8)
    monkeypatch.setattr(cls, "encode_payload_batch", encode_payload_batch)
    return state


def test_record_mode_isolates_a_failing_item_of_a_batch(tmp_path, marked_dataset, batching_jpeg, capsys):
    """One bad image in a batch of three: two ok rows and one error row naming it, and the other two
    are encoded together, as they would have been had the bad image failed to load."""
    import json

    root, manifest = marked_dataset
    spec = MethodSpec("jpeg", "jpeg", 50)
    _, table = run_all(tmp_path, manifest, spec, per_job=3, on_error="record")
    df = table.to_pandas().set_index("item")
    assert df.loc["p1", "status"] == "encode_error" and "p1.png" in df.loc["p1", "error"]
    assert "marked image" in df.loc["p1", "error"] and "more in its batch" not in df.loc["p1", "error"]
    assert (df.loc[["p0", "p2"], "status"] == "ok").all() and (df.loc[["p0", "p2"], "psnr_rgb"] > 20).all()
    # The whole batch, its halves [p0] and [p1, p2], then [p1] and [p2] alone, then p0 and p2 together.
    assert batching_jpeg["calls"] == [3, 1, 2, 1, 1, 2]
    assert [json.loads(df.loc[i, "encode_info"])["batch"] for i in ("p0", "p2")] == [2, 2]
    err = capsys.readouterr().err
    assert "a batch of 3 failed" in err and "retrying its items: p0, p1, p2" in err
    assert [line for line in err.splitlines() if "p1 failed:" in line and "marked image" in line]

    # The same bytes as when p1 cannot even be loaded.
    with PackReader(tmp_path / "w" / "b.zip") as pack:
        retried = {n: pack.read(n) for n in pack.names()}
    (root / "p1.png").write_bytes(b"not a png")
    encode_shard(manifest, 0, 3, spec, tmp_path / "l.zip", tmp_path / "l.parquet", on_error="record", progress=False)
    with PackReader(tmp_path / "l.zip") as pack:
        assert {n: pack.read(n) for n in pack.names()} == retried and sorted(retried) == ["p0.ulb", "p2.ulb"]


def test_fail_mode_stops_at_the_failing_batch_without_retries(tmp_path, marked_dataset, batching_jpeg):
    _, manifest = marked_dataset
    with pytest.raises(UlbcError, match=r"p0\.png \(and 2 more in its batch\): jpeg encoder failed \(marked image\)"):
        encode_shard(manifest, 0, 3, MethodSpec("jpeg", "jpeg", 50), tmp_path / "b.zip", tmp_path / "e.parquet",
                     on_error="fail", progress=False)
    assert batching_jpeg["calls"] == [3] and not (tmp_path / "b.zip").exists()


def test_a_batch_that_fails_as_a_whole_keeps_the_smaller_batches_results(tmp_path, dataset, batching_jpeg, capsys):
    """No item fails on its own (e.g. the batch did not fit in memory): every item gets an ok row from
    the bisection's smaller batches."""
    _, manifest = dataset
    batching_jpeg["fail_batches_over"] = 1
    _, table = run_all(tmp_path, manifest, MethodSpec("jpeg", "jpeg", 50), per_job=3, on_error="record")
    assert table.column("status").to_pylist() == ["ok"] * 3
    assert batching_jpeg["calls"] == [3, 1, 2, 1, 1]
    assert "no item fails in a smaller batch" in capsys.readouterr().err


def test_the_shard_runner_and_the_registries_load_without_torch():
    """A classical codec's encode job must not pay for importing torch (seconds per job): the
    runner, the row schema and the metric and codec registries import it only where it computes."""
    import subprocess
    import sys

    code = ("import sys, ulbc.runner, ulbc.schema, ulbc.metrics, ulbc.codecs; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
