"""The workflow's own cost per item.

1 000 tiny images (16x16 crops of a real photo) through the whole workflow with one cheap codec (jpeg,
one rate point) at two shard sizes. Overhead per item = (wall time of the Snakemake run - the codec's
own encode + decode time from metrics.parquet) / items. The DAG build at 10^3-10^5 items and the
aggregation of 10^6 rows are measured by benchmarks/scale.py.

Usage: .venv/bin/python benchmarks/pipeline_overhead.py [--items 1000] [--shard-sizes 100 1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def source_photo() -> np.ndarray:
    from ulbc.imageio import load_rgb

    kodak = REPO.parent / "shared" / "data" / "kodak" / "kodim23.png"
    if kodak.is_file():
        return load_rgb(kodak)
    import importlib.util

    return load_rgb(Path(importlib.util.find_spec("skimage").origin).parent / "data" / "astronaut.png")


def run_snakemake(workdir: Path, config: Path, *args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, combined output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(config), *args],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # ru_maxrss is the max over all waited-for children so far; report it only when it grew.
    return wall, (peak / 1024 if peak > before else float("nan")), proc.stdout + proc.stderr


def overhead_run(root: Path, items: int, shard_size: int, cores: int) -> dict:
    photo = source_photo()
    images = root / "images"
    if not images.exists():
        images.mkdir(parents=True)
        h, w = photo.shape[:2]
        rng = np.random.default_rng(0)
        for i in range(items):
            y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
            Image.fromarray(np.ascontiguousarray(photo[y : y + 16, x : x + 16])).save(images / f"t{i:05d}.png")
    work = root / f"shards{shard_size}"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "study.yaml"
    config.write_text(yaml.safe_dump({
        "study": "overhead", "items_per_job": shard_size,
        "datasets": {"tiny": {"source": "local", "path": str(images)}},
        "methods": {"jpeg": {"rates": [50]}}, "anchor": "jpeg",
        "paths": {"results": str(work / "results"), "datasets": str(work / "resources")},
    }))
    wall, _, _ = run_snakemake(work, config, "--cores", str(cores), "--quiet", "all")
    df = pq.read_table(work / "results" / "overhead" / "metrics.parquet").to_pandas()
    codec_s = float(df["encode_s"].sum() + df["decode_s"].sum())
    return {"items": len(df), "shard_size": shard_size, "shard_jobs": 2 * -(-items // shard_size), "wall_s": wall,
            "codec_s": codec_s, "overhead_ms_per_item": 1000 * (wall - codec_s) / len(df)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ulbc-overhead-"))
    print(f"workdir {root}; {os.cpu_count()} cores; snakemake --cores {args.cores}")
    rows = [overhead_run(root, args.items, s, args.cores) for s in args.shard_sizes]
    print("\nWorkflow overhead (wall time minus jpeg encode+decode time), 16x16 items:")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
