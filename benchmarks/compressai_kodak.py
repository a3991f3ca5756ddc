"""Kodak-24 with CompressAI's published weights, against CompressAI's published Kodak numbers and
against hevc-intra measured in the same run.

Needs the zoo's files in the weights cache (``ulbc weights fetch compressai-bmshj2018-hyperprior-mse-q1``
... or, offline, ``ulbc weights import``); without them it prints the weights manager's one-line
message and exits with status 2. Per quality it prints the mean PSNR (8-bit, per image, then averaged,
as CompressAI's eval_model), the file's bpp and the strings-only bpp CompressAI reports, the
likelihood estimate, and the differences to ``reference_results/compressai/kodak/compressai-<arch>_mse_cpu.json``
(the issue's bar: 0.05 dB and 1 % bpp per point); then the BD-rate of each model against hevc-intra.

Usage: python benchmarks/compressai_kodak.py [--kodak DIR] [--architectures a,b] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / mse) if mse else math.inf


def run_codec(codec, images, rate, device):
    from ulbc import bitstream
    from ulbc.codecs import decode_bitstream

    points = []
    for image in images:
        start = time.perf_counter()
        result = codec.encode_result(image, rate, device=device)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        _, decoded = decode_bitstream(result.data, device=device)
        pixels = image.shape[0] * image.shape[1]
        payload = len(bitstream.parse(result.data).payload)
        points.append(dict(psnr=psnr(image, decoded), bpp=8 * len(result.data) / pixels, payload_bpp=8 * payload / pixels,
                           bpp_estimated=result.info.get("bpp_estimated", math.nan), encode_s=encode_s,
                           decode_s=time.perf_counter() - start))
    return {key: float(np.mean([p[key] for p in points])) for key in points[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    parser.add_argument("--architectures", default="bmshj2018-hyperprior,cheng2020-anchor")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=24, help="first N images (24: the whole set)")
    parser.add_argument("--checkpoint", default="", help="instead of the zoo weights (to try the script): a "
                        "checkpoint pattern with {quality}, for one architecture; its numbers mean nothing")
    args = parser.parse_args()

    import bjontegaard as bd

    from ulbc import weights
    from ulbc.codecs import get_codec
    from ulbc.imageio import load_rgb
    from ulbc.provenance import resolve_device

    architectures = args.architectures.split(",")
    missing = []
    for architecture in architectures if not args.checkpoint else ():
        top = 6 if architecture.startswith("cheng2020") else 8
        for quality in range(1, top + 1):
            found = weights.verify(weights.compressai_zoo_name(architecture, "mse", quality))
            if not found.ok:
                missing.append(found.name)
    if missing:
        try:
            weights.require(missing[0])
        except weights.WeightsMissingError as exc:
            print(f"{len(missing)} zoo file(s) missing, the first: {exc}")
        return 2
    paths = sorted(args.kodak.glob("kodim*.png"))[: args.limit]
    if not paths:
        print(f"{args.kodak}: no kodim*.png")
        return 2
    images = [load_rgb(p) for p in paths]
    device = resolve_device(args.device, True)
    print(f"{len(images)} Kodak images, device {device}")

    hevc = get_codec("hevc-intra")
    anchor = [run_codec(hevc, images, qp, "cpu") for qp in hevc.default_rates]
    anchor.sort(key=lambda p: p["bpp"])
    for architecture in architectures:
        codec = get_codec(architecture, metric="mse", **({"checkpoint": args.checkpoint} if args.checkpoint else {}))
        published = json.loads((SHARED / "reference_results" / "compressai" / "kodak" /
                                f"compressai-{architecture}_mse_cpu.json").read_text())["results"]
        print(f"\n{architecture} (mse)")
        print("q  psnr    Δpsnr   bpp(file) bpp(strings) Δbpp(strings)  bpp_est  enc_s  dec_s")
        curve = []
        for quality in codec.default_rates:
            point = run_codec(codec, images, quality, device)
            curve.append(point)
            ref_psnr, ref_bpp = published["psnr-rgb"][quality - 1], published["bpp"][quality - 1]
            print(f"{quality}  {point['psnr']:.3f}  {point['psnr'] - ref_psnr:+.3f}  {point['bpp']:.4f}    "
                  f"{point['payload_bpp']:.4f}       {100 * (point['payload_bpp'] / ref_bpp - 1):+.2f} %      "
                  f"{point['bpp_estimated']:.4f}  {point['encode_s']:.2f}  {point['decode_s']:.2f}")
        try:
            rate = bd.bd_rate([p["bpp"] for p in anchor], [p["psnr"] for p in anchor], [p["bpp"] for p in curve],
                              [p["psnr"] for p in curve], method="akima", require_matching_points=False,
                              min_overlap=0)
            text = f"{rate:+.2f} %" if math.isfinite(rate) else "undefined (the curves do not overlap)"
        except (ValueError, AssertionError) as exc:  # curves that do not overlap or do not rise
            text = f"undefined ({' '.join(str(exc).split())})"
        print(f"BD-rate of {architecture} against hevc-intra (file bpp, PSNR-RGB, this run): {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
