"""Shard aggregation: both engines agree, schema problems name the file, output is sorted with metadata."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ulbc.aggregate import aggregate_shards, check_shard_schema, read_metrics
from ulbc.errors import ConfigError, InputError
from ulbc.provenance import code_digest
from ulbc.schema import METRIC_COLUMNS, METRIC_ROW_SCHEMA


def make_row(**overrides) -> dict:
    """A complete METRIC_ROW_SCHEMA row with plausible values; keyword arguments replace fields."""
    width, height, nbytes = 64, 48, 900
    mse = 20.0
    row = {
        "dataset": "kodak",
        "item": "kodim01",
        "method": "jpeg",
        "codec": "jpeg",
        "rate_label": "q50",
        "rate_param": "quality",
        "rate_value": 50.0,
        "codec_options": "{}",
        "width": width,
        "height": height,
        "bytes": nbytes,
        "payload_bytes": nbytes - 100,
        "bpp": 8.0 * nbytes / (width * height),
        "payload_bpp": 8.0 * (nbytes - 100) / (width * height),
        "bpp_estimated": None, "bpp_paper": None,
        "mse_rgb": mse,
        "psnr_rgb": 10.0 * math.log10(255.0**2 / mse),
        "ms_ssim_rgb": 0.97,
        "encode_s": 0.01,
        "decode_s": 0.005,
        "device": "cpu",
        "status": "ok",
        "error": "",
        "seed": 0,
        "codec_version": "1.0",
        "code_digest": None,  # the current digest of the row's codec, filled in below
        "ulbc_version": "0.1.0",
        "git_commit": "abc123",
        "config_hash": "cafe",
        "library_versions": "{}",
        "bits_nn": None,
        "bits_mask": None,
        "bits_latent": None,
        "macs_per_pixel": None,
        "encode_info": "",
        "codec_weights": "",
        "level": "image",
        "clip": "",
        "frames": 1,
    }
    unknown = set(overrides) - set(METRIC_ROW_SCHEMA.names)
    assert not unknown, f"not schema columns: {unknown}"
    row.update(overrides)
    if row["code_digest"] is None:
        row["code_digest"] = code_digest(row["codec"])
    # Metric columns of metrics this row did not measure are NaN; metric_info is empty.
    return {name: row.get(name, math.nan if name in METRIC_COLUMNS else "") for name in METRIC_ROW_SCHEMA.names}


def write_shard(path, rows) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=METRIC_ROW_SCHEMA), path)
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """Five shards written out of sort order, with NaN metrics, nulls and a failed item."""
    rng = np.random.default_rng(1)
    paths = []
    for s in range(5):
        rows = []
        for i in range(7):
            method = ("webp", "jpeg")[(s + i) % 2]
            q = float(rng.choice([30, 50, 70]))
            rows.append(make_row(
                dataset=("kodak", "clic")[s % 2], item=f"img{(7 * s + i) % 11:02d}", method=method, codec=method,
                rate_label=f"q{int(q)}", rate_value=q, bpp=float(rng.uniform(0.1, 2)),
                ms_ssim_rgb=float("nan") if i == 3 else float(rng.uniform(0.9, 1)),
            ))
        rows[0].update(status="decode_error", error="truncated", mse_rgb=None, psnr_rgb=None,
                       ms_ssim_rgb=None, payload_bytes=None, width=None)
        paths.append(write_shard(tmp_path / f"shard{4 - s}.parquet", rows))
    return paths


def assert_same_tables(first: pa.Table, second: pa.Table) -> None:
    """Column by column: null positions and values (NaN == NaN, unlike Table.equals)."""
    assert first.schema.names == second.schema.names
    for name in first.schema.names:
        a, b = first.column(name), second.column(name)
        assert a.null_count == b.null_count, name
        assert a.is_null().equals(b.is_null()), name
        if pa.types.is_floating(a.type):
            np.testing.assert_array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False))
        else:
            assert a.equals(b), name


def test_engines_give_identical_tables(shards, tmp_path):
    out_dask, out_arrow = tmp_path / "dask.parquet", tmp_path / "arrow.parquet"
    meta = {"git_commit": "abc", "config_hash": "123"}
    n_dask = aggregate_shards(shards, out_dask, engine="dask", metadata=meta)
    n_arrow = aggregate_shards(shards, out_arrow, engine="pyarrow", metadata=meta)
    assert n_dask == n_arrow == 35

    t_dask, t_arrow = pq.read_table(out_dask), pq.read_table(out_arrow)
    assert t_dask.schema.equals(METRIC_ROW_SCHEMA, check_metadata=False)
    assert t_dask.schema.equals(t_arrow.schema, check_metadata=True)
    assert_same_tables(t_dask, t_arrow)
    # NaN stays NaN (not null) through both engines: MS-SSIM undefined vs item failed are different facts.
    ms = t_arrow.column("ms_ssim_rgb")
    assert ms.null_count == 5 and np.isnan(ms.to_numpy(zero_copy_only=False)).sum() == 10

    md = t_arrow.schema.metadata
    assert md[b"ulbc.git_commit"] == b"abc" and md[b"ulbc.config_hash"] == b"123"

    frame = read_metrics(out_arrow)
    keys = ["dataset", "method", "rate_value", "item"]
    pd.testing.assert_frame_equal(frame, frame.sort_values(keys, kind="mergesort"))
    assert (frame["status"] != "ok").sum() == 5


def test_output_is_written_atomically_and_replaced(shards, tmp_path):
    out = tmp_path / "sub" / "metrics.parquet"
    aggregate_shards(shards[:2], out, engine="pyarrow")
    aggregate_shards(shards, out, engine="pyarrow")
    assert pq.read_metadata(out).num_rows == 35
    assert [p.name for p in out.parent.iterdir()] == ["metrics.parquet"]


def test_schema_mismatch_names_file_and_column(shards, tmp_path):
    bad = tmp_path / "bad.parquet"
    rows = [make_row()]
    table = pa.Table.from_pylist(rows, schema=METRIC_ROW_SCHEMA)
    table = table.set_column(table.schema.get_field_index("bpp"), "bpp", pa.array([1], pa.int64()))
    pq.write_table(table, bad)
    for engine in ("dask", "pyarrow"):
        with pytest.raises(InputError, match=r"bad\.parquet: schema differs from ulbc's row schema: column 'bpp'"):
            aggregate_shards(shards + [str(bad)], tmp_path / "out.parquet", engine=engine)
    assert not (tmp_path / "out.parquet").exists()


def test_missing_column_and_extra_column(tmp_path):
    table = pa.Table.from_pylist([make_row()], schema=METRIC_ROW_SCHEMA)
    pq.write_table(table.drop_columns(["psnr_rgb"]), tmp_path / "dropped.parquet")
    with pytest.raises(InputError, match=r"dropped\.parquet: .*'psnr_rgb'"):
        check_shard_schema(tmp_path / "dropped.parquet")
    pq.write_table(table.append_column("extra", pa.array([1])), tmp_path / "extra.parquet")
    with pytest.raises(InputError, match=r"extra\.parquet: .*extra column 'extra'"):
        check_shard_schema(tmp_path / "extra.parquet")


def test_missing_and_corrupt_shards(shards, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"junk\.parquet: not a readable Parquet file") as err:
        aggregate_shards(shards + [str(junk)], tmp_path / "out.parquet")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"nope\.parquet: shard file does not exist"):
        aggregate_shards([str(tmp_path / "nope.parquet")], tmp_path / "out.parquet", engine="pyarrow")
    with pytest.raises(InputError, match="no shard files"):
        aggregate_shards([], tmp_path / "out.parquet")
    with pytest.raises(ConfigError, match="engine"):
        aggregate_shards(shards, tmp_path / "out.parquet", engine="spark")


def test_many_shards_use_the_threaded_check(tmp_path):
    paths = [write_shard(tmp_path / f"s{i:03d}.parquet", [make_row(item=f"i{i:03d}")]) for i in range(80)]
    pq.write_table(pa.Table.from_pylist([make_row()], schema=METRIC_ROW_SCHEMA).drop_columns(["seed"]),
                   tmp_path / "late.parquet")
    with pytest.raises(InputError, match=r"late\.parquet"):
        aggregate_shards(paths + [str(tmp_path / "late.parquet")] + paths, tmp_path / "out.parquet")
    assert aggregate_shards(paths, tmp_path / "out.parquet", engine="dask") == 80


def test_read_metrics_errors(tmp_path):
    with pytest.raises(InputError, match=r"metrics\.parquet: metrics file does not exist"):
        read_metrics(tmp_path / "metrics.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        read_metrics(tmp_path / "broken.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match=r"other\.parquet: schema differs"):
        read_metrics(tmp_path / "other.parquet")


def test_key_value_folders_do_not_become_columns(tmp_path):
    """Arrow readers parse "method=x" folders as hive partitions; shard paths must stay plain paths."""
    folder = tmp_path / "method=other" / "dataset=elsewhere"
    folder.mkdir(parents=True)
    paths = [write_shard(folder / f"{i}.parquet", [make_row(item=f"i{i}")]) for i in range(3)]
    for engine in ("dask", "pyarrow"):
        out = tmp_path / f"{engine}.parquet"
        assert aggregate_shards(paths, out, engine=engine) == 3
        table = pq.read_table(out)
        assert table.schema.equals(METRIC_ROW_SCHEMA, check_metadata=False)
        assert set(table.column("method").to_pylist()) == {"jpeg"}
        assert set(table.column("dataset").to_pylist()) == {"kodak"}


def test_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    paths = [write_shard(f"shards/{i}.parquet", [make_row(item=f"i{i}")]) for i in range(2)]
    for engine in ("dask", "pyarrow"):
        assert aggregate_shards(paths, f"{engine}.parquet", engine=engine) == 2
    assert_same_tables(pq.read_table("dask.parquet"), pq.read_table("pyarrow.parquet"))


def test_clip_rows_are_derived_from_frame_rows(tmp_path):
    """Image codecs on a video dataset: the clip row sums the frames' bytes and averages their metrics;
    a clip a video codec already described keeps its own row."""
    frames = [make_row(dataset="clips", item=f"walk/{i:06d}", level="frame", clip="walk", bytes=100 * (i + 1),
                       payload_bytes=90 * (i + 1), mse_rgb=10.0 * (i + 1), psnr_rgb=30.0 + i, ms_ssim_rgb=0.9)
              for i in range(3)]
    video = [make_row(dataset="clips", item="walk", method="x265", codec="x265", level="clip", clip="walk",
                      frames=3, bytes=250),
             make_row(dataset="clips", item="walk/000000", method="x265", codec="x265", level="frame",
                      clip="walk", bytes=None, bpp=math.nan)]
    out = tmp_path / "metrics.parquet"
    n = aggregate_shards([write_shard(tmp_path / "a.parquet", frames + video)], out, engine="pyarrow")
    assert n == 6  # one derived clip row for jpeg; none for x265
    df = read_metrics(out)
    clip = df[(df["method"] == "jpeg") & (df["level"] == "clip")].iloc[0]
    assert clip["item"] == "walk" and clip["frames"] == 3 and clip["bytes"] == 600
    assert clip["bpp"] == pytest.approx(8 * 600 / (3 * 64 * 48))
    assert clip["psnr_rgb"] == pytest.approx(31.0) and clip["mse_rgb"] == pytest.approx(20.0)
    assert clip["payload_bytes"] == 540 and clip["status"] == "ok"
    assert len(df[(df["method"] == "x265") & (df["level"] == "clip")]) == 1


def test_a_failed_frame_fails_its_clip_row(tmp_path):
    frames = [make_row(dataset="clips", item="walk/000000", level="frame", clip="walk"),
              make_row(dataset="clips", item="walk/000001", level="frame", clip="walk", status="encode_error",
                       error="boom", bytes=None, bpp=math.nan, psnr_rgb=math.nan)]
    out = tmp_path / "metrics.parquet"
    aggregate_shards([write_shard(tmp_path / "a.parquet", frames)], out, engine="pyarrow")
    clip = read_metrics(out).query("level == 'clip'").iloc[0]
    assert clip["status"] == "encode_error" and "walk/000001" in clip["error"]
    assert math.isnan(clip["psnr_rgb"]) and math.isnan(clip["bpp"])
