"""Video INR codecs: ``nerv`` (dense NeRV trained per clip) and ``supermask-nerv`` (nested supermasks
with learned scales over a frozen random NeRV, after Choi, Kang & Oh, ICML 2023).

Both fit one network per clip that maps a frame index to the frame (:mod:`ulbc.nerv`), then write
the network itself as the bitstream; there are no latents. The rate knob is ``width``, the channel
count of the NeRV's base feature map (the stem width and every stage's channels follow it), i.e. the
network size, as in the NeRV papers' RD curves. At equal width the supermask network costs far fewer
bits (about H(levels) ≤ log2(K+1) bits per weight instead of ~5–7), so its grid is wider.

``nerv`` after training: global magnitude pruning to ``sparsity`` with ``finetune_iterations`` of
fine-tuning, ``quant_bits`` symmetric per-tensor quantisation, categorical range coding of the
integers (zeros = pruned positions). ``supermask-nerv`` after training: masks frozen,
``finetune_iterations`` on the scales and biases, levels range-coded, scales as float16, biases
(trained, zero-initialised) quantised to ``quant_bits`` and range-coded like ``nerv``'s.

The defaults are CPU-sized: an 8-frame 160x120 clip trains in 0.5–2 minutes of one core (3 000
iterations of 2 frames). Paper-like settings for a GPU (UVG 1080p, 600 frames):
``base_size 9`` (strides 5,3,2,2,2 on a 9x16 base, NeRV's own), ``reduction 2``, ``min_width 32``,
``stem_dim 512``, ``head_kernel 1``, ``pe_levels 80``, ``lr 5e-4``, ``batch_frames 1`` and
``iterations`` = 1 200 epochs x 600 frames. Widths 26 / 58 / 112 (NeRV-S/M/L's base channels) then
give 2.4 / 5.0 / 10.0 M parameters (NeRV reports 3.2 / 6.3 / 12.6 M: its first stage also
multiplies the channels by an "expansion" factor, which is not implemented here), i.e. 0.015–0.065
bpp at 8 bits before entropy coding; the decoder then costs about 12 k MAC per pixel.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, EncodeError
from .base import Option, PayloadResult, VideoCodec, torch_and_constriction_missing, training_budget_tags
from . import register_codec

#: Values of :data:`ulbc.nerv.model.WEIGHT_INITS`, :data:`ulbc.nerv.arch.HEAD_KERNELS` and
#: :data:`ulbc.nerv.stream.MAX_LEVELS`, written out so the registry loads without torch (a test keeps
#: them equal).
WEIGHT_INIT_NAMES = ("signed", "uniform")
HEAD_KERNEL_SIZES = (1, 3)
MAX_DENSITY_LEVELS = 8

_COMMON_OPTIONS: dict[str, Option] = {
    "iterations": Option(3000, "int", low=1, help="Adam steps of the main training"),
    "batch_frames": Option(2, "int", low=1, help="frames per step"),
    "lr": Option(5e-3, "float", low=0, high=10, low_open=True, help="learning rate"),
    "warmup": Option(0.1, "float", low=0, high=1, help="fraction of the iterations with a rising learning rate"),
    "eval_every": Option(50, "int", low=1, help="steps between full-clip evaluations for the best checkpoint"),
    "finetune_iterations": Option(200, "int", low=0,
                                  help="after pruning (nerv) / after freezing the masks (supermask-nerv)"),
    "quant_bits": Option(8, "int", low=2, high=16,
                         help="per-tensor symmetric quantisation of the weights (nerv) / biases (both)"),
    "pe_levels": Option(80, "int", low=1, high=256, help="frequencies of the frame-index positional encoding"),
    "pe_base": Option(1.25, "float", low=1, high=16, low_open=True, help="ratio between successive frequencies"),
    "stem_dim": Option("auto", "int", low=1, high=1 << 14, keywords=("auto",),
                       help="hidden width of the stem MLP (auto: 2 * width)"),
    "base_size": Option(3, "int", low=1, help="the base feature map's shorter side is at least this (picks the strides)"),
    # NeRV uses 2; at CPU sizes a constant width measured +1.4 dB (nerv) / +1.6 dB (supermask-nerv)
    # at equal bpp over 1.5.
    "reduction": Option(1.0, "float", low=1, high=16, help="channels shrink by this factor per stage"),
    "min_width": Option(4, "int", low=1, help="channels never shrink below this"),
    "head_kernel": Option(3, "choice", choices=HEAD_KERNEL_SIZES, help="kernel of the output convolution"),
    "threads": Option(1, "int", low=0, help="torch CPU threads per encode job (one per job scales best; 0: torch's default)"),
    "verify": Option(True, "bool", help="check the file's tensors render exactly the frames the encoder rendered"),
    "progress": Option(True, "bool", help="show a progress bar"),
}


class _NeRVCodec(VideoCodec):
    kind: ClassVar[str]
    rate_param = "width"
    rate_range = (1, 1024)
    integer_rates = True  # a whole number of channels
    uses_gpu = True
    min_size = (1, 1)  # tiny frames get a stage-free network (stem straight to the frame)
    # Paper-sized clips (hundreds of 1080p frames) train for hours on a GPU and hold several GB.
    job_mem_mb = 8000
    job_runtime = 24 * 60
    decode_bytes_per_pixel = 0  # frames render one at a time; nerv.stream checks a frame's feature maps

    @classmethod
    def availability(cls) -> str | None:
        return torch_and_constriction_missing()

    def label_tags(self):
        return training_budget_tags(self.options["iterations"])

    def version(self) -> str:
        import torch

        from .. import __version__
        from ..nerv.stream import FORMAT_VERSION

        return f"ulbc {__version__} {self.kind} format {FORMAT_VERSION} / torch {torch.__version__}"

    def architecture(self, height: int, width: int, channels: int):
        from ..nerv.arch import build_architecture

        o = self.options
        stem_dim = 2 * channels if o["stem_dim"] == "auto" else o["stem_dim"]
        return build_architecture(height, width, channels=channels, stem_dim=stem_dim,
                                  pe_levels=o["pe_levels"], pe_base=float(o["pe_base"]), base_size=o["base_size"],
                                  reduction=float(o["reduction"]), min_width=o["min_width"],
                                  head_kernel=o["head_kernel"])

    def train_settings(self, iterations: int, lr_scale: float = 1.0):
        from ..nerv.training import TrainSettings

        o = self.options
        return TrainSettings(iterations=iterations, lr=float(o["lr"]) * lr_scale,
                             score_lr=float(o.get("score_lr", 0.0)), batch_frames=o["batch_frames"],
                             warmup=float(o["warmup"]), eval_every=o["eval_every"])

    # -- coding --------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, arch, seed: int):
        """The untrained model (:class:`~ulbc.nerv.model.DenseNeRV` or ``SupermaskNeRV``)."""

    @abstractmethod
    def compress(self, model, arch, pe, target, seed: int) -> tuple[bytes, bytes, list, list, dict[str, Any]]:
        """Post-training steps and writing: (params, payload, the weights and biases the encoder
        expects the decoder to rebuild, info entries)."""

    def encode_clip_payload(self, frames: np.ndarray, rate: float, *, device: str, seed: int) -> PayloadResult:
        import torch

        from ..nerv import stream
        from ..nerv.model import frame_positions, positional_encoding
        from ..nerv.training import train

        o = self.options
        if o["threads"] and torch.device(device).type == "cpu":
            torch.set_num_threads(int(o["threads"]))
        n_frames, height, width = frames.shape[:3]
        arch = self.architecture(height, width, int(rate))
        dev = torch.device(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        target = torch.from_numpy(frames).to(dev).permute(0, 3, 1, 2).to(torch.float32) / 255
        pe = positional_encoding(frame_positions(n_frames), arch.pe_levels, arch.pe_base).to(dev)
        model = self.build_model(arch, seed).to(dev)
        outcome = train(model, pe, target, self.train_settings(o["iterations"]), seed=seed,
                        progress=o["progress"], description=f"{self.name} width={int(rate)}")
        t_compress = time.perf_counter()
        params, payload, weights, biases, extra = self.compress(model, arch, pe, target, seed)
        t_decode = time.perf_counter()
        # The reconstruction is a decode of the written bytes, so it is what any decoder here produces.
        recon = stream.decode(self.kind, params, payload, width, height, n_frames, dev)
        if o["verify"] and not np.array_equal(stream.render_frames(arch, weights, biases, n_frames, dev), recon):
            raise EncodeError(f"{self.name}: the written bitstream does not decode to the encoder's frames")
        mse = float(np.mean((recon.astype(np.float64) - frames) ** 2))
        info = {
            "iterations": outcome.iterations + extra.pop("finetune_iterations"),
            "train_s": round(t_compress - start, 3),  # main training
            "compress_s": round(t_decode - t_compress, 3),  # fine-tuning, quantisation, entropy coding
            "decode_s": round(time.perf_counter() - t_decode, 3),  # decoding the bytes (and the check)
            "cpu_s": round(time.process_time() - cpu_start, 3),
            "seed_used": int(seed) & 0xFFFFFFFF,
            "nan_restores": outcome.nan_restores + extra.pop("nan_restores", 0),
            "initial_psnr": _psnr(outcome.initial_mse),
            "float_psnr": _psnr(outcome.best_mse),
            "decoded_psnr": round(10 * math.log10(255**2 / max(mse, 1e-12)), 4),
            "strides": list(arch.strides),
            "channels": list(arch.channels),
            "n_weights": arch.n_weights,
            "macs_per_pixel": round(arch.macs_per_pixel(), 1),
            **extra,
        }
        return PayloadResult(params, payload, info, recon)

    def decode_clip_payload(self, params, payload, width, height, n_frames, *, device):
        from ..nerv import stream

        return stream.decode(self.kind, params, payload, width, height, n_frames, device)

    def bitstream_stats(self, params, payload, width, height):
        """Rate split and decoder cost. ``params`` may carry the frame count in front (the
        container's parameter block, as the runner passes it) or not."""
        from ..nerv import stream

        own = stream.strip_frame_count(self.kind, params)
        header = stream.read_header(self.kind, own, width, height)
        parts = stream.layout(self.kind, own, payload, width, height)
        return {
            "bits_nn": 8.0 * parts.nn,
            "bits_mask": 8.0 * parts.mask,
            "bits_latent": 0.0,
            "macs_per_pixel": header.arch.macs_per_pixel(),
        }


def _psnr(mse: float) -> float:
    return round(-10 * math.log10(max(mse, 1e-12)), 4)


@register_codec
class NeRVCodec(_NeRVCodec):
    name = "nerv"
    codec_id = 60
    kind = "nerv"
    description = "NeRV (NeurIPS 2021): per-clip trained frame-index network, pruned, 8-bit, range-coded"
    # Lowest rate first: about 0.2 to 1.1 bpp on an 8-frame 160x120 clip (bits scale with 1/frames).
    default_rates = (3, 4, 5, 6, 8)
    # Pruning 30 % cost 1.2 dB after fine-tuning on the CPU-sized networks, 10 % nothing measurable.
    option_specs = {
        **_COMMON_OPTIONS,
        "lr": dataclasses.replace(_COMMON_OPTIONS["lr"], default=2e-2),  # measured best for the dense network
        "sparsity": Option(0.1, "float", low=0, high=0.99, help="share of the weights pruned by magnitude"),
    }

    def build_model(self, arch, seed):
        from ..nerv.model import DenseNeRV

        return DenseNeRV(arch, seed)

    def compress(self, model, arch, pe, target, seed):
        from ..nerv import entropy, stream
        from ..nerv.training import train

        o = self.options
        finetune = {"iterations": 0, "nan_restores": 0}
        if o["sparsity"] > 0:
            model.prune(float(o["sparsity"]))
            if o["finetune_iterations"]:
                outcome = train(model, pe, target, self.train_settings(o["finetune_iterations"], 0.2), seed=seed + 1,
                                progress=o["progress"], description=f"{self.name} fine-tune")
                finetune = {"iterations": outcome.iterations, "nan_restores": outcome.nan_restores}
        payload, weights, biases, ints = stream.encode_dense(arch, *model.effective(), o["quant_bits"])
        params = stream.write_header(stream.Header("nerv", arch))
        n_zero = sum(int(np.count_nonzero(a == 0)) for a in ints[0::2])
        return params, payload, weights, biases, {
            "finetune_iterations": finetune["iterations"],
            "nan_restores": finetune["nan_restores"],
            "sparsity_used": round(n_zero / arch.n_weights, 4),
            "estimated_nn_bits": round(entropy.empirical_bits(ints), 1),
            "estimated_mask_bits": 0.0,
            # What the NeRV README counts: kept weights and all biases at quant_bits each.
            "paper_style_bits": (arch.n_weights - n_zero + arch.n_biases) * o["quant_bits"],
            "bits_nn": 8 * len(payload),
            "bits_mask": 0,
        }


@register_codec
class SupermaskNeRVCodec(_NeRVCodec):
    name = "supermask-nerv"
    codec_id = 61
    kind = "supermask"
    description = "Random NeRV with nested supermasks and learned scales (Choi, Kang & Oh, ICML 2023)"
    # Lowest rate first: about 0.17 to 1.1 bpp on an 8-frame 160x120 clip with the default densities.
    default_rates = (6, 8, 10, 12, 16)
    option_specs = {
        **_COMMON_OPTIONS,
        "densities": Option([0.5, 0.25, 0.1], "floats", low=0, high=1, low_open=True, length=(1, MAX_DENSITY_LEVELS),
                            help="densities of the nested masks, strictly decreasing"),
        "score_lr": Option(0.05, "float", low=0, high=100, low_open=True, help="learning rate of the mask scores"),
        "weight_init": Option("signed", "choice", choices=WEIGHT_INIT_NAMES, help="the frozen random weights"),
        "train_biases": Option(True, "bool", help="train and transmit the biases"),
        "alpha_gain": Option(1.0, "float", low=0, high=100, low_open=True, help="factor on the initial per-layer scales"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.availability():
            return  # the check below needs torch; using the codec is refused for want of it anyway
        # Across entries (the spec checks each one): distinct after rounding to the stored 16 bits.
        codes = self.density_codes()
        if not (all(a > b for a, b in zip(codes, codes[1:])) and codes[-1] > 0):
            raise ConfigError(f"codec {self.name!r}: densities must be strictly decreasing in (0, 1], "
                              f"got {self.options['densities']}")

    def density_codes(self) -> tuple[int, ...]:
        from ..nerv.model import DENSITY_ONE

        return tuple(int(round(float(d) * DENSITY_ONE)) for d in self.options["densities"])

    def build_model(self, arch, seed):
        from ..nerv.model import SupermaskNeRV

        o = self.options
        return SupermaskNeRV(arch, seed, self.density_codes(), o["weight_init"], o["train_biases"],
                             float(o["alpha_gain"]))

    def compress(self, model, arch, pe, target, seed):
        from ..nerv import entropy, stream
        from ..nerv.training import train

        o = self.options
        model.freeze_levels()
        finetune = {"iterations": 0, "nan_restores": 0}
        if o["finetune_iterations"]:
            outcome = train(model, pe, target, self.train_settings(o["finetune_iterations"], 0.2), seed=seed + 1,
                            progress=o["progress"], description=f"{self.name} fine-tune")
            finetune = {"iterations": outcome.iterations, "nan_restores": outcome.nan_restores}
        header = stream.Header("supermask", arch, model.seed, model.init, model.density_codes, model.train_biases)
        levels = [v.cpu().numpy().reshape(-1) for v in model.levels()]
        alphas = model.alphas.detach().cpu().numpy().astype(np.float16)
        bias_ints, bias_steps = (stream.quantize_biases(model.biases, o["quant_bits"]) if model.biases is not None
                                 else (None, None))
        payload, split = stream.encode_supermask(header, levels, alphas, bias_ints, bias_steps)
        params = stream.write_header(header)
        # What the encoder itself says the decoder will use (the verify step compares the two renders).
        weights = stream.supermask_weights(header, levels, alphas.astype(np.float32))
        biases = ([stream.dequantize(q, s, q.shape) for q, s in zip(bias_ints, bias_steps)] if bias_ints is not None
                  else [None] * len(arch.layers))
        return params, payload, weights, biases, {
            "finetune_iterations": finetune["iterations"],
            "nan_restores": finetune["nan_restores"],
            "estimated_mask_bits": round(entropy.empirical_bits(levels), 1),
            "estimated_nn_bits": round(16 * alphas.size + entropy.empirical_bits(bias_ints or []), 1),
            "bits_mask": 8 * split["mask"],
            "bits_nn": 8 * split["nn"],
            "densities": [float(d) for d in o["densities"]],
        }
