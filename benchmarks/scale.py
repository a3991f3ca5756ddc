"""Scale: what a 10^5-item study costs the workflow itself, before any codec runs.

1. Dry run (``snakemake -n``, the DAG build) on synthetic manifests of 10^3, 10^4 and 10^5 items with
   5 methods x 6 rate points (jpeg, webp, avif, jpegxl, hevc-intra): wall seconds, CPU seconds and peak
   RSS of the Snakemake process, jobs in the DAG, and jobs per (method, rate point) — locally, and as
   cluster jobs under ``profiles/slurm``, which sends the two jobs of a shard as one grouped job.
2. Aggregation of 10^6 metric rows spread over 10^4 shard Parquets (100 rows each, ulbc's row
   schema), with dask and with pyarrow (ulbc.aggregate.aggregate_shards, schema checks included):
   wall seconds and peak RSS, each engine in a fresh process.

Targets (issue 5): dry run <= 60 s and <= 2 GB at 10^5 items on 2 cores; <= 1 000 cluster jobs per
(method, rate point); aggregation of 10^6 rows <= 30 s.

Usage: .venv/bin/python benchmarks/scale.py [--items 1000 10000 100000] [--items-per-job 500]
       [--rows 1000000 --shard-files 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = {
    "jpeg": [5, 10, 20, 30, 50, 90],
    "webp": [5, 15, 30, 50, 70, 95],
    "avif": [10, 25, 40, 55, 70, 85],
    "jpegxl": [12, 8, 5, 3, 2, 1],
    "hevc-intra": [47, 42, 37, 32, 27, 22],
}


def measured(cmd: list[str], **kwargs) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` (wrapped by with_usage); wall seconds, and the CPU seconds (user + sys) and peak RSS
    (MB) that the wrapper reports for the wrapped process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    usage = re.search(r"^ULBC-USAGE (\S+) (\S+)$", err, flags=re.M)
    cpu, rss = (float(usage.group(1)), float(usage.group(2))) if usage else (float("nan"), float("nan"))
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return wall, cpu, rss, done


# Runs the real command as a child and reports that child's own CPU time and peak RSS on stderr.
_USAGE_WRAPPER = (
    "import os, subprocess, sys\n"
    "pid = subprocess.Popen(sys.argv[1:]).pid\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(f'ULBC-USAGE {usage.ru_utime + usage.ru_stime:.2f} {usage.ru_maxrss / 1024:.1f}', file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def with_usage(cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", _USAGE_WRAPPER, *cmd]


def synthetic_study(work: Path, n: int, items_per_job: int) -> Path:
    """Item and clip manifests of ``n`` 768x512 images (no pixels needed for a dry run) and a config."""
    from ulbc import __version__
    from ulbc.manifest import MANIFEST_SCHEMA, META_DATASET, META_ROOT, META_VERSION, build_clip_manifest

    results = work / "results"
    manifest = results / "scale" / "manifests" / "corpus.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    (work / "images").mkdir(exist_ok=True)
    items = [f"img{i:07d}" for i in range(n)]
    columns = {"item": items, "path": [f"{i}.png" for i in items], "width": np.full(n, 768),
               "height": np.full(n, 512), "mode": ["RGB"] * n, "sha256": ["0" * 64] * n, "clip": [""] * n,
               "frames": np.ones(n)}
    table = pa.table({name: columns[name] for name in MANIFEST_SCHEMA.names}).cast(MANIFEST_SCHEMA)
    table = table.replace_schema_metadata({META_DATASET: b"corpus", META_ROOT: str(work / "images").encode(),
                                           META_VERSION: __version__.encode()})
    pq.write_table(table, manifest)
    build_clip_manifest(manifest, manifest.with_name("corpus.clips.parquet"))
    config = work / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "scale", "items_per_job": items_per_job,
        "datasets": {"corpus": {"source": "local", "path": str(work / "images")}},
        "methods": {name: {"rates": rates} for name, rates in METHODS.items()},
        "anchor": "hevc-intra",
        "paths": {"results": str(results), "datasets": str(work / "resources")},
    }))
    return config


def dry_run(root: Path, n: int, items_per_job: int) -> dict:
    work = root / f"dag{n}"
    config = synthetic_study(work, n, items_per_job)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(config), "-n", "--quiet", "rules"]
    wall, cpu, rss, proc = measured(with_usage(cmd))
    counts = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", proc.stdout, flags=re.M)}
    points = sum(len(r) for r in METHODS.values())
    shards = counts.get("encode_shard", 0) // points
    local_jobs = (counts.get("encode_shard", 0) + counts.get("evaluate_shard", 0)) // points
    return {"items": n, "rate_points": points, "dag_jobs": counts.get("total", 0), "dry_run_s": wall,
            "cpu_s": cpu, "peak_rss_mb": rss, "jobs_per_point_local": local_jobs,
            "cluster_jobs_per_point": shards}


def slurm_groups() -> dict:
    """The rule -> group mapping of profiles/slurm (one cluster job per shard if both shard rules share one)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    return profile.get("groups") or {}


