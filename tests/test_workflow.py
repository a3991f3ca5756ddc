"""Snakemake end to end: 3 tiny images x 2 codecs, and the SLURM profile parsing in a dry run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import REPO

pytestmark = pytest.mark.slow

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def write_study(tmp_path: Path, photo: np.ndarray, **overrides) -> Path:
    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.ascontiguousarray(photo[i * 8 : i * 8 + 40, i * 16 : i * 16 + 48])).save(images / f"im{i}.png")
    config = {
        "study": "e2e",
        "items_per_job": 2,
        "datasets": {"tiny": {"source": "local", "path": str(images)}},
        "methods": {"jpeg": {"rates": [20, 80]}, "webp": {"rates": [30, 90]}},
        "anchor": "jpeg",
        "paths": {"results": str(tmp_path / "results"), "datasets": str(tmp_path / "resources")},
    }
    config.update(overrides)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(tmp_path: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_end_to_end(tmp_path, photo):
    from ulbc.codecs import decode_bitstream
    from ulbc.pack import PackReader
    from ulbc.schema import METRIC_ROW_SCHEMA

    config = write_study(tmp_path, photo)
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"
    table = pq.read_table(out / "metrics.parquet")
    assert table.schema.equals(METRIC_ROW_SCHEMA, check_metadata=False)
    assert table.num_rows == 3 * 2 * 2
    df = table.to_pandas()
    assert (df["status"] == "ok").all()
    assert sorted(df.groupby(["method", "rate_label"]).size().unique()) == [3]
    assert set(df["rate_label"]) == {"quality20", "quality80", "quality30", "quality90"}
    assert (df["bpp"] == 8 * df["bytes"] / (df["width"] * df["height"])).all()
    assert (df["payload_bytes"] < df["bytes"]).all()
    assert df["psnr_rgb"].between(15, 60).all()
    assert df["ms_ssim_rgb"].isna().all()  # 40x48 images are below MS-SSIM's minimum size
    assert df["git_commit"].str.len().min() >= 7 and (df["config_hash"].str.len() == 16).all()
    # Provenance in the Parquet metadata too.
    meta = table.schema.metadata
    assert b"ulbc.ulbc_version" in meta and b"ulbc.config_hash" in meta
    for name in ("bdrate.csv", "bdrate.html", "summary.csv", "rd_psnr.png", "rd_psnr.svg", "run_manifest.json"):
        assert (out / name).stat().st_size > 0, name
    # Two shards per (method, rate): one pack of bitstreams each; decoded images were temporary.
    packs = sorted((out / "bitstreams" / "tiny" / "jpeg" / "quality20").glob("*.zip"))
    assert [p.name for p in packs] == ["00000.zip", "00001.zip"]
    assert not list((out / "work").rglob("*.decoded.zip"))
    # Sizes in the table are the sizes of the files in the packs, and they decode on their own.
    row = df[(df["method"] == "jpeg") & (df["rate_label"] == "quality20") & (df["item"] == "im0")].iloc[0]
    with PackReader(packs[0]) as pack:
        data = pack.read("im0.ulb")
    assert len(data) == row["bytes"]
    _, image = decode_bitstream(data)
    assert image.shape == (40, 48, 3)
    # Nothing to do on a second run.
    again = snakemake(tmp_path, config, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # The report builds.
    snakemake(tmp_path, config, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_slurm_profile_dry_run(tmp_path, photo):
    config = write_study(tmp_path, photo)
    proc = snakemake(tmp_path, config, "-n", "--profile", str(REPO / "profiles" / "slurm"))
    text = proc.stdout + proc.stderr
    assert "manifest" in text


def test_bad_config_stops_before_any_job(tmp_path, photo):
    config = write_study(tmp_path, photo, methods={"jpeg": {}, "nonexistent-codec": {}})
    proc = snakemake(tmp_path, config, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "unknown codec 'nonexistent-codec'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
    config = write_study(tmp_path, photo, items_per_job=0)
    proc = snakemake(tmp_path, config, "--cores", "1", check=False)
    assert proc.returncode != 0 and "items_per_job" in proc.stdout + proc.stderr


def test_video_dataset_end_to_end(tmp_path, photo):
    """The embedded clip: frames extracted once, an image codec codes each frame (clip rows derived
    from them), a video codec codes the clip (its own clip row plus per-frame metric rows)."""
    from ulbc.codecs import CODECS

    if "x264" not in CODECS or CODECS["x264"].availability():
        pytest.skip("x264 codec not available here")
    x264_rates = list(CODECS["x264"].default_rates[-2:])
    config = write_study(
        tmp_path, photo,
        datasets={"clip": {"source": "sample-clip", "video": {"frames": 3, "size": [64, 48]}}},
        methods={"jpeg": {"rates": [30, 80]}, "x264": {"rates": x264_rates, "datasets": ["clip"]}},
    )
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"
    frames = sorted(p.relative_to(out / "frames" / "clip").as_posix() for p in (out / "frames" / "clip").rglob("*.png"))
    assert frames == [f"cars_8f/{i:06d}.png" for i in range(3)]
    df = pq.read_table(out / "metrics.parquet").to_pandas()
    assert (df["status"] == "ok").all()
    counts = df.groupby(["method", "level"]).size().to_dict()
    assert counts == {("jpeg", "clip"): 2, ("jpeg", "frame"): 6, ("x264", "clip"): 2, ("x264", "frame"): 6}
    assert set(df["clip"]) == {"cars_8f"}
    clips = df[df["level"] == "clip"]
    assert (clips["frames"] == 3).all() and (clips["item"] == "cars_8f").all()
    assert (clips["bpp"] == 8 * clips["bytes"] / (3 * 64 * 48)).all()
    for _, clip in clips.iterrows():
        part = df[(df["level"] == "frame") & (df["method"] == clip["method"]) & (df["rate_label"] == clip["rate_label"])]
        assert clip["psnr_rgb"] == pytest.approx(part["psnr_rgb"].mean())
        if clip["method"] == "jpeg":
            assert clip["bytes"] == part["bytes"].sum()
        else:
            assert part["bytes"].isna().all() and part["bpp"].isna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["n_items"]) == {1}  # one clip per rate point, its frames not counted as items
