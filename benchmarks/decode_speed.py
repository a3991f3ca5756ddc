"""Decoding speed of the overfitted codecs on one CPU core: the compiled decoder against the reference.

For each codec setting (coolchic at its default preset hop and at lop / mop, lottery at its
defaults), a Kodak image (768x512) is encoded once with a short training budget (decode time does
not depend on how well the model was trained, only on its architecture and image size; the files are
kept in --workdir and reused), then decoded in this process, pinned to one core with one thread:

* compiled decoder (ulbc.overfit.fastdecode): median of --runs decodes, ms per image and per
  megapixel, after one warm-up decode (which loads the cached kernels);
* reference decoder (ulbc.overfit.stream, torch fixed point): median of --reference-runs decodes;
* the decoder's multiply-accumulates per pixel, read from the file (the codec's bitstream stats);
* pixels of both decoders compared (they must be equal).

Then, for the default coolchic file: ``ulbc decode`` as a whole process (start-up, imports, kernel
loading, PNG writing), median of 3; and a decode job (``ulbc decode-shard``) over a pack of --items
copies of the files, with one and with all cores: wall time per item against the decoders' own
decode_s, i.e. the job's overhead per item (pack reading, parsing, PNG encoding, the log).

Cool-chic 4.1's C decoder, for scale: 74 ms per Kodak image on one core at about 1.3 k MAC/pixel.

Example:
    .venv/bin/python benchmarks/decode_speed.py --kodak ../shared/data/kodak
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = {  # label -> (codec, options)
    "coolchic hop (default)": ("coolchic", {}),
    "coolchic mop": ("coolchic", {"preset": "mop"}),
    "coolchic lop": ("coolchic", {"preset": "lop"}),
    "lottery (default)": ("lottery", {}),
}


def pin_to_one_core() -> None:
    os.environ.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def encoded(workdir: Path, kodak: Path, image: str, label: str, iterations: int) -> Path:
    """The bitstream of one setting (encoded once, then reused)."""
    from ulbc.codecs import get_codec
    from ulbc.imageio import load_rgb

    name, options = SETTINGS[label]
    path = workdir / f"{image}-{label.split(' (')[0].replace(' ', '-')}-{iterations}it.ulb"
    if not path.exists():
        start = time.perf_counter()
        codec = get_codec(name, iterations=iterations, candidates=1, warmup_iterations=5,
                          final_iterations=max(1, iterations // 10), progress=False, **options)
        path.write_bytes(codec.encode(load_rgb(kodak / f"{image}.png"), 1e-3))
        print(f"  encoded {path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path: Path, runs: int, reference_runs: int) -> dict:
    import numpy as np
    import torch

    from ulbc import bitstream
    from ulbc.codecs import codec_for_id
    from ulbc.overfit import fastdecode, stream

    torch.set_num_threads(1)
    c = bitstream.parse(path.read_bytes(), path.name)
    codec = codec_for_id(c.codec_id)
    args = (codec.kind, c.params, c.payload, c.width, c.height)
    compiled = fastdecode.decode(*args)  # warm-up: loads (or compiles) the kernels
    reference = stream.decode(*args)
    t_fast = median_time(lambda: fastdecode.decode(*args), runs)
    t_ref = median_time(lambda: stream.decode(*args), reference_runs)
    megapixels = c.width * c.height / 1e6
    macs = codec.bitstream_stats(c.params, c.payload, c.width, c.height)["macs_per_pixel"]
    return {"size": f"{c.width}x{c.height}", "bpp": round(8 * len(path.read_bytes()) / (c.width * c.height), 4),
            "mac_per_pixel": round(macs), "compiled_ms": round(1e3 * t_fast, 1),
            "compiled_ms_per_mpixel": round(1e3 * t_fast / megapixels, 1),
            "reference_ms": round(1e3 * t_ref, 1), "speedup": round(t_ref / t_fast, 1),
            "ns_per_mac": round(1e9 * t_fast / (macs * c.width * c.height), 3),
            "pixels_equal": bool(np.array_equal(compiled, reference))}


def whole_process(path: Path, runs: int = 3) -> float:
    out = Path(tempfile.mkdtemp()) / "out.png"
    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if _has_taskset() else []
    cmd += [sys.executable, "-m", "ulbc", "decode", str(path), str(out)]
    return median_time(lambda: subprocess.run(cmd, check=True, capture_output=True), runs)


def _has_taskset() -> bool:
    return subprocess.run(["sh", "-c", "command -v taskset"], capture_output=True).returncode == 0


def shard_overhead(paths: list[Path], items: int, workers: int) -> dict:
    """A decode job over ``items`` files: wall per item, the decoders' own time, the rest."""
    import pandas as pd

    from ulbc.pack import bitstream_entry, write_pack

    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp) / "pack.zip"
        write_pack(pack, [(bitstream_entry(f"item{i:03d}"), paths[i % len(paths)].read_bytes()) for i in range(items)])
        cmd = [sys.executable, "-m", "ulbc", "decode-shard", "--pack", str(pack), "--out-decoded", f"{tmp}/d.zip",
               "--out-log", f"{tmp}/log.parquet", "--device", "cpu", "--threads", str(workers), "--quiet"]
        env = {**os.environ, "NUMBA_NUM_THREADS": str(workers)}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        wall = time.perf_counter() - start
        decode_s = float(pd.read_parquet(f"{tmp}/log.parquet")["decode_s"].sum())
    return {"workers": workers, "items": items, "wall_s": round(wall, 2), "wall_ms_per_item": round(1e3 * wall / items, 1),
            "decode_ms_per_item": round(1e3 * decode_s / items, 1),
            "overhead_ms_per_item": round(1e3 * (wall * workers - decode_s) / items, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--image", default="kodim23")
    parser.add_argument("--iterations", type=int, default=60, help="training budget of the encodes (speed does not depend on it)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reference-runs", type=int, default=2)
    parser.add_argument("--items", type=int, default=16, help="items of the decode-job measurement (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ulbc-decode-speed")
    args = parser.parse_args()
    if not (args.kodak / f"{args.image}.png").exists():
        raise SystemExit(f"{args.kodak / args.image}.png not found (--kodak)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    paths = {label: encoded(args.workdir, args.kodak, args.image, label, args.iterations) for label in SETTINGS}
    pin_to_one_core()
    results = {}
    for label, path in paths.items():
        results[label] = measure(path, args.runs, args.reference_runs)
        print(json.dumps({"file": label, **results[label]}), flush=True)
    default = paths["coolchic hop (default)"]
    process_s = whole_process(default)
    print(json.dumps({"ulbc decode whole process, s": round(process_s, 3), "file": default.name}), flush=True)
    if args.items:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count())))
        for workers in sorted({1, cores}):
            print(json.dumps({"decode job": default.name, **shard_overhead(list(paths.values()), args.items, workers)}),
                  flush=True)
    print("\nfile                      MAC/px  compiled ms  ms/MP   reference ms  speed-up  equal")
    for label, r in results.items():
        print(f"{label:24s} {r['mac_per_pixel']:7d} {r['compiled_ms']:11.1f} {r['compiled_ms_per_mpixel']:7.1f} "
              f"{r['reference_ms']:13.1f} {r['speedup']:8.1f}x  {r['pixels_equal']}")
    print(f"ulbc decode (whole process, default coolchic): {process_s:.2f} s;  Cool-chic 4.1 C decoder: 74 ms at ~1.3 k MAC/px")


if __name__ == "__main__":
    main()