def synthetic_shards(folder: Path, rows: int, files: int) -> list[Path]:
    from ulbc import __version__
    from ulbc.provenance import code_digest
    from ulbc.schema import METRIC_ROW_SCHEMA

    per_file = rows // files
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = list(METHODS)
    for f in range(files):
        method = methods[f % len(methods)]
        point = (f // len(methods)) % 6
        n = per_file
        bytes_ = rng.integers(200, 200_000, n)
        columns = {
            "dataset": ["corpus"] * n, "item": [f"img{f * per_file + i:07d}" for i in range(n)],
            "method": [method] * n, "codec": [method] * n, "rate_label": [f"q{point}"] * n,
            "rate_param": ["quality"] * n, "rate_value": np.full(n, float(point)), "codec_options": ["{}"] * n,
            "width": np.full(n, 768, np.int32), "height": np.full(n, 512, np.int32), "bytes": bytes_,
            "payload_bytes": bytes_ - 20, "bpp": 8.0 * bytes_ / (768 * 512), "payload_bpp": 8.0 * (bytes_ - 20) / (768 * 512),
            "mse_rgb": rng.uniform(1, 100, n), "psnr_rgb": rng.uniform(25, 45, n), "ms_ssim_rgb": rng.uniform(0.9, 1, n),
            "encode_s": rng.uniform(0.01, 1, n), "decode_s": rng.uniform(0.01, 1, n), "device": ["cpu"] * n,
            "status": ["ok"] * n, "error": [""] * n, "seed": rng.integers(0, 2**62, n), "codec_version": ["1"] * n,
            "code_digest": [code_digest(method)] * n,
            "ulbc_version": [__version__] * n, "git_commit": ["0" * 40] * n, "config_hash": ["0" * 16] * n,
            "library_versions": ["{}"] * n, "bits_nn": [None] * n, "bits_mask": [None] * n,
            "bits_latent": [None] * n, "macs_per_pixel": [None] * n, "encode_info": ["{}"] * n,
            "level": ["image"] * n, "clip": [""] * n, "frames": np.ones(n, np.int32),
        }
        columns["metric_info"] = ['{"ms-ssim": {"options": {}}, "psnr": {"options": {}}}'] * n
        # Columns of metrics these rows did not measure are null.
        table = pa.table({name: columns.get(name, [None] * n) for name in METRIC_ROW_SCHEMA.names}).cast(
            METRIC_ROW_SCHEMA)
        path = folder / method / f"q{point}" / f"{f:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        paths.append(path)
    return paths


def aggregation(root: Path, rows: int, files: int) -> list[dict]:
    folder = root / "shards"
    listing = root / "shards.txt"
    if not listing.exists():
        paths = synthetic_shards(folder, rows, files)
        listing.write_text("".join(f"{p}\n" for p in paths))
    out = []
    for engine in ("pyarrow", "dask"):
        target = root / f"metrics-{engine}.parquet"
        cmd = [sys.executable, "-m", "ulbc", "aggregate", "--shard-list", str(listing), "--out", str(target),
               "--engine", engine]
        wall, cpu, rss, _ = measured(with_usage(cmd))
        written = pq.ParquetFile(target).metadata.num_rows
        out.append({"engine": engine, "shard_files": files, "rows": written, "wall_s": wall, "cpu_s": cpu,
                    "peak_rss_mb": rss})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--items-per-job", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-files", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ulbc-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"workdir {root}; {os.cpu_count()} cores, load average {load:.1f} at the start")

    groups = slurm_groups()
    grouped = groups.get("encode_shard") is not None and groups.get("encode_shard") == groups.get("evaluate_shard")
    dags = [dry_run(root, n, args.items_per_job) for n in args.items]
    print(f"\nDry run (snakemake -n), {len(METHODS)} methods x 6 rate points, items_per_job {args.items_per_job}:")
    frame = pd.DataFrame(dags)
    if not grouped:
        frame["cluster_jobs_per_point"] = frame["jobs_per_point_local"]
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print("cluster jobs per point: " + ("one grouped job per shard (profiles/slurm groups encode_shard and "
                                        "evaluate_shard)" if grouped else "profiles/slurm does not group: two per shard"))

    print(f"\nAggregation of {args.rows} rows from {args.shard_files} shard Parquets (ulbc aggregate):")
    frame = pd.DataFrame(aggregation(root, args.rows, args.shard_files))
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
