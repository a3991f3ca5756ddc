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

import importlib.util
import os
import time
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import ConfigError, EncodeError
from ..overfit import DECODER_ENV, DECODERS
from .base import Codec, Option, PayloadResult, training_budget_tags
from . import register_codec


def selected_decoder() -> str:
    """The decoder ``ULBC_OVERFIT_DECODER`` picks (``compiled`` when unset)."""
    choice = os.environ.get(DECODER_ENV, "compiled").strip().lower() or "compiled"
    if choice not in DECODERS:
        raise ConfigError(f"{DECODER_ENV}={choice!r}: expected one of {', '.join(DECODERS)}")
    return choice


#: Cool-chic synthesis presets; the names of :data:`ulbc.overfit.model.COOLCHIC_PRESETS` (a test
#: keeps the two equal), written out so the registry loads without torch.
COOLCHIC_PRESET_NAMES = ("hop", "lop", "mop")
#: ImageNet classifiers the task term may use: the names of :data:`ulbc.tasknets.classifiers.CLASSIFIERS`
#: (a test keeps the two equal), written out so the registry loads without torch.
TASK_CLASSIFIERS = ("mobilenet_v2", "efficientnet_lite0")
#: Their default weights entries (the classifiers' own defaults; the same test checks them).
TASK_CLASSIFIER_WEIGHTS = {"mobilenet_v2": "torchvision-mobilenet_v2", "efficientnet_lite0": "efficientnet-lite0"}

_COMMON_OPTIONS: dict[str, Option] = {
    "iterations": Option(1000, "int", low=1, help="optimisation budget per image (warm-up candidates count)"),
    "candidates": Option(3, "int", low=1, help="warm-up initialisations per image; the best survives"),
    "warmup_iterations": Option(100, "int", low=0, help="iterations of each warm-up candidate"),
    "final_iterations": Option(200, "int", low=0, help="fine-tuning with the latents frozen at their rounded values"),
    "lr": Option(1e-2, "float", low=0, high=10, low_open=True, help="Adam learning rate"),
    "n_grids": Option(7, "int", low=1, high=12, help="latent grids (resolutions)"),
    "arm_context": Option(16, "int", low=1, high=40, help="context pixels of the auto-regressive model"),
    "arm_hidden": Option(2, "int", low=0, high=4, help="hidden layers of the auto-regressive model"),
    "arm_coarse": Option(0, "choice", choices=(0, 1, 5, 9), help="ARM context values from the next coarser grid"),
    "batch_size": Option("auto", "int", low=1, keywords=("auto",),
                         help="same-size images optimised together, one model each (auto: 8 on a GPU, 1 on CPU)"),
    "threads": Option(1, "int", low=0, help="torch CPU threads per encode job (one per job scales best; 0: torch's default)"),
    "verify": Option(True, "bool", help="decode the written bitstream (compiled decoder) and check it gives the encoder's image"),
    "progress": Option(True, "bool", help="show a progress bar"),
    # A machine-task term in the per-image loss (ulbc.overfit.taskterm); the decoder is unchanged.
    "task_model": Option("none", "choice", choices=("none", *TASK_CLASSIFIERS),
                         help="ImageNet classifier of a task term λ_m·D(x̂, x) in the loss (none: MSE and rate only)"),
    "task_weights": Option("", "str", help="weights entry of the task classifier (empty: its ImageNet weights)"),
    "task_lambda": Option(1e-3, "float", low=0, low_open=True, help="λ_m, the task term's weight against the MSE"),
    "task_distance": Option("kl", "choice", choices=("kl", "features"),
                            help="D: KL of the class probabilities, or the relative squared distance of the features"),
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
    decode_bytes_per_pixel = 128  # a floor; the decoder checks its header's architecture (overfit.fastdecode)
    # The compiled decoder is integer arithmetic on the CPU, thread-safe and GIL-free.
    gpu_decoder = False
    threadsafe_decoder = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.availability() or not options:
            # The checks below need torch (the training configuration); defaults are valid (a test
            # says so), and a decoder, built without options, must not import torch.
            return
        try:  # what the options build together (the synthesis layers, the training phases)
            self.architecture()
            self.train_config()
        except ConfigError as exc:
            raise ConfigError(f"codec {self.name!r}: {exc}") from None

    def label_tags(self):
        return training_budget_tags(self.options["iterations"])

    @classmethod
    def availability(cls) -> str | None:
        missing = [m for m in ("torch", "constriction", "numba") if importlib.util.find_spec(m) is None]
        return f"needs {', '.join(missing)}" if missing else None

    def version(self) -> str:
        import torch

        from .. import __version__
        from ..overfit.format import FORMAT_VERSION

        return f"ulbc {__version__} {self.kind} format {FORMAT_VERSION} / torch {torch.__version__}"

    # -- configuration -----------------------------------------------------------------------------
    def architecture(self):
        raise NotImplementedError

    def keep_ratio(self) -> float:
        return 1.0

    def task_spec(self):
        """The task term of the loss, or None."""
        if self.options["task_model"] == "none":
            return None
        from ..overfit.taskterm import TaskSpec

        o = self.options
        return TaskSpec(o["task_model"], o["task_weights"], o["task_distance"], float(o["task_lambda"]))

    def weight_names(self, rate: float) -> list[str]:
        model = self.options["task_model"]
        if model == "none":
            return []
        return [self.options["task_weights"] or TASK_CLASSIFIER_WEIGHTS[model]]

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

        from ..overfit import fastdecode, stream
        from ..overfit.model import OverfittedModel, evaluate_hard, latent_integers, model_slice, search_network_steps
        from ..overfit.training import train

        if self.options["threads"] and str(device) == "cpu":
            torch.set_num_threads(int(self.options["threads"]))
        arch, keep = self.architecture(), self.keep_ratio()
        height, width = images[0].shape[:2]
        dev = torch.device(device)
        target = torch.from_numpy(np.stack(images)).to(dev, torch.float32) / 255.0
        spec = self.task_spec()
        task = spec.build(dev) if spec is not None else None
        start, cpu_start = time.perf_counter(), time.process_time()
        trained = train(lambda s: OverfittedModel(arch, height, width, s, keep), target, list(seeds), rate,
                        self.train_config(), dev, progress=bool(self.options["progress"]),
                        description=f"{self.name} λ={rate:g}", task=task)
        model = trained.model
        t_quant, cpu_quant = time.perf_counter(), time.process_time()
        quant = search_network_steps(model, target, rate)
        groups = model.quant_groups()
        mse_float, bits_float = evaluate_hard(model, target)
        task_info = None
        if task is not None:
            with torch.no_grad():
                image, _ = model(model.quantized_latents("hard"))
                distance = task.distance_to(image.clamp(0, 1), task.reference(target))
            from .. import weights

            task_info = [dict(spec.info(), weights_sha256=weights.file_sha256(self.weight_names(rate)[0]),
                              float_distance=float(d)) for d in distance]
        masks = [m.detach().cpu().numpy().astype(bool) for m in model.synthesis.masks()] if arch.kind == "lottery" else None
        t_write = time.perf_counter()
        results = []
        for b in range(model.batch):
            header, payload, decoded = stream.encode(
                arch, height, width, model.seeds[b], model_slice(model, b), quant.steps_for(groups, b),
                latent_integers(model, b), [m[b] for m in masks] if masks is not None else None)
            recon = stream.render(decoded, height, width, device)
            if self.options["verify"]:  # what users decode with: the compiled decoder, from the bytes alone
                check = fastdecode.decode(self.kind, header, payload, width, height)
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
                **({"task": task_info[b]} if task_info is not None else {}),
            }, recon))
        write_s = (time.perf_counter() - t_write) / model.batch
        cpu_s = (time.process_time() - cpu_start) / model.batch
        for r in results:
            r.info.update(write_s=round(write_s, 3), cpu_s=round(cpu_s, 3))
        return results

    def decode_payload(self, params, payload, width, height, *, device):
        if selected_decoder() == "reference":
            from ..overfit import stream

            return stream.decode(self.kind, params, payload, width, height, device)
        from ..overfit import fastdecode

        return fastdecode.decode(self.kind, params, payload, width, height)

    def bitstream_stats(self, params, payload, width, height):
        from ..overfit import format as layout_format
        from ..overfit.arch import macs_per_pixel

        arch = layout_format.parse_header(self.kind, params).arch
        parts = layout_format.layout(self.kind, params, payload)
        return {
            "bits_nn": 8.0 * parts.nn,
            "bits_mask": 8.0 * parts.mask,
            "bits_latent": 8.0 * parts.latent,
            "macs_per_pixel": macs_per_pixel(arch, height, width, layout_format.kept_weights(self.kind, params, payload)),
        }


