"""What GLC costs on a CPU node: encode and decode time of the released configuration.

The authors' checkpoint is not needed to measure cost (time depends on the architecture and the
image size, not on the values of the weights), so the released configuration (``glc-image``,
108.8 M parameters at inference) is built with random weights and saved in the release layout;
the codec then runs on it exactly as on the real file. The bpp of random weights means nothing
and is not printed.

For each analysis thread count (1 and all cores) and image size (256x256, and 768x512 with ``--full``):

* ``ulbc`` encode and decode of one image in this process, median of ``--runs`` after a warm-up,
  with the stages apart: analysis (VQ-VAE encoder + latent coder; on ``threads``), the entropy side
  (hyper prior, four passes, range coder) and the synthesis (latent decoder + VQ-VAE generator),
  both always on one thread on the CPU, so that decoded pixels do not depend on the core count;
* peak resident memory of the process;
* hevc-intra (x265 through ffmpeg) and jpeg on the same image in the same run, for scale.

Example:
    .venv/bin/python benchmarks/glc_cost.py --full --kodak ../shared/data/kodak
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from decode_speed import median_time as median_seconds  # noqa: E402 - this script's folder, on sys.path


def test_image(kodak: Path | None, height: int, width: int) -> tuple[np.ndarray, str]:
    from ulbc.imageio import load_rgb

    if kodak is not None and (kodak / "kodim23.png").is_file():
        image, source = np.asarray(load_rgb(kodak / "kodim23.png")), "kodim23"
    else:
        from skimage.data import astronaut

        image, source = astronaut(), "scikit-image astronaut"
    if image.shape[0] < height or image.shape[1] < width:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((max(width, image.shape[1]), max(height, image.shape[0]))))
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width]), source


def glc_stages(codec, image: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Seconds of each stage (median of ``runs``), the codec's own functions called one by one."""
    import torch

    from ulbc.codecs import glc as glc_codec
    from ulbc.compressai_runtime import torch_threads
    from ulbc.glc import coding
    from ulbc.glc.config import CONFIGS

    cfg = CONFIGS["glc-image"]
    model = next(iter(glc_codec._models.values()))
    x = coding.image_to_input([image], cfg.pad_multiple)
    with torch.no_grad():
        with torch_threads(threads):
            y = model.net.analysis(x, 0)
            analysis = median_seconds(lambda: model.net.analysis(x, 0), runs)
        with torch_threads(1):
            coded = coding.encode_latent(model.net, y)
            entropy_encode = median_seconds(lambda: coding.encode_latent(model.net, y), runs)
            shape = tuple(y.shape[2:])
            entropy_decode = median_seconds(lambda: coding.decode_latent(
                model.net, coded.z, coded.y, coded.symbol_bound, coded.checksum, shape), runs)
        with torch_threads(1):  # as the codec runs it on the CPU (its pixels do not depend on the core count)
            synthesis = median_seconds(lambda: model.net.synthesis(coded.y_hat, 0), runs)
    return {"analysis": analysis, "entropy encode": entropy_encode, "entropy decode": entropy_decode,
            "synthesis": synthesis}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", type=Path, help="Kodak folder (kodim23.png is used; default: a scikit-image photo)")
    parser.add_argument("--full", action="store_true", help="also a 768x512 (Kodak-size) image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where the random checkpoint goes (default: a temp folder)")
    args = parser.parse_args()

    import torch

    from ulbc.codecs import decode_bitstream, get_codec
    from ulbc.glc.config import CONFIGS
    from ulbc.glc.model import GLCImage

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ulbc-glc-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "glc-image-random.pth.tar"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        model = GLCImage(CONFIGS["glc-image"])
        torch.save({"state_dict": model.state_dict()}, checkpoint)
        del model
    parameters = sum(t.numel() for t in torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
                     .values())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sizes = [(256, 256)] + ([(512, 768)] if args.full else [])
    print(f"GLC released configuration, random weights: {parameters / 1e6:.1f} M parameters at inference; "
          f"torch {torch.__version__}, {cores} core(s); median of {args.runs} run(s)")
    header = (f"{'image':>9} {'threads':>7} {'encode s':>9} {'decode s':>9} {'analysis':>9} {'entropy enc':>11} "
              f"{'entropy dec':>11} {'synthesis':>9} {'hevc enc/dec s':>15} {'jpeg enc/dec s':>15} {'decode/hevc':>11}")
    print(header)
    for height, width in sizes:
        image, source = test_image(args.kodak, height, width)
        hevc, jpeg = get_codec("hevc-intra"), get_codec("jpeg")
        anchors = {}
        for name, anchor, rate in (("hevc", hevc, hevc.default_rates[0]), ("jpeg", jpeg, 10)):
            data = anchor.encode(image, rate)
            anchors[name] = (median_seconds(lambda: anchor.encode(image, rate), args.runs),
                             median_seconds(lambda: decode_bitstream(data), args.runs))
        for threads in sorted({1, cores}):
            codec = get_codec("glc", checkpoint=str(checkpoint), threads=threads)
            data = codec.encode(image, 0)  # warm-up: loads the model
            decode_bitstream(data)
            encode_s = median_seconds(lambda: codec.encode(image, 0), args.runs)
            decode_s = median_seconds(lambda: decode_bitstream(data), args.runs)
            stages = glc_stages(codec, image, threads, args.runs)
            print(f"{width}x{height:<5} {threads:>7} {encode_s:>9.2f} {decode_s:>9.2f} {stages['analysis']:>9.2f} "
                  f"{stages['entropy encode']:>11.3f} {stages['entropy decode']:>11.3f} {stages['synthesis']:>9.2f} "
                  f"{anchors['hevc'][0]:>7.3f}/{anchors['hevc'][1]:<7.3f} {anchors['jpeg'][0]:>7.4f}/{anchors['jpeg'][1]:<7.4f} "
                  f"{decode_s / anchors['hevc'][1]:>10.0f}x")
        print(f"  ({source}; GLC encode includes its own synthesis, for the pixel digest the decoder checks)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
