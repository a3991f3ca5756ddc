"""Snakemake end to end: 3 tiny images x 2 codecs, and the SLURM profile parsing in a dry run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import REPO, needs_ffmpeg

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
    for name in ("bdrate.csv", "bdrate.html", "summary.csv", "rd/psnr_rgb.png", "rd/psnr_rgb.svg", "rd/ms_ssim_db.png", "cost/time_vs_rate.png", "rd_items/psnr_rgb.png", "metric_definitions.html", "run_manifest.json"):
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
    # The report builds, with the visual comparison page of the dataset in it, whose crops are the
    # decoded pixels of the bitstreams its index names.
    from test_visual import _check_crops_are_the_decoded_pixels
    from ulbc.visual import read_index

    snakemake(tmp_path, config, "--report", str(tmp_path / "report.html"))
    report = (tmp_path / "report.html").read_text()
    assert len(report) > 10_000
    page = out / "comparison" / "tiny.html"
    start = report.index(f'"{page}": {{')
    uri = re.search(r'"data_uri": "data:text/html;[^",]*base64,([A-Za-z0-9+/=]+)"', report[start:]).group(1)
    embedded = base64.b64decode(uri)
    assert embedded == page.read_bytes() and embedded.count(b"data:image/webp;base64,") >= 4
    index = read_index(out / "comparison" / "index.json")
    assert index["datasets"]["tiny"]["items"] == ["im0", "im1"]
    _check_crops_are_the_decoded_pixels(out / "comparison", index)
    datasets = pd.read_csv(out / "datasets.csv", keep_default_na=False).to_dict("records")
    assert len(datasets) == 1
    assert {k: datasets[0][k] for k in ("dataset", "kind", "items", "size", "frames per clip", "methods")} == {
        "dataset": "tiny", "kind": "images", "items": 3, "size": "48×40", "frames per clip": "",
        "methods": "jpeg (4:2:0), webp (4:2:0)"}
    assert datasets[0]["source"] == f"local files: {tmp_path / 'imgs'}"


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


def _rule_messages() -> list[tuple[re.Pattern, str]]:
    """(pattern, rule) for each rule's ``message:``, its ``{wildcards.x}`` fields as named groups."""
    out = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule, message in re.findall(r'^(?:rule|checkpoint) (\w+):\n(?:    .*\n|\s*\n)*?    message:\n\s+"([^"]+)"',
                                        path.read_text(), re.MULTILINE):
            parts = re.split(r"\{wildcards\.(\w+)\}", message)
            pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\S+?)" for i, p in enumerate(parts))
            out.append((re.compile(pattern + "$"), rule))
    return out


def _dry_run_jobs(tmp_path: Path, config: Path) -> dict[str, list[dict]]:
    """rule -> the wildcards of each job that `snakemake -n` schedules: from the job's ``message:``
    line ("Job N: <message>") where its rule has one, else from the rule header and wildcards lines."""
    proc = snakemake(tmp_path, config, "-n", "--quiet", "all", "--printshellcmds")
    messages = _rule_messages()
    jobs: dict[str, list[dict]] = {}
    rule = None
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        job = re.match(r"Job \d+: (.*)$", line)
        if job:
            rule = None
            for pattern, name in messages:
                found = pattern.match(job.group(1))
                if found:
                    jobs.setdefault(name, []).append(found.groupdict())
                    break
            else:
                raise AssertionError(f"job message of no rule: {line}")
        elif line.startswith(("rule ", "checkpoint ", "localrule ", "localcheckpoint ")) and line.endswith(":"):
            rule = line.split()[1].rstrip(":")
            jobs.setdefault(rule, []).append({})
        elif rule and line.startswith("wildcards:"):
            jobs[rule][-1] = dict(pair.split("=", 1) for pair in line.removeprefix("wildcards:").strip().split(", "))
    return jobs


