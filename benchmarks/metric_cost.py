"""Cost of every registered metric: CPU seconds (and wall seconds) per megapixel, next to PSNR's.

For sizing cluster jobs: an evaluate job spends roughly (sum of its metrics' s/Mpx) x the megapixels
of its shard beyond decoding. Every metric runs on the same image pairs in the same run, and each
is also printed as a multiple of PSNR's cost measured there. Dataset-level metrics (FID, KID) are
timed in two parts: the per-item Inception features (paid by evaluate jobs) and the per-rate-point
reduction over N patches (paid once by the dataset_metrics job).

Weight files: the real ones where `ulbc weights list` finds them; otherwise random-initialised
stand-ins of the same architecture (tests/standin_weights.py), which cost exactly the same to run
but give meaningless values; the output says which were used. With CUDA, the GPU metrics are timed
on the GPU as well (after one warm-up call, synchronised).

    .venv/bin/python benchmarks/metric_cost.py [--image PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

#: Options that make each metric use a given weights entry (the entry each loads by default).
WEIGHT_OPTIONS = {"lpips": ("torchvision-alexnet", "weights"), "dists": ("torchvision-vgg16", "weights"),
                  "fid": ("inception-v3-fid", "weights"), "kid": ("inception-v3-fid", "weights")}


def test_image(path: Path | None) -> np.ndarray:
    from ulbc.imageio import load_rgb

    if path is not None:
        return load_rgb(path)
    kodak = REPO.parent / "shared" / "data" / "kodak" / "kodim01.png"
    if kodak.is_file():
        return load_rgb(kodak)
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # 512 x 512, ships with scikit-image


def degraded(image: np.ndarray) -> np.ndarray:
    """A JPEG-quality-20-like reconstruction: the metrics' cost does not depend on the content."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=20)
    return np.asarray(Image.open(BytesIO(buffer.getvalue())).convert("RGB"))


def resolve_weights(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """Per-metric options naming usable weights, and a line per stand-in used."""
    from standin_weights import write_standins

    from ulbc import weights

    options, used, missing = {}, [], []
    for metric, (entry, key) in WEIGHT_OPTIONS.items():
        try:
            weights.require(entry)
        except weights.WeightsMissingError:
            missing.append(entry)
    missing = sorted(set(missing))
    standins: dict[str, str] = {}
    if missing:
        registry, standins = write_standins(folder / "standins", missing)
        os.environ["ULBC_WEIGHTS_REGISTRY"] = str(registry)
        for entry, standin in standins.items():
            weights.import_file(folder / "standins" / f"{standin}.pth", standin)
            used.append(f"{entry}: not found, timed with a random stand-in of the same architecture")
    for metric, (entry, key) in WEIGHT_OPTIONS.items():
        options[metric] = {key: standins.get(entry, entry)}
    return options, used


def timed(call, repeats: int, device: str) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``repeats`` calls, after one warm-up call."""
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    call()
    sync()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        sync()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="reference image (default: kodim01 or scikit-image's astronaut)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches", type=int, default=4096, help="patches per side for the FID/KID reduction")
    args = parser.parse_args()

    import torch

    from ulbc.metrics import METRICS, build_metrics, compute_metrics

    reference = test_image(args.image)
    reconstruction = degraded(reference)
    megapixels = reference.shape[0] * reference.shape[1] / 1e6
    with tempfile.TemporaryDirectory(prefix="ulbc-metric-cost-") as tmp:
        os.environ.setdefault("ULBC_WEIGHTS", str(Path(tmp) / "cache"))
        options, notes = resolve_weights(Path(tmp))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        print(f"image {reference.shape[1]}x{reference.shape[0]} ({megapixels:.3f} Mpx), torch threads "
              f"{torch.get_num_threads()}, repeats {args.repeats}, devices {', '.join(devices)}")
        for note in notes:
            print(f"  {note}")
        results = []
        for device in devices:
            for name, cls in METRICS.items():
                if device != "cpu" and not cls.uses_gpu:
                    continue
                metric = build_metrics([name], {name: options[name]} if name in options else {}, device=device)[0]
                if cls.level == "item":
                    call = lambda m=metric: compute_metrics([m], reference, reconstruction)  # noqa: E731
                else:
                    call = lambda m=metric: m.features(reference, reconstruction)  # noqa: E731
                cpu, wall = timed(call, args.repeats, device)
                results.append((device, name, cls.level, cpu / megapixels, wall / megapixels))
        psnr = next(r for r in results if r[0] == "cpu" and r[1] == "psnr")
        print(f"\n{'device':<6} {'metric':<10} {'part':<18} {'CPU s/Mpx':>10} {'wall s/Mpx':>11} {'x PSNR (wall)':>14}")
        for device, name, level, cpu, wall in results:
            part = "per item" if level == "item" else "features per item"
            print(f"{device:<6} {name:<10} {part:<18} {cpu:>10.4f} {wall:>11.4f} {wall / psnr[4]:>14.1f}")

        # The per-rate-point reduction, on random features of the real dimension.
        rng = np.random.default_rng(0)
        features = {"real": rng.normal(size=(args.patches, 2048)).astype(np.float32),
                    "fake": rng.normal(0.1, 1.0, size=(args.patches, 2048)).astype(np.float32)}
        print(f"\nper rate point, {args.patches} patches per side (CPU):")
        for name in ("fid", "kid"):
            metric = build_metrics([name], {name: {**options[name], **({"min_patches": 2} if name == "fid" else {})}},
                                   device="cpu")[0]
            cpu, wall = timed(lambda m=metric: m.from_features(features), 1, "cpu")
            print(f"  {name}: {wall:.2f} s wall, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
