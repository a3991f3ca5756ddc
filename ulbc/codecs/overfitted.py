"""Overfitted image codecs: ``lottery`` (LotteryCodec, ICML 2025) and ``coolchic`` (Cool-chic style).

Both optimise, per image, latent grids, an auto-regressive entropy model and a decoder network, then
quantise the networks, range-code the latents and write a real bitstream (:mod:`ulbc.overfit`).
They differ only in the synthesis: ``coolchic`` trains and transmits it; ``lottery`` transmits a
binary mask over a random network that the decoder regenerates from a seed, plus a small trained
modulation network. The rate knob is λ of the loss ``MSE + λ · bits / pixels``.

The defaults are CPU-sized (about 1 000 iterations); the papers train 10^4–10^5 iterations per
image on a GPU (README: "Overfitted codecs").
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import ConfigError, EncodeError
from .base import Codec, PayloadResult, torch_and_constriction_missing
from . import register_codec

_COMMON_OPTIONS: dict[str, Any] = {
    "iterations": 1000,  # optimisation budget per image (warm-up candidates count)
    "candidates": 3,  # warm-up initialisations per image; the best survives
    "warmup_iterations": 100,
    "final_iterations": 200,  # fine-tuning with the latents frozen at their rounded values
    "lr": 1e-2,
    "n_grids": 7,
    "arm_context": 16,
    "arm_hidden": 2,
    "arm_coarse": 0,  # ARM context values from the next coarser grid (0, 1, 5 or 9)
    "batch_size": "auto",  # same-size images optimised together, one model each (auto: 8 on a GPU, 1 on CPU)
    "threads": 1,  # torch CPU threads per encode job (one per job scales best)
    "verify": True,  # decode the written bitstream and check it gives the encoder's image
    "progress": True,
}


class _OverfittedCodec(Codec):
    kind: ClassVar[str]
    rate_param = "lambda"
    # λ from high to low: lowest rate first (about 0.08 to 1.4 bpp on Kodak at paper budgets).
    default_rates = (2e-2, 4e-3, 1e-3, 4e-4, 1e-4)
    rate_range = (1e-6, 1.0)
    uses_gpu = True
    min_size = (1, 1)
    # A 768x512 image with three warm-up candidates peaks near 3.3 GB on the CPU; training takes
    # minutes per image, so a shard of many items needs hours (keep items_per_job small).
    job_mem_mb = 8000
    job_runtime = 24 * 60

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        batch = self.options["batch_size"]
        if batch != "auto" and (not isinstance(batch, int) or batch < 1):
            raise ConfigError(f"codec {self.name!r}: option batch_size must be 'auto' or a positive integer")
        for key in ("iterations", "candidates", "threads", "n_grids", "arm_context"):
            if not isinstance(self.options[key], int) or self.options[key] < (0 if key == "threads" else 1):
                raise ConfigError(f"codec {self.name!r}: option {key} must be a positive integer")
        self.architecture()  # validates the architecture options
        self.train_config()

    @classmethod
    def availability(cls) -> str | None:
        return torch_and_constriction_missing()

    def version(self) -> str:
        import torch

        from .. import __version__
        from ..overfit.stream import FORMAT_VERSION

        return f"ulbc {__version__} {self.kind} format {FORMAT_VERSION} / torch {torch.__version__}"

    def batch_size(self, device: str = "cpu") -> int:
        batch = self.options["batch_size"]
        if batch == "auto":
            # On a CPU one model at a time is fastest (plain GEMMs); a GPU needs many to be busy.
            return 8 if str(device).startswith("cuda") else 1
        return int(batch)

    # -- configuration -----------------------------------------------------------------------------
    def architecture(self):
        raise NotImplementedError

    def keep_ratio(self) -> float:
        return 1.0

    def train_config(self):
        from ..overfit.training import TrainConfig

        o = self.options
        extra = {"score_lr": float(o["score_lr"])} if "score_lr" in o else {}
        return TrainConfig(iterations=o["iterations"], candidates=o["candidates"],
                           warmup_iterations=o["warmup_iterations"], final_iterations=o["final_iterations"],
                           lr=float(o["lr"]), **extra)

    # -- coding --------------------------------------------------------------------------------------
    def encode_payload(self, image, rate, *, device, seed):
        result = self.encode_payload_batch([image], rate, device=device, seeds=[seed])[0]
        return result.params, result.payload

    def encode_payload_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str,
                             seeds: Sequence[int]) -> list[PayloadResult]:
        import torch

        from ..overfit import stream
        from ..overfit.model import OverfittedModel, evaluate_hard, latent_integers, model_slice, search_network_steps
        from ..overfit.training import train

        if self.options["threads"] and str(device) == "cpu":
            torch.set_num_threads(int(self.options["threads"]))
        arch, keep = self.architecture(), self.keep_ratio()
        height, width = images[0].shape[:2]
        dev = torch.device(device)
        target = torch.from_numpy(np.stack(images)).to(dev, torch.float32) / 255.0
        start, cpu_start = time.perf_counter(), time.process_time()
        trained = train(lambda s: OverfittedModel(arch, height, width, s, keep), target, list(seeds), rate,
                        self.train_config(), dev, progress=bool(self.options["progress"]),
                        description=f"{self.name} λ={rate:g}")
        model = trained.model
        t_quant, cpu_quant = time.perf_counter(), time.process_time()
        quant = search_network_steps(model, target, rate)
        groups = model.quant_groups()
        mse_float, bits_float = evaluate_hard(model, target)
        masks = [m.detach().cpu().numpy().astype(bool) for m in model.synthesis.masks()] if arch.kind == "lottery" else None
        t_write = time.perf_counter()
        results = []
        for b in range(model.batch):
            header, payload, decoded = stream.encode(
                arch, height, width, model.seeds[b], model_slice(model, b), quant.steps_for(groups, b),
                latent_integers(model, b), [m[b] for m in masks] if masks is not None else None)
            recon = stream.render(decoded, height, width, device)
            if self.options["verify"]:
                check = stream.decode(self.kind, header, payload, width, height, "cpu")
                if not np.array_equal(check, recon):
                    raise EncodeError(f"{self.name}: the written bitstream does not decode to the encoder's image")
            results.append(PayloadResult(header, payload, {
                "iterations": trained.iterations,
                "train_s": round((t_quant - start) / model.batch, 3),
                "train_cpu_s": round((cpu_quant - cpu_start) / model.batch, 3),
                "quantize_s": round((t_write - t_quant) / model.batch, 3),
                "batch": model.batch,
                "seed_used": model.seeds[b],
                "best_rd_loss": trained.best_loss[b],
                "nan_restores": trained.nan_restores,
                "float_psnr": float(-10 * torch.log10(mse_float[b].clamp_min(1e-12))),
                "estimated_latent_bits": float(bits_float[b]),
                "estimated_nn_bits": quant.nn_bits[b],
                "step_exponents": {g: e[b] for g, e in quant.exponents.items()},
            }, recon))
        write_s = (time.perf_counter() - t_write) / model.batch
        cpu_s = (time.process_time() - cpu_start) / model.batch
        for r in results:
            r.info.update(write_s=round(write_s, 3), cpu_s=round(cpu_s, 3))
        return results

    def decode_payload(self, params, payload, width, height, *, device):
        from ..overfit import stream

        return stream.decode(self.kind, params, payload, width, height, device)

    def bitstream_stats(self, params, payload, width, height):
        from ..overfit import stream
        from ..overfit.model import OverfittedModel

        arch, seed, *_ = stream.read_header(self.kind, params)
        parts = stream.layout(self.kind, params, payload)
        model = OverfittedModel(arch, height, width, [seed])
        return {
            "bits_nn": 8.0 * parts.nn,
            "bits_mask": 8.0 * parts.mask,
            "bits_latent": 8.0 * parts.latent,
            "macs_per_pixel": model.macs_per_pixel(stream.kept_weights(self.kind, params, payload)),
        }


@register_codec
class CoolChicCodec(_OverfittedCodec):
    name = "coolchic"
    codec_id = 40
    kind = "coolchic"
    description = "Cool-chic-style overfitted codec: trained per-image synthesis, ARM, latent pyramid"
    option_defaults = {**_COMMON_OPTIONS, "preset": "hop", "synthesis": ""}

    def architecture(self):
        from ..overfit.model import COOLCHIC_PRESETS, Architecture

        o = self.options
        if o["preset"] not in COOLCHIC_PRESETS:
            raise ConfigError(f"codec 'coolchic': preset must be one of {sorted(COOLCHIC_PRESETS)}, got {o['preset']!r}")
        layers, _ = COOLCHIC_PRESETS[o["preset"]]
        return Architecture("coolchic", n_grids=o["n_grids"], arm_context=o["arm_context"],
                            arm_hidden=o["arm_hidden"], arm_coarse=o["arm_coarse"],
                            synthesis=o["synthesis"] or layers)


@register_codec
class LotteryCodec(_OverfittedCodec):
    name = "lottery"
    codec_id = 41
    kind = "lottery"
    description = "LotteryCodec: binary mask over a seeded random network, modulated by latent grids"
    # keep_ratio 0.9 rather than the paper's 0.7: the mask then costs about half as many bits
    # (n·H_b(0.1) vs n·H_b(0.3)), which matters on small images and short budgets. What the mask
    # gains over the all-ones network: benchmarks/lottery_mask_ablation.py (README, "Overfitted codecs").
    option_defaults = {**_COMMON_OPTIONS, "keep_ratio": 0.9, "mod_channels": 48, "hidden": [32, 24, 16],
                       "score_lr": 0.05}

    def architecture(self):
        from ..overfit.model import Architecture

        o = self.options
        hidden = o["hidden"]
        if not isinstance(hidden, (list, tuple)) or len(hidden) != 3:
            raise ConfigError("codec 'lottery': option hidden must be three layer widths")
        return Architecture("lottery", n_grids=o["n_grids"], arm_context=o["arm_context"], arm_hidden=o["arm_hidden"],
                            arm_coarse=o["arm_coarse"],
                            mod_channels=int(o["mod_channels"]), hidden=tuple(int(h) for h in hidden))

    def keep_ratio(self) -> float:
        ratio = float(self.options["keep_ratio"])
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"codec 'lottery': keep_ratio must be in (0, 1], got {ratio}")
        return ratio
