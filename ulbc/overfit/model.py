"""An overfitted image model: latent pyramid + ARM + upsampling + synthesis, batched over images.

``OverfittedModel`` holds B independent models (one per image of a batch, or per warm-up
candidate) in shared tensors. Its float forward is what training differentiates; the decoder's
exact integer path lives in :func:`reconstruct` and :mod:`.stream`.

Latents are stored divided by a fixed encoder gain (16, as Cool-chic and LotteryCodec): the
decoder sees ``round(16 y)``, which works as a larger learning rate for the latents.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import fixedpoint as fx
from .arm import ARM, gather_contexts, laplace_bits
from .arch import COOLCHIC_PRESETS, KINDS, Architecture, macs_per_pixel  # noqa: F401 (re-exported)
from .networks import CoolChicSynthesis, LotterySynthesis, QParams, Upsampler, parse_layers
from .nnquant import best_order_bits, quantize_tensor
from .quantizers import LatentQuantizer

LATENT_GAIN = 16.0


@dataclass(frozen=True)
class QuantGroup:
    """Parameters that share one quantisation step, and the exponents e (step 2^-e) to try."""

    names: tuple[str, ...]
    exponents: tuple[int, ...]


def _init_seed(seed: int) -> int:
    # Initial values use a stream of their own, distinct from the random network's seed.
    return (int(seed) * 0x9E3779B1 + 0x5EED) % (1 << 63)


class OverfittedModel(nn.Module):
    def __init__(self, arch: Architecture, height: int, width: int, seeds: list[int], keep_ratio: float = 1.0) -> None:
        super().__init__()
        self.arch, self.height, self.width = arch, height, width
        self.seeds, self.keep_ratio = [int(s) for s in seeds], keep_ratio
        batch = len(seeds)
        gens = [torch.Generator().manual_seed(_init_seed(s)) for s in seeds]
        self.shapes = arch.grid_shapes(height, width)
        self.latents = nn.ParameterList([nn.Parameter(torch.zeros(batch, h, w)) for h, w in self.shapes])
        self.arm = ARM(arch.arm_context, arch.arm_hidden, gens, arch.arm_coarse)
        self.upsampler = Upsampler(batch, arch.n_grids, arch.shared_upsampling)
        self._quantizers: dict[str, LatentQuantizer] = {}
        if arch.kind == "coolchic":
            self.synthesis: nn.Module = CoolChicSynthesis(arch.n_grids, arch.synthesis, gens)
        else:
            self.synthesis = LotterySynthesis(arch.lottery_shape, self.seeds, keep_ratio, gens)

    @property
    def batch(self) -> int:
        return len(self.seeds)

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    # -- parameters ------------------------------------------------------------------------------------
    def network_names(self) -> list[str]:
        """Names of the transmitted network parameters (not latents, not LotteryCodec's scores)."""
        return [n for n, _ in self.named_parameters() if not n.startswith(("latents.", "synthesis.scores."))]

    def quant_groups(self) -> dict[str, QuantGroup]:
        """Step groups searched after training (Cool-chic's per-module grids of power-of-two steps)."""
        names = self.network_names()

        def pick(module: str, kind: str) -> tuple[str, ...]:
            return tuple(n for n in names if n.startswith(module + ".") and kind in n)

        arm_w, arm_b = pick("arm", "weight"), pick("arm", "bias")
        syn_w, syn_b = pick("synthesis", "weight"), pick("synthesis", "bias")
        return {
            "arm.weight": QuantGroup(arm_w, tuple(range(0, 9))),
            "arm.bias": QuantGroup(arm_b, tuple(range(0, 17))),
            "upsampler.weight": QuantGroup(("upsampler.taps",), tuple(range(0, 13))),
            "synthesis.weight": QuantGroup(syn_w, tuple(range(0, 13))),
            "synthesis.bias": QuantGroup(syn_b, tuple(range(0, 25))),
        }

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-model shapes of the transmitted parameters (what the decoder allocates)."""
        params = dict(self.named_parameters())
        return {n: tuple(params[n].shape[1:]) for n in self.network_names()}

    def select(self, indices: list[int]) -> "OverfittedModel":
        """A new model holding the chosen models (warm-up candidates that survive)."""
        new = OverfittedModel(self.arch, self.height, self.width, [self.seeds[i] for i in indices], self.keep_ratio)
        index = torch.tensor(indices)
        src = dict(self.named_parameters())
        with torch.no_grad():
            for name, p in new.named_parameters():
                p.copy_(src[name].detach().cpu()[index])
        return new.to(self.latents[0].device)

    # -- forward ---------------------------------------------------------------------------------------
    def quantized_latents(self, mode: str, temperature: float = 0.3, sigma: float = 0.0,
                          generators: list[torch.Generator] | None = None) -> list[torch.Tensor]:
        """The latents as the decoder would see them (``hard``), or a training proxy of them:
        ``ste`` (round forward, identity gradient) or ``softround+noise`` (Cool-chic 5; noise from
        each model's own generator)."""
        quantizer = self._quantizers.setdefault(mode, LatentQuantizer(mode, "gaussian"))
        return [quantizer(LATENT_GAIN * y, temperature, sigma, generators) for y in self.latents]

    def forward(self, latents_hat: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised latents -> (image (B, H, W, 3), latent rate in bits (B,))."""
        b = self.batch
        a = self.arch
        contexts = torch.cat([gather_contexts(g, a.arm_context, latents_hat[i + 1] if i + 1 < len(latents_hat) else None,
                                              a.arm_coarse) for i, g in enumerate(latents_hat)], dim=1)
        values = torch.cat([g.reshape(b, -1) for g in latents_hat], dim=1)
        mean, log_scale = self.arm(contexts)
        bits = laplace_bits(values, mean, log_scale).sum(dim=1)
        image = self.synthesis(self.upsampler(latents_hat))
        return image, bits

    def macs_per_pixel(self, kept_weights: int | None = None) -> float:
        """Decoder multiply-accumulates per pixel (:func:`.arch.macs_per_pixel`)."""
        return macs_per_pixel(self.arch, self.height, self.width, kept_weights)


# -- evaluation and network quantisation -------------------------------------------------------------
def mse_per_model(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (image - target).square().flatten(1).mean(dim=1)


@torch.no_grad()
def evaluate_hard(model: OverfittedModel, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mse, latent bits) per model with the latents rounded as the decoder sees them."""
    image, bits = model(model.quantized_latents("hard"))
    return mse_per_model(image.clamp(0, 1), target), bits


@contextlib.contextmanager
def swapped_parameters(model: OverfittedModel, values: dict[str, torch.Tensor]):
    """Temporarily replace parameters (e.g. by their quantised values)."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in values}
    try:
        with torch.no_grad():
            for n, v in values.items():
                params[n].copy_(v)
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


def _fake_quantized(p: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Per-model rounding of (B, ...) to steps 2^-e_b."""
    steps = torch.pow(2.0, -exponents.to(p.dtype)).reshape(-1, *([1] * (p.dim() - 1))).to(p.device)
    return torch.round(p.detach() / steps) * steps


@dataclass
class NetworkQuantization:
    """Chosen step exponent per group and per model, and the resulting NN rate."""

    exponents: dict[str, list[int]]
    nn_bits: list[float]
    table: dict[str, list[list[float]]] = field(default_factory=dict, repr=False)

    def steps_for(self, groups: dict[str, QuantGroup], b: int) -> dict[str, float]:
        return {n: 2.0 ** -self.exponents[g][b] for g, grp in groups.items() for n in grp.names}


def _group_bits(params: dict[str, torch.Tensor], names: tuple[str, ...], b: int, exponent: int) -> float:
    return float(sum(best_order_bits(quantize_tensor(params[n][b], 2.0**-exponent))[0] for n in names))


@torch.no_grad()
def search_network_steps(model: OverfittedModel, target: torch.Tensor, lmbda: float) -> NetworkQuantization:
    """Choose each group's quantisation step per model by RD cost, one group at a time.

    Cost = MSE + λ (latent bits + network bits) / pixels, with hard-rounded latents and every already
    decided group quantised. Groups are searched in order (ARM, upsampling, synthesis; weights before
    biases), each over its exponent grid — a coordinate descent through Cool-chic's grids rather than
    its exhaustive (Δw, Δb) product, ~80 forward passes instead of ~500, all B models at once.
    """
    groups = model.quant_groups()
    params = {n: p for n, p in model.named_parameters()}
    latents = model.quantized_latents("hard")
    batch, pixels = model.batch, model.n_pixels
    chosen: dict[str, list[int]] = {}
    fixed: dict[str, torch.Tensor] = {}
    fixed_bits = torch.zeros(batch, dtype=torch.float64)
    table: dict[str, list[list[float]]] = {}
    for gname, group in groups.items():
        if not group.names:
            continue
        costs, bits_by_e = [], []
        for e in group.exponents:
            exps = torch.full((batch,), e)
            trial = {n: _fake_quantized(params[n], exps) for n in group.names}
            gbits = torch.tensor([_group_bits(params, group.names, b, e) for b in range(batch)], dtype=torch.float64)
            with swapped_parameters(model, {**fixed, **trial}):
                image, lat_bits = model(latents)
            mse = mse_per_model(image.clamp(0, 1), target).double().cpu()
            cost = mse + lmbda * (lat_bits.double().cpu() + fixed_bits + gbits) / pixels
            costs.append(torch.where(torch.isfinite(cost), cost, torch.full_like(cost, math.inf)))
            bits_by_e.append(gbits)
        cost_table = torch.stack(costs)  # (n_exponents, B); ties go to the coarser step (first)
        best = cost_table.argmin(dim=0)
        exps = torch.tensor([group.exponents[int(i)] for i in best])
        chosen[gname] = [int(e) for e in exps]
        fixed.update({n: _fake_quantized(params[n], exps) for n in group.names})
        fixed_bits += torch.stack(bits_by_e)[best, torch.arange(batch)]
        table[gname] = cost_table.tolist()
    return NetworkQuantization(chosen, fixed_bits.tolist(), table)


def model_slice(model: OverfittedModel, b: int) -> dict[str, torch.Tensor]:
    """One model's transmitted network parameters (float), by name."""
    params = dict(model.named_parameters())
    return {n: params[n][b].detach().cpu() for n in model.network_names()}


def latent_integers(model: OverfittedModel, b: int) -> list[np.ndarray]:
    return [torch.round(LATENT_GAIN * y[b]).detach().cpu().numpy().astype(np.int64) for y in model.latents]


# -- the decoder's exact reconstruction ------------------------------------------------------------------
def reconstruct(arch: Architecture, height: int, width: int, params: QParams, grids: list[np.ndarray],
                masks: list[np.ndarray] | None = None, seed: int = 0, device: str = "cpu",
                format_version: int = 2) -> np.ndarray:
    """Integer latents + quantised networks -> (H, W, 3) uint8, bit-exact on any device."""
    dev = torch.device(device)
    q = {n: (t.to(dev), e) for n, (t, e) in params.items()}
    stack_in = [torch.from_numpy(g.astype(np.float64)).to(dev)[None] * fx.ONE for g in grids]
    stack = Upsampler.fixed(stack_in, q, arch.shared_upsampling)
    if arch.kind == "coolchic":
        image = CoolChicSynthesis.fixed(parse_layers(arch.synthesis), stack, q)
    else:
        mask_tensors = [torch.from_numpy(np.asarray(m, dtype=np.float64)) for m in masks]
        image = LotterySynthesis.fixed(stack, q, mask_tensors, seed, arch.lottery_shape, format_version)
    return image.cpu().numpy().astype(np.uint8)
