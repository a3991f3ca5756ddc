"""LotteryCodec's mask ablation, paired and repeated: does the learned mask beat the all-ones network?

``benchmarks/overfitted_rd.py`` compares ``lottery`` with ``lottery-all-ones`` once per (image, λ).
That is not enough for an effect of about one per cent. What moves an encode's RD cost J, measured
at 1 000 iterations on 256² crops: a 1e-4 relative change of the learning rate (the optimisation's
own chaos) 0.1–0.5 %; another random network (another seed) 3.6 % on average; keeping the best of
three networks after the warm-up, instead of training the seed's own, lowers J by 4–7 %. The network
matters more than the mask. With the codec's default three warm-up candidates each arm keeps
whichever network did best after its warm-up, and the two arms of a pair need not keep the same one,
so such a pair compares networks as much as masks. By default this script therefore runs one
candidate (``--candidates 1``): both arms train the seed's network, which isolates the mask — the
learned mask against all weights kept on the same random network, at the same iteration budget.
``--candidates 3`` measures the codec as it encodes by default.

Every (image, λ, seed) is encoded with each keep ratio *and* with the all-ones mask (keep ratio 1) on
the same seed — hence the same random network(s) and initial values — and each result is compared
with its own all-ones twin; the report says whether both kept the same network.

Per result: J = MSE + λ·bpp (MSE in [0, 1] of the encoder's reconstruction, which the codec checks
against a decode of the written file; bpp from the complete file), mask
bits and kept weights from the bitstream. Printed: every pair's ΔJ (per cent of the all-ones J);
per keep ratio and number of candidates the mean ΔJ with its standard error and t = mean / s.e., the
number of pairs it wins, and the same per λ; and the spread of the all-ones J between seeds of one
(image, λ), i.e. what another random network does.

Each encode is one process with one thread (``--cores`` at once), through the codec API. Results go
to a JSON-lines file; a rerun with the same file skips the encodes already in it.

Examples:
    .venv/bin/python benchmarks/lottery_mask_ablation.py                # 4 crops, λ 1e-3, seeds 0 1
    .venv/bin/python benchmarks/lottery_mask_ablation.py --seeds 0 --lambdas 1e-3 4e-3 \\
        --images kodim01 kodim03 kodim07 kodim08 kodim13 kodim14 kodim20 kodim21
    .venv/bin/python benchmarks/lottery_mask_ablation.py --candidates 3  # the codec's default warm-up
    .venv/bin/python benchmarks/lottery_mask_ablation.py --report-only  # the report of every result so far
    .venv/bin/python benchmarks/lottery_mask_ablation.py --size 0 --images kodim23 kodim05 \\
        --lambdas 4e-3 1e-3 4e-4 --iterations 2000 --keep 0.9 0.7        # full Kodak images
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

ALL_ONES = 1.0


#: The codec's default number of warm-up candidates (rows written before the option existed used it).
CODEC_DEFAULT_CANDIDATES = 3


def twin_key(row: dict) -> tuple:
    """What a masked result and its all-ones twin share: everything but the keep ratio."""
    return (row["image"], row["size"], row["lambda"], row["seed"], row["iterations"],
            row.get("candidates", CODEC_DEFAULT_CANDIDATES))


def job_key(job: dict) -> tuple:
    return (*twin_key(job), job["keep_ratio"])


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def encode_job(job: dict) -> dict:
    import torch

    from ulbc import bitstream
    from ulbc.codecs import get_codec
    from ulbc.overfit import stream

    from overfitted_rd import load_kodak  # this script's folder, on sys.path when it runs

    torch.set_num_threads(1)
    image = load_kodak(Path(job["kodak"]), job["image"], job["size"])
    codec = get_codec("lottery", iterations=job["iterations"], keep_ratio=job["keep_ratio"],
                      candidates=job["candidates"], progress=False, verify=True)
    start = time.process_time()
    result = codec.encode_result(image, job["lambda"], seed=job["seed"], name=job["image"])
    cpu_s = time.process_time() - start
    container = bitstream.parse(result.data)
    h, w = image.shape[:2]
    # The encoder's reconstruction is the decoded file: the codec re-decodes it and compares (verify).
    mse = float(np.mean((result.reconstruction.astype(np.float64) - image) ** 2)) / 255.0**2
    bpp = 8.0 * len(result.data) / (h * w)
    stats = codec.bitstream_stats(container.params, container.payload, container.width, container.height)
    return {**{k: job[k] for k in ("image", "size", "lambda", "seed", "keep_ratio", "iterations", "candidates")},
            "network_seed": result.info["seed_used"], "bytes": len(result.data), "bpp": bpp, "mse": mse,
            "psnr": -10 * math.log10(max(mse, 1e-12)), "J": mse + job["lambda"] * bpp, "bits_mask": stats["bits_mask"],
            "kept": stream.kept_weights("lottery", container.params, container.payload), "cpu_s": round(cpu_s, 1)}


def paired_differences(rows: list[dict]) -> list[dict]:
    """Each masked result against the all-ones result of the same image, size, λ, seed, budget and
    number of warm-up candidates: ΔJ in per cent of the all-ones J (negative: the mask wins)."""
    ones = {twin_key(r): r for r in rows if r["keep_ratio"] == ALL_ONES}
    pairs = []
    for r in rows:
        twin = ones.get(twin_key(r))
        if r["keep_ratio"] != ALL_ONES and twin is not None:
            # With several warm-up candidates each arm keeps its own best random network; the pair
            # compares masks on one network only when both kept the same one.
            same = None  # unknown for rows written before the kept network was recorded
            if "network_seed" in r and "network_seed" in twin:
                same = r["network_seed"] == twin["network_seed"]
            pairs.append({**{k: r[k] for k in ("image", "lambda", "seed", "keep_ratio")},
                          "candidates": r.get("candidates", CODEC_DEFAULT_CANDIDATES), "same_network": same,
                          "delta_pct": 100.0 * (r["J"] / twin["J"] - 1.0)})
    return pairs


def summarize(deltas: list[float]) -> dict:
    """Mean ΔJ, its standard error (nan for one pair), t = mean / s.e. and how many pairs the mask wins."""
    values = np.asarray(deltas, dtype=np.float64)
    n = values.size
    sem = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    mean = float(values.mean()) if n else math.nan
    t = mean / sem if sem > 0 else math.nan  # nan also when sem is nan
    return {"n": n, "mean": mean, "sem": sem, "t": t, "wins": int((values < 0).sum())}


def seed_spread(rows: list[dict]) -> list[float]:
    """What another random network does: per (image, λ) with several seeds, (max − min) / mean of the
    all-ones J, in per cent."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["keep_ratio"] == ALL_ONES:
            key = (r["image"], r["size"], r["lambda"], r["iterations"], r.get("candidates", CODEC_DEFAULT_CANDIDATES))
            groups.setdefault(key, []).append(r["J"])
    return [100.0 * (max(v) - min(v)) / float(np.mean(v)) for v in groups.values() if len(v) > 1]


