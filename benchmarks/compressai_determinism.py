"""Do CompressAI's models code and decode identically across thread counts and devices, in ulbc
and in CompressAI's own pipeline?

For each architecture, a model at the zoo's real channel counts (quality 1's, or ``--quality``),
random-initialised and updated (the zoo's weights cannot be downloaded here; the arithmetic has
the real size), codes one photo. Columns:

- ``encode``: ulbc's bytes with the analysis transform on 1 and on N threads (and on CUDA).
- ``decode``: ``ulbc decode --threads 1`` and ``--threads N`` in fresh processes, PNGs compared.
- ``synthesis``: 8-bit pixels of the synthesis transform alone on 1 and on N threads (what ulbc's
  one-thread CPU decoder avoids).
- ``compressai``: CompressAI's own ``decompress`` on 1 and on N threads, entropy side included,
  8-bit pixels compared.

Usage: python benchmarks/compressai_determinism.py [--image PATH] [--threads 2] [--quality Q]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARCHITECTURES = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor",
                 "cheng2020-attn")


def default_image() -> Path:
    kodak = REPO.parent / "shared" / "data" / "kodak" / "kodim01.png"
    if kodak.is_file():
        return kodak
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def real_size_model(architecture: str, quality: int, folder: Path) -> Path:
    import torch
    from compressai.zoo.image import cfgs

    from ulbc.compressai_runtime import _model_class

    torch.manual_seed(0)
    net = _model_class(architecture)(*cfgs[architecture][quality])
    net.update(force=True)
    path = folder / f"{architecture}-q{quality}.pth.tar"
    torch.save(net.state_dict(), path)
    return path


def ulbc_decode(stream: Path, out: Path, *, threads: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "ulbc", "decode", "--threads", str(threads), str(stream), str(out)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode == 0:
        return "ok"
    return "checksum refused" if "checksum" in proc.stderr else f"failed: {proc.stderr.strip()[-200:]}"


def pixels(x_hat) -> np.ndarray:
    import torch

    return (x_hat * 255).clamp(0, 255).round().to(torch.uint8).numpy()


def differing(a: np.ndarray, b: np.ndarray) -> str:
    count = int((a != b).sum())
    return "identical" if count == 0 else f"{count} of {a.size} values differ (max {int(np.abs(a.astype(int) - b).max())})"


def compare_threads(architecture: str, checkpoint: Path, image: np.ndarray, many: int) -> tuple[str, str]:
    """(synthesis alone, CompressAI's whole decompress): 8-bit output on 1 thread against ``many``."""
    import torch
    import torch.nn.functional as F
    from compressai.ops import compute_padding

    from ulbc.compressai_runtime import _model_class

    net = _model_class(architecture).from_state_dict(torch.load(checkpoint, weights_only=True)).eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    pad, _ = compute_padding(x.shape[2], x.shape[3], min_div=64)
    x = F.pad(x, pad)
    default = torch.get_num_threads()
    results = {}
    with torch.no_grad():
        out = net.compress(x)
        for count in (1, many):
            torch.set_num_threads(count)
            results[count] = pixels(net.decompress(out["strings"], out["shape"])["x_hat"])
            results[("g_s", count)] = pixels(net.g_s(net.g_a(x).round()).clamp(0, 1))
        torch.set_num_threads(default)
    return differing(results[("g_s", 1)], results[("g_s", many)]), differing(results[1], results[many])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=default_image())
    parser.add_argument("--threads", type=int, default=2, help="the many-thread count compared with 1")
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    args = parser.parse_args()
    import torch

    from ulbc.codecs import get_codec
    from ulbc.imageio import load_rgb

    many = args.threads
    image = load_rgb(args.image)
    cuda = torch.cuda.is_available()
    print(f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, torch {torch.__version__}, "
          f"threads 1 vs {many}, CUDA: {torch.cuda.get_device_name(0) if cuda else 'none'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for architecture in args.architectures.split(","):
            checkpoint = real_size_model(architecture, args.quality, folder)
            streams = {}
            for label, device, threads in [("1", "cpu", 1), (str(many), "cpu", many)] + ([("cuda", "cuda", 1)] if cuda else []):
                codec = get_codec("compressai", arch=architecture, checkpoint=str(checkpoint), threads=threads)
                streams[label] = codec.encode(image, args.quality, device=device)
            encode = "identical" if len(set(streams.values())) == 1 else "differ: " + ", ".join(
                f"{k} {len(v)} B" for k, v in streams.items())
            stream = folder / f"{architecture}.ulb"
            stream.write_bytes(streams["1"])
            decodes = {}
            for count in (1, many):
                png = folder / f"{architecture}-t{count}.png"
                status = ulbc_decode(stream, png, threads=count)
                decodes[count] = png.read_bytes() if status == "ok" else status
            decode = "identical" if decodes[1] == decodes[many] else f"differ ({decodes[1]!r:.40} / {decodes[many]!r:.40})"
            extra = {}
            if cuda:  # a file encoded with g_a on the GPU, decoded on the CPU
                stream.write_bytes(streams["cuda"])
                extra["cuda-encoded file"] = ulbc_decode(stream, folder / "cuda.png", threads=1)
            synthesis, whole = compare_threads(architecture, checkpoint, image, many)
            rows.append({"architecture": architecture, "bytes": len(streams["1"]), "encode": encode, "decode": decode,
                         **extra, "synthesis": synthesis, "compressai": whole})
            print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
