"""Kodak through jpeg, webp, avif, jpegxl and hevc-intra with the workflow; BD-rates vs hevc-intra.

Prints the BD-rate table (mean of per-image PSNR and PSNR of the mean MSE, Akima) next to the
reference values measured on these machines for the same settings, and encode seconds per image.
Needs ../shared/data/kodak (or --kodak DIR). Takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: BD-rate vs hevc-intra (mean per-image PSNR, Akima) measured on these machines, quoted in issue 2.
#: Its JPEG figure matches Pillow's default JPEG (no Huffman optimisation): method jpeg-unoptimised here.
REFERENCE = {"webp": 23.0, "avif": -4.0, "jpeg": 112.0, "jpeg-unoptimised": 112.0, "jpegxl": 36.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--workdir", type=Path, default=REPO / "results-bench")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if not args.kodak.is_dir():
        sys.exit(f"{args.kodak}: Kodak folder not found (pass --kodak DIR)")
    config = yaml.safe_load((REPO / "benchmarks" / "configs" / "kodak_classical.yaml").read_text())
    config["datasets"]["kodak"]["path"] = str(args.kodak.resolve())
    config["paths"] = {"results": str(args.workdir / "results"), "datasets": str(args.workdir / "resources")}
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = args.workdir / "kodak_classical.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(args.workdir), "--configfile", str(cfg_path), "--cores", str(args.cores), "--quiet", "all"],
                   check=True)
    print(f"workflow wall time: {time.perf_counter() - start:.0f} s on {args.cores} cores")

    from ulbc.aggregate import read_metrics
    from ulbc.rd import bd_rate_table, summarize

    metrics = read_metrics(args.workdir / "results" / config["study"] / "metrics.parquet")
    counts = metrics.groupby(["method", "rate_label"]).size()
    print(f"rows per (method, rate point): min {counts.min()}, max {counts.max()}; total {len(metrics)}")
    summary = summarize(metrics)
    print(summary[["method", "rate_label", "n_items", "bpp", "psnr_rgb", "psnr_of_mean_mse", "ms_ssim_rgb", "encode_s"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    table = bd_rate_table(metrics, "hevc-intra", interpolation="akima")
    print("\nBD-rate vs hevc-intra (%), Akima:")
    print(f"{'method':<17} {'mean PSNR':>10} {'reference':>10} {'diff':>7} {'PSNR(mean MSE)':>15} {'MS-SSIM dB':>11}")
    for _, row in table.iterrows():
        ref = REFERENCE.get(row["method"])
        ref_text, diff_text = (f"{ref:+.1f}", f"{row['bd_rate_psnr_rgb'] - ref:+.1f}") if ref is not None else ("-", "-")
        print(f"{row['method']:<17} {row['bd_rate_psnr_rgb']:>+10.1f} {ref_text:>10} {diff_text:>7} "
              f"{row['bd_rate_psnr_of_mean_mse']:>+15.1f} {row['bd_rate_ms_ssim_db']:>+11.1f}")
    enc = metrics.groupby("method")["encode_s"].mean()
    print("\nmean encode seconds per image:", ", ".join(f"{m} {s:.2f}" for m, s in enc.items()))


if __name__ == "__main__":
    main()
