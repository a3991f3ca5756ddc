"""Snakemake end to end with every metric kind: per-item perceptual metrics, FID/KID per rate point,
weight files through the weights manager (stand-ins), and a study stopped early by missing weights."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from standin_weights import write_standins
from test_download import FixtureServer
from test_workflow import snakemake, write_study

pytestmark = pytest.mark.slow

ALL_METRICS = ["psnr", "ms-ssim", "psnr-yuv", "flip", "lpips", "dists", "fid", "kid"]


@pytest.fixture
def standin_cache(tmp_path, monkeypatch):
    """Stand-in backbones imported into a private weights cache, visible to Snakemake's subprocesses."""
    from ulbc import weights

    registry, names = write_standins(tmp_path / "standins")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setenv("ULBC_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for standin in names.values():
        weights.import_file(tmp_path / "standins" / f"{standin}.pth", standin)
    yield names
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
    weights._sync_site_registry()


def test_every_metric_end_to_end(tmp_path, photo, standin_cache):
    names = standin_cache
    options = {
        "lpips": {"weights": names["torchvision-alexnet"]},
        "dists": {"weights": names["torchvision-vgg16"]},
        # 40x48 images at P=16: 6 + 4 patches each, 30 per rate point; thresholds sized to match.
        "fid": {"weights": names["inception-v3-fid"], "patch_size": 16, "min_patches": 20},
        "kid": {"weights": names["inception-v3-fid"], "patch_size": 16, "subset_size": 20, "subsets": 10},
    }
    config = write_study(tmp_path, photo, metrics=ALL_METRICS, metric_options=options)
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"

    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert len(rows) == 12 and (rows["status"] == "ok").all()
    for column in ("psnr_rgb", "psnr_yuv", "psnr_u", "psnr_v", "flip", "lpips", "dists"):
        assert rows[column].notna().all(), column
    assert rows["flip"].between(0, 1).all() and (rows["lpips"] > 0).all()
    assert rows["psnr_y"].isna().all()  # not measured: null, not a value
    info = json.loads(rows["metric_info"].iloc[0])
    assert set(info) == set(ALL_METRICS)
    assert info["fid"]["options"]["patch_size"] == 16
    assert len(info["lpips"]["weights"][names["torchvision-alexnet"]]) == 64  # the sha256 of the file used

    per_point = pq.read_table(out / "dataset_metrics.parquet").to_pandas()
    assert len(per_point) == 4 and (per_point["n_items"] == 3).all()
    assert (per_point["fid_patches"] == 30).all() and (per_point["kid_patches"] == 30).all()
    assert per_point["fid"].notna().all() and per_point["kid"].notna().all() and (per_point["note"] == "").all()

    summary = pd.read_csv(out / "summary.csv")
    for column in ("bpp_total", "n_lossless", "psnr_yuv", "flip", "lpips", "dists", "fid", "kid"):
        assert column in summary.columns, column
    bd = pd.read_csv(out / "bdrate.csv")
    for column in ("bd_rate_psnr_yuv", "bd_rate_flip", "bd_rate_lpips", "bd_rate_dists", "bd_rate_fid", "bd_rate_kid",
                   "bd_lpips", "bd_fid"):
        assert column in bd.columns, column
    assert "bd_rate_fid_patches" not in bd.columns  # counts are stored, not BD-rated
    for column in ("psnr_rgb", "psnr_yuv", "flip", "lpips", "dists", "fid", "kid"):
        assert (out / "rd" / f"{column}.png").stat().st_size > 1000, column
    definitions = (out / "metric_definitions.html").read_text()
    assert "patch_size" in definitions and names["inception-v3-fid"] in definitions

    # A metric option change re-measures every shard but re-encodes none.
    packs = {p: p.stat().st_mtime_ns for p in (out / "bitstreams").rglob("*.zip")}
    options["flip"] = {"pixels_per_degree": 42}
    config = write_study(tmp_path, photo, metrics=ALL_METRICS, metric_options=options)
    plan = snakemake(tmp_path, config, "--cores", "2", "-n")
    text = plan.stdout + plan.stderr
    assert "evaluate_shard" in text and "encode_shard" not in text

    snakemake(tmp_path, config, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert {p: p.stat().st_mtime_ns for p in packs} == packs


def test_missing_weights_stop_the_study_before_any_job(tmp_path, photo, monkeypatch):
    monkeypatch.setenv("ULBC_WEIGHTS", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    config = write_study(tmp_path, photo, metrics=["psnr", "lpips"])
    proc = snakemake(tmp_path, config, "--cores", "1", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "alexnet-owt-7be5be79.pth" in text and "ulbc weights import PATH" in text
    assert "Traceback" not in text
    assert not (tmp_path / "results").exists()


def test_fetch_weights_downloads_once_before_the_fan_out(tmp_path, photo, monkeypatch):
    """fetch_weights: true: one job fetches the file from the site mirror (127.0.0.1 here), however
    many evaluate jobs then load it."""
    from ulbc import weights

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    registry, names = write_standins(tmp_path / "standins", ["torchvision-squeezenet1_1"])
    standin = names["torchvision-squeezenet1_1"]
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setenv("ULBC_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = f"/{standin}.pth"
    with FixtureServer(files={path: (tmp_path / "standins" / f"{standin}.pth").read_bytes()}) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        config = write_study(tmp_path, photo, metrics=["psnr", "lpips"], fetch_weights=True,
                             metric_options={"lpips": {"net": "squeeze", "weights": standin}})
        snakemake(tmp_path, config, "--cores", "2")
        assert [p for p, _ in server.requests] == [path]  # 8 evaluate jobs, one download
    out = tmp_path / "results" / "e2e"
    record = json.loads((out / "weights.json").read_text())
    assert record[standin]["sha256"] == weights.file_sha256(standin)
    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert rows["lpips"].notna().all() and len(rows) == 12
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
    weights._sync_site_registry()
