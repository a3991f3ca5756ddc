"""Overfitted codecs on Kodak crops: BD-rates against anchors measured in the same run, CPU cost,
and the LotteryCodec mask ablation.

Runs one workflow study (Snakemake, every encode a job) on centre crops of Kodak images:

* anchors ``webp``, ``avif``, ``hevc-intra`` with their default rate grids;
* ``coolchic`` and ``lottery`` at the given λ values and iteration budget;
* ``lottery-all-ones``: the same random networks with every weight kept (mask ratio 1), i.e. the
  mask search switched off, at the same budget (the ablation).

Prints per-method RD points, the BD-rate (mean of per-image PSNR, Akima) of each overfitted method
against each anchor, CPU seconds per encode and per training iteration (from the encoder's own
accounting in ``encode_info``), and the rate split.

``--throughput N`` instead measures dataset-scale throughput: N same-size crops encoded as one batch
versus one at a time (images per hour), the thing that matters on a GPU.

Examples:
    .venv/bin/python benchmarks/overfitted_rd.py                       # 4 crops, 3 λ, 2 000 its (CPU)
    .venv/bin/python benchmarks/overfitted_rd.py --images 24 --size 0 --lambdas 2e-2 4e-3 1e-3 4e-4 \\
        --iterations 10000 --device cuda --cores 1                      # GPU, full Kodak images
    .venv/bin/python benchmarks/overfitted_rd.py --throughput 8 --iterations 200 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_IMAGES = ("kodim23", "kodim05", "kodim15", "kodim19", "kodim01", "kodim03", "kodim07", "kodim11")
ANCHORS = ("webp", "avif", "hevc-intra")
NEURAL = ("coolchic", "lottery", "lottery-all-ones")


def load_kodak(kodak: Path, name: str, size: int) -> np.ndarray:
    """Kodak image ``name``, centre-cropped to size x size (0: the whole image)."""
    from ulbc.imageio import load_rgb

    image = load_rgb(kodak / f"{name}.png")
    if size:
        h, w = image.shape[:2]
        if size > min(h, w):
            raise SystemExit(f"{name}: crop size {size} exceeds the image ({w}x{h})")
        image = image[(h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]
    return np.ascontiguousarray(image)


def crops(kodak: Path, names: list[str], size: int, dest: Path) -> list[Path]:
    from ulbc.imageio import save_png

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        path = dest / f"{name}.png"
        save_png(load_kodak(kodak, name, size), path)
        out.append(path)
    return out


def study_config(crop_dir: Path, workdir: Path, lambdas: list[float], options: dict, device: str) -> dict:
    neural = {"rates": lambdas, "options": options}
    return {
        "study": "overfitted-rd",
        "items_per_job": 1,  # one encode per job, so jobs spread over the cores
        "device": device,
        "datasets": {"kodak-crops": {"source": "local", "path": str(crop_dir)}},
        "methods": {
            **{a: {} for a in ANCHORS},
            "coolchic": neural,
            "lottery": neural,
            "lottery-all-ones": {"codec": "lottery", "rates": lambdas, "options": {**options, "keep_ratio": 1.0}},
        },
        "anchor": "hevc-intra",
        "paths": {"results": str(workdir / "results"), "datasets": str(workdir / "resources")},
    }


def run_study(args) -> None:
    from ulbc.aggregate import read_metrics
    from ulbc.rd import bd_rate_table, summarize

    names = list(DEFAULT_IMAGES[: args.images]) if args.images <= len(DEFAULT_IMAGES) else \
        [f"kodim{i:02d}" for i in range(1, args.images + 1)]
    crop_dir = args.workdir / "crops"
    crops(args.kodak, names, args.size, crop_dir)
    options = {"iterations": args.iterations, "progress": False}
    config = study_config(crop_dir, args.workdir, args.lambdas, options, args.device)
    cfg_path = args.workdir / "overfitted_rd.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    size_text = f"{args.size}x{args.size} centre crops" if args.size else "full images"
    print(f"{len(names)} Kodak images ({', '.join(names)}), {size_text}; λ {args.lambdas}; "
          f"{args.iterations} iterations; device {args.device}; {args.cores} parallel jobs")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(args.workdir), "--configfile", str(cfg_path), "--cores", str(args.cores), "--quiet", "all"],
                   check=True)
    print(f"workflow wall time: {time.perf_counter() - start:.0f} s")

    metrics = read_metrics(args.workdir / "results" / "overfitted-rd" / "metrics.parquet")
    summary = summarize(metrics)
    print("\nRD points (mean over images):")
    print(summary[["method", "rate_label", "n_items", "bpp", "psnr_rgb", "psnr_of_mean_mse", "encode_s"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    neural = metrics[metrics["method"].isin(NEURAL)].copy()
    info = neural["encode_info"].map(json.loads)
    neural["cpu_s"] = info.map(lambda d: d["cpu_s"])
    neural["cpu_per_it"] = info.map(lambda d: d["train_cpu_s"] / d["iterations"])
    pixels = neural["width"] * neural["height"]
    for part in ("nn", "mask", "latent"):
        neural[f"{part}_bpp"] = neural[f"bits_{part}"] / pixels
    print("\nOverfitted codecs per rate point: CPU per encode, per training iteration, rate split (bpp), MAC/pixel")
    cols = ["cpu_s", "cpu_per_it", "latent_bpp", "nn_bpp", "mask_bpp", "macs_per_pixel"]
    print(neural.groupby(["method", "rate_label"])[cols].mean().to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nmax CPU seconds per complete encode: {neural['cpu_s'].max():.0f}; "
          f"mean CPU seconds per training iteration: {neural['cpu_per_it'].mean():.3f}")

    print("\nBD-rate (%) of each overfitted method against each anchor (mean per-image PSNR, Akima; "
          "negative = fewer bits):")
    header = f"{'method':<18}" + "".join(f"{'vs ' + a:>20}" for a in (*ANCHORS, "lottery-all-ones"))
    print(header)
    tables = {a: bd_rate_table(metrics, a, interpolation="akima") for a in (*ANCHORS, "lottery-all-ones")}
    for method in NEURAL:
        cells = []
        for anchor, table in tables.items():
            row = table[table["method"] == method]
            value = float(row["bd_rate_psnr_rgb"].iloc[0]) if len(row) and anchor != method else float("nan")
            cells.append(f"{value:>+20.1f}" if np.isfinite(value) else f"{'-':>20}")
        print(f"{method:<18}" + "".join(cells))


def run_throughput(args) -> None:
    """Batched vs one-at-a-time encoding of N same-size crops: images per hour."""
    from ulbc.codecs import get_codec
    from ulbc.imageio import load_rgb

    names = [f"kodim{i:02d}" for i in range(1, 25)]
    images = []
    for name in names:
        image = load_rgb(args.kodak / f"{name}.png")
        if image.shape[0] > image.shape[1]:
            continue  # keep one orientation so every image has the same size
        if args.size:
            h, w = image.shape[:2]
            image = image[(h - args.size) // 2 : (h - args.size) // 2 + args.size,
                          (w - args.size) // 2 : (w - args.size) // 2 + args.size]
        images.append(np.ascontiguousarray(image))
    images = images[: args.throughput]
    n = len(images)
    print(f"throughput: {n} images of {images[0].shape[1]}x{images[0].shape[0]}, {args.iterations} iterations, "
          f"λ {args.lambdas[0]}, device {args.device}")
    for codec_name in ("lottery", "coolchic"):
        rates = {}
        for batch in (1, n):
            codec = get_codec(codec_name, iterations=args.iterations, batch_size=batch, progress=False)
            start = time.perf_counter()
            for i in range(0, n, batch):
                chunk = images[i : i + batch]
                codec.encode_batch(chunk, args.lambdas[0], device=args.device, seeds=list(range(i, i + len(chunk))),
                                   names=[f"img{j}" for j in range(i, i + len(chunk))])
            rates[batch] = 3600 * n / (time.perf_counter() - start)
            print(f"  {codec_name:<9} batch {batch:>3}: {rates[batch]:8.1f} images/hour")
        print(f"  {codec_name:<9} batched / sequential: {rates[n] / rates[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="centre-crop size (0: full images)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[4e-3, 1e-3, 4e-4])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--throughput", type=int, default=0, metavar="N",
                        help="measure batched vs sequential encoding of N images instead")
    parser.add_argument("--workdir", type=Path, default=REPO / "results-bench" / "overfitted")
    args = parser.parse_args()
    if not args.kodak.is_dir():
        sys.exit(f"{args.kodak}: Kodak folder not found (pass --kodak DIR)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.throughput:
        run_throughput(args)
    else:
        run_study(args)


if __name__ == "__main__":
    main()