def report(rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["lambda"], r["image"], r["seed"], -r["keep_ratio"]))
    print(f"\n{'image':<9}{'λ':>8}{'seed':>6}{'keep':>6}{'bpp':>8}{'PSNR':>8}{'J':>12}"
          f"{'mask bits':>11}{'kept':>6}{'CPU s':>8}")
    for r in rows:
        print(f"{r['image']:<9}{r['lambda']:>8.0e}{r['seed']:>6}{r['keep_ratio']:>6.2f}{r['bpp']:>8.4f}{r['psnr']:>8.2f}"
              f"{r['J']:>12.4e}{r['bits_mask']:>11.0f}{r['kept']:>6}{r['cpu_s']:>8.0f}")
    pairs = paired_differences(rows)
    if not pairs:
        print("\nno pairs yet (every masked result needs its all-ones twin)")
        return
    print("\nΔJ of the learned mask against the all-ones network of the same seed (negative: the mask wins)")
    network = {True: "same network", False: "other network", None: ""}
    for p in pairs:
        print(f"  {p['image']:<9} λ {p['lambda']:.0e} seed {p['seed']} keep {p['keep_ratio']:.2f} "
              f"candidates {p['candidates']}: {p['delta_pct']:+.2f} %  {network[p['same_network']]}")
    for keep, candidates in sorted({(p["keep_ratio"], p["candidates"]) for p in pairs}, reverse=True):
        mine = [p for p in pairs if p["keep_ratio"] == keep and p["candidates"] == candidates]
        s = summarize([p["delta_pct"] for p in mine])
        print(f"keep {keep:.2f}, {candidates} candidate(s): mean ΔJ {s['mean']:+.2f} % ± {s['sem']:.2f} (s.e., "
              f"t = {s['t']:+.1f}), mask wins {s['wins']}/{s['n']}")
        for lmbda in sorted({p["lambda"] for p in mine}):
            s = summarize([p["delta_pct"] for p in mine if p["lambda"] == lmbda])
            print(f"    λ {lmbda:.0e}: {s['mean']:+.2f} % ± {s['sem']:.2f}, wins {s['wins']}/{s['n']}")
        other = [p for p in mine if p["same_network"] is False]
        if other:
            print(f"    {len(other)} of these pairs kept different random networks after the warm-up")
    spread = seed_spread(rows)
    if spread:
        print(f"another random network: all-ones J between seeds differs by {np.mean(spread):.2f} % on average "
              f"(max {max(spread):.2f} %, {len(spread)} image/λ groups)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--images", nargs="+", default=["kodim23", "kodim05", "kodim15", "kodim19"])
    parser.add_argument("--size", type=int, default=256, help="centre-crop size (0: full images)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keep", type=float, nargs="+", default=[0.9], help="keep ratios of the learned mask")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1,
                        help="warm-up candidates (random networks) per encode; 1 (default): both arms train "
                             f"the seed's network; {CODEC_DEFAULT_CANDIDATES}: the codec's default")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results-bench" / "lottery_mask_ablation.jsonl")
    parser.add_argument("--report-only", action="store_true", help="encode nothing; report every result in --out")
    args = parser.parse_args()
    if args.report_only:
        if not args.out.exists():
            raise SystemExit(f"{args.out}: no results file")
        report(read_results(args.out))
        return
    if not args.kodak.is_dir():
        raise SystemExit(f"{args.kodak}: no Kodak folder (pass --kodak)")
    if args.candidates < 1:
        raise SystemExit("--candidates must be at least 1")
    if any(not 0 < k < 1 for k in args.keep):
        raise SystemExit("--keep: ratios of a learned mask must be in (0, 1); the all-ones twin is always run")
    done = read_results(args.out) if args.out.exists() else []
    have = {job_key(r) for r in done}
    jobs = [{"kodak": str(args.kodak), "image": name, "size": args.size, "lambda": lmbda, "seed": seed,
             "keep_ratio": keep, "iterations": args.iterations, "candidates": args.candidates}
            for lmbda in args.lambdas for name in args.images for seed in args.seeds for keep in (ALL_ONES, *args.keep)]
    todo = [j for j in jobs if job_key(j) not in have]
    print(f"{len(jobs)} encodes, {len(jobs) - len(todo)} already in {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = {job_key(j) for j in jobs}
    rows = [r for r in done if job_key(r) in wanted]
    with ProcessPoolExecutor(max_workers=args.cores) as pool, args.out.open("a") as sink:
        for row in pool.map(encode_job, todo):
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            rows.append(row)
            print(f"  {row['image']} λ {row['lambda']:g} seed {row['seed']} keep {row['keep_ratio']}: "
                  f"J {row['J']:.4e} ({row['cpu_s']:.0f} CPU-s)", flush=True)
    report(rows)


if __name__ == "__main__":
    main()