def test_users_study_is_exactly_its_config(tmp_path, photo):
    """--configfile defines the study alone (the demo's datasets and methods are not merged in),
    and `snakemake -n` schedules what `ulbc check-config` reports."""
    config = write_study(tmp_path, photo, items_per_job=2)
    report = subprocess.run([sys.executable, "-m", "ulbc", "check-config", str(config), "--json"],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    study = json.loads(report.stdout)
    assert study["datasets"] == ["tiny"] and set(study["methods"]) == {"jpeg", "webp"}
    # Before the manifest checkpoint has run, only the study's own dataset is planned.
    jobs = _dry_run_jobs(tmp_path, config)
    assert [job["dataset"] for job in jobs["manifest"]] == ["tiny"]
    assert "extract_frames" not in jobs and "fetch_dataset" not in jobs
    # Once the manifest exists, every shard job is known: 3 images at 2 per job = 2 shards.
    snakemake(tmp_path, config, "--cores", "1", str(tmp_path / "results" / "e2e" / "manifests" / "tiny.parquet"))
    jobs = _dry_run_jobs(tmp_path, config)
    expected = sorted((dataset, method, rate, shard) for method, entry in study["methods"].items()
                      for dataset in entry["datasets"] for rate in entry["rates"] for shard in ("00000", "00001"))
    for rule in ("encode_shard", "evaluate_shard"):
        scheduled = sorted((j["dataset"], j["method"], j["rate"], j["shard"]) for j in jobs[rule])
        assert scheduled == expected, rule
    assert set(jobs) == {"encode_shard", "evaluate_shard", "aggregate", "analyse", "visual_comparison",
                         "run_manifest", "all"}


def test_empty_study_config_is_refused(tmp_path):
    """An empty study is an error, not the schema's defaults (Snakemake itself refuses an empty file)."""
    config = tmp_path / "empty.yaml"
    for text, message in (("", "Config file must be given as JSON or YAML"), ("{}\n", "no study configured")):
        config.write_text(text)
        proc = snakemake(tmp_path, config, "-n", check=False)
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, text


def _copy_of_ulbc(dest: Path) -> Path:
    """A private copy of the workflow and the package, so a test can edit a codec's code."""
    dest.mkdir()
    for name in ("Snakefile", "workflow", "ulbc", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


@needs_ffmpeg
def test_changed_codec_code_reruns_its_shards_and_refuses_mixed_rows(tmp_path, photo):
    copy = _copy_of_ulbc(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    config = write_study(work, photo, methods={"jpeg": {"rates": [20, 80]}, "hevc-intra": {"rates": [32, 42]}})
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONUNBUFFERED": "1"}
    run = [sys.executable, "-m", "snakemake", "--snakefile", str(copy / "Snakefile"), "--directory", str(work),
           "--configfile", str(config), "--cores", "2"]

    def snakemake_copy(*args):
        # cwd: `python -m` puts the current folder first on sys.path, which must not be this checkout.
        proc = subprocess.run([*run, *args], capture_output=True, text=True, timeout=900, env=env, cwd=work)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stdout + proc.stderr

    snakemake_copy()
    out = work / "results" / "e2e"
    before = pq.read_table(out / "metrics.parquet").to_pandas()
    assert before.groupby("method")["code_digest"].nunique().eq(1).all()
    hevc_shard = out / "shards" / "tiny" / "hevc-intra" / "qp32" / "00000.parquet"
    old_hevc_shard = hevc_shard.read_bytes()
    jpeg_shards = {p: p.stat().st_mtime_ns for p in (out / "shards" / "tiny" / "jpeg").rglob("*.parquet")}
    # Edit the hevc-intra codec's module: its shards are recomputed, jpeg's (other code) are not.
    codec_module = copy / "ulbc" / "codecs" / "ffmpeg_codecs.py"
    codec_module.write_text(codec_module.read_text() + "\n# a code change\n")
    snakemake_copy()
    after = pq.read_table(out / "metrics.parquet").to_pandas()
    hevc_before = set(before.loc[before["method"] == "hevc-intra", "code_digest"])
    assert set(after.loc[after["method"] == "hevc-intra", "code_digest"]).isdisjoint(hevc_before)
    assert set(after.loc[after["method"] == "jpeg", "code_digest"]) == set(before.loc[before["method"] == "jpeg", "code_digest"])
    assert {p: p.stat().st_mtime_ns for p in jpeg_shards} == jpeg_shards
    # A stale shard from the old code next to new ones: the aggregation refuses the mix in one line...
    stale = tmp_path / "stale.parquet"
    stale.write_bytes(old_hevc_shard)
    shards = sorted(str(p) for p in (out / "shards").rglob("*.parquet") if p != hevc_shard)
    cli = [sys.executable, "-m", "ulbc", "aggregate", *shards, str(stale), "--out", str(tmp_path / "mixed.parquet")]
    proc = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=work)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "mix code versions" in proc.stderr
    assert not (tmp_path / "mixed.parquet").exists()
    # ... and when asked to mix, it does, and says so in the file and in the analysis tables.
    proc = subprocess.run([*cli, "--allow-mixed-versions"], capture_output=True, text=True, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    from ulbc.aggregate import version_mix

    assert "method 'hevc-intra' has rows from 2 code versions" in version_mix(tmp_path / "mixed.parquet")
    proc = subprocess.run([sys.executable, "-m", "ulbc", "analyse", str(tmp_path / "mixed.parquet"), "--outdir",
                           str(tmp_path / "analysis"), "--anchor", "jpeg"], capture_output=True, text=True, env=env,
                          cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "mix code versions" in proc.stderr
    for table in ("summary.html", "bdrate.html", "summary.csv", "bdrate.csv"):
        assert "rows from 2 code versions" in (tmp_path / "analysis" / table).read_text(), table