@register_codec
class CoolChicCodec(_OverfittedCodec):
    name = "coolchic"
    codec_id = 40
    kind = "coolchic"
    description = "Cool-chic-style overfitted codec: trained per-image synthesis, ARM, latent pyramid"
    option_specs = {
        **_COMMON_OPTIONS,
        "preset": Option("hop", "choice", choices=COOLCHIC_PRESET_NAMES, help="synthesis network size"),
        "synthesis": Option("", "str", help="synthesis layers, e.g. 16-1-linear-relu,3-1-linear-none (empty: the preset's)"),
    }

    def architecture(self):
        from ..overfit.arch import COOLCHIC_PRESETS, Architecture

        o = self.options
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
    option_specs = {
        **_COMMON_OPTIONS,
        "keep_ratio": Option(0.9, "float", low=0, high=1, low_open=True, help="share of the random network's weights kept"),
        "mod_channels": Option(48, "int", low=1, high=256, help="channels of the modulation network"),
        "hidden": Option([32, 24, 16], "ints", low=1, high=256, length=(3, 3), help="widths of the three hidden layers"),
        "score_lr": Option(0.05, "float", low=0, high=100, low_open=True, help="learning rate of the mask scores"),
    }

    def architecture(self):
        from ..overfit.arch import Architecture

        o = self.options
        return Architecture("lottery", n_grids=o["n_grids"], arm_context=o["arm_context"], arm_hidden=o["arm_hidden"],
                            arm_coarse=o["arm_coarse"],
                            mod_channels=o["mod_channels"], hidden=tuple(o["hidden"]))

    def keep_ratio(self) -> float:
        return float(self.options["keep_ratio"])
