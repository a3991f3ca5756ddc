"""Faults on a local run: a writer or a whole Snakemake run killed with SIGKILL mid-encode.

A killed run must leave nothing that looks finished, and rerunning the same command must recompute
only the shards that were missing. (The SLURM side — scancel, a drained node — is in test_slurm.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from conftest import QUICK_OPTIONS, REPO
from ulbc.fsutil import atomic_path, stale_parts

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def test_next_writer_removes_what_a_killed_writer_left(tmp_path):
    dest = tmp_path / "pack.zip"
    script = (
        "import os, signal, sys\n"
        "from ulbc.fsutil import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(dest)])
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists() and len(stale_parts(dest)) == 1
    (tmp_path / ".other.zip.x.part").write_bytes(b"")  # another destination's part is not touched
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole" and stale_parts(dest) == []
    assert (tmp_path / ".other.zip.x.part").exists()


def _study(tmp_path: Path, photo: np.ndarray) -> Path:
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        crop = photo[i * 8 : i * 8 + 32, i * 16 : i * 16 + 32]
        Image.fromarray(np.ascontiguousarray(crop)).save(images / f"im{i}.png")
    # An overfitted codec: each encode takes seconds, long enough to be killed in the middle.
    config = {
        "study": "faults",
        "items_per_job": 1,
        "datasets": {"tiny": {"source": "local", "path": str(images)}},
        "methods": {"lottery": {"rates": [1e-3], "options": QUICK_OPTIONS["lottery"]}},
        "anchor": "lottery",
        "device": "cpu",
        "paths": {"results": str(tmp_path / "results"), "datasets": str(tmp_path / "resources")},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _encoders(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in root.children(recursive=True):
        try:
            if "encode-shard" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _jobs_run(output: str, rule: str) -> int:
    """How many jobs of ``rule`` the run scheduled, from Snakemake's "Job stats" table."""
    match = re.search(rf"^{rule}\s+(\d+)\s*$", output, flags=re.M)
    return int(match.group(1)) if match else 0


@pytest.mark.slow
def test_killed_run_reruns_only_missing_shards(tmp_path, photo):
    config = _study(tmp_path, photo)
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(config), "--cores", "1"]
    packs = tmp_path / "results" / "faults" / "bitstreams" / "tiny" / "lottery"
    logs = tmp_path / "results" / "faults" / "work" / "tiny" / "lottery"
    log = (tmp_path / "killed.log").open("w")
    # A session of its own, so that the whole tree (Snakemake and its job shells) can be killed at once.
    run = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root = psutil.Process(run.pid)
    deadline = time.monotonic() + 600
    try:
        while True:
            assert run.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "no encode job was seen running after a finished one"
            # An encode job writes its pack, then its log: a shard is done once both are there.
            done = sorted(logs.rglob("*.encode.parquet"))
            if done and _encoders(root):
                break
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        log.close()
    finished = {p: p.stat().st_mtime_ns for p in packs.rglob("*.zip")
                if (logs / p.relative_to(packs).with_suffix(".encode.parquet")).is_file()}
    assert 1 <= len(finished) < 3

    # A killed Snakemake keeps its directory lock (it cannot tell a crash from a live run): the
    # documented recovery is --unlock, then the same command again.
    unlock = subprocess.run([*cmd, "--unlock"], capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-4000:]
    # Only the shards that had no pack were encoded again; finished packs were not touched.
    assert _jobs_run(output, "encode_shard") == 3 - len(finished)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    results = tmp_path / "results" / "faults"
    assert len(list((results / "shards").rglob("*.parquet"))) == 3
    assert not list(results.rglob("*.part")), "a killed writer's temporary file survived the rerun"
    import pyarrow.parquet as pq

    df = pq.read_table(results / "metrics.parquet").to_pandas()
    assert len(df) == 3 and (df["status"] == "ok").all()
