"""Decoder-side networks of the overfitted image codecs, batched over models.

Every trainable tensor has a leading model dimension B: a shard's same-size images are optimised
together, one model each, in the same tensors (on a GPU that is what makes dataset-scale
encoding fast). Feature maps are channels-last, (B, H, W, C), so that per-pixel layers are batched
matrix products.

* :class:`Upsampler` — coarse-to-fine 2x upsampling of the latent pyramid into an L-channel stack:
  a separable, symmetric 8-tap interpolation kernel (4 free taps, bicubic at start) per step
  (Cool-chic) or one shared by all steps (LotteryCodec).
* :class:`CoolChicSynthesis` — the trained per-pixel synthesis of Cool-chic (layer strings such as
  ``48-1-linear-relu,3-1-linear-none,3-3-residual-relu,3-3-residual-none``).
* :class:`LotterySynthesis` — LotteryCodec: a frozen random MLP over pixel coordinates, regenerated
  from a seed, a learned binary supermask over its weights (global top-k of learned scores,
  straight-through gradient) and a trained "rewind" modulation network fed by the latents.

Each module has a float ``forward`` for training and a ``fixed`` counterpart that runs one model
from the integers of the bitstream (see :mod:`.fixedpoint`), which is what the decoder executes.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import fixedpoint as fx
from . import intmath, randomnet
from .arch import LayerSpec, LotteryShape, grid_shape, parse_layers  # noqa: F401 (re-exported)

#: A quantised tensor of one model: integers (float64) and the exponent e of its step 2^-e.
QTensor = tuple[torch.Tensor, int]
QParams = Mapping[str, QTensor]


# -- shared building blocks ----------------------------------------------------------------------------
def replicate_pad(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Replicate-pad any dimension (works channels-last, differentiable, exact on integers)."""
    n = x.shape[dim]
    index = torch.arange(-before, n + after, device=x.device).clamp(0, n - 1)
    return x.index_select(dim, index)


def patches3x3(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H*W, 9C): each pixel's 3x3 neighbourhood (replicate padding), row-major
    over the window, channels inside."""
    b, h, w, c = x.shape
    p = replicate_pad(replicate_pad(x, 1, 1, 1), 2, 1, 1)
    cols = [p[:, dy : dy + h, dx : dx + w, :] for dy in range(3) for dx in range(3)]
    return torch.cat(cols, dim=-1).reshape(b, h * w, 9 * c)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Float 3x3 convolution with replicate padding, per model: x (B, H, W, C_in), weight
    (B, C_out, 9 C_in) laid out like :func:`patches3x3` -> (B, H*W, C_out). Same result as
    ``batched_linear(patches3x3(x), weight, bias)``, computed by one grouped convolution."""
    b, h, w, c = x.shape
    c_out = weight.shape[1]
    kernel = weight.reshape(b, c_out, 3, 3, c).permute(0, 1, 4, 2, 3).reshape(b * c_out, c, 3, 3)
    inp = F.pad(x.permute(0, 3, 1, 2).reshape(1, b * c, h, w), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(inp, kernel, bias.reshape(-1), groups=b)
    return out.reshape(b, c_out, h * w).transpose(1, 2)


class _ThinLinear(torch.autograd.Function):
    """``x @ w^T + b`` for tall, thin x (pixels x a few channels), with the weight gradient computed
    in whichever orientation keeps the GEMM's output rows few: for these shapes MKL is up to 10x
    slower the other way round (e.g. 57x3 from 65 536 rows: 17 ms vs 1.9 ms on one core)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = grad @ weight
        if ctx.needs_input_grad[1]:
            out_f, in_f = weight.shape
            gw = grad.t() @ x if out_f <= in_f else (x.t() @ grad).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, N, C_in), weight (B, C_out, C_in), bias (B, C_out) -> (B, N, C_out)."""
    if x.shape[0] == 1 and x.dtype != torch.float64:
        # One model: a plain GEMM is 1.5-2.5x faster than a batch-of-one bmm for these thin shapes
        # (views, not x[0], so the backward pass does not zero-fill a full-size gradient).
        n, c = x.shape[1:]
        y = _ThinLinear.apply(x.view(n, c) if x.is_contiguous() else x.reshape(n, c), weight.view(weight.shape[1:]),
                              None if bias is None else bias.view(-1))
        return y.view(1, n, -1)
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def _uniform(shape, bound: float, generators: list[torch.Generator]) -> torch.Tensor:
    """One uniform draw per model, each from that model's own generator, stacked on dim 0: a model's
    initial values do not depend on which other models share its batch."""
    return torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * bound for g in generators])


def _q(params: QParams, name: str) -> QTensor:
    ints, exp = params[name]
    return ints[None], exp  # add the model dimension the batched helpers expect


# -- upsampling ---------------------------------------------------------------------------------------
#: Taps (a, b, c, d) of bicubic 2x interpolation: even outputs weigh x[m-2..m+1] by (a, c, d, b),
#: odd outputs x[m-1..m+2] by (b, d, c, a); they sum to one.
BICUBIC_TAPS = (-0.03515625, -0.10546875, 0.26171875, 0.87890625)


def _upsample_1d(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """2x interpolation along ``dim`` of (B, ...) with per-model taps (B, 4); output length 2n."""
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    a, b, c, d = (taps[:, i].reshape(shape) for i in range(4))
    n = x.shape[dim]
    p = replicate_pad(x, dim, 2, 2)
    s = [p.narrow(dim, k, n) for k in range(5)]  # s[k][m] = x[m + k - 2]
    even = a * s[0] + c * s[1] + d * s[2] + b * s[3]
    odd = b * s[1] + d * s[2] + c * s[3] + a * s[4]
    out = torch.stack([even, odd], dim=dim + 1)
    return out.flatten(dim, dim + 1)


class Upsampler(nn.Module):
    """Latent grids -> (B, H, W, L) stack; channel i is grid i brought to full resolution."""

    def __init__(self, batch: int, n_grids: int, shared: bool) -> None:
        super().__init__()
        self.n_grids, self.shared = n_grids, shared
        n_kernels = 1 if shared else max(n_grids - 1, 1)
        self.taps = nn.Parameter(torch.tensor(BICUBIC_TAPS).repeat(batch, n_kernels, 1))

    def _kernel(self, step: int) -> int:
        return 0 if self.shared else step

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        stack = grids[-1][..., None]
        for step, finer in enumerate(reversed(grids[:-1])):
            taps = self.taps[:, self._kernel(step)]
            h, w = finer.shape[1:]
            up = _upsample_1d(stack, taps, 1)[:, :h]
            up = _upsample_1d(up, taps, 2)[:, :, :w]
            stack = torch.cat([finer[..., None], up], dim=-1)
        return stack

    @staticmethod
    def fixed(grids: list[torch.Tensor], params: QParams, shared: bool) -> torch.Tensor:
        """Integer grids (1, h, w) at the activation scale -> (1, H, W, L) stack, exactly."""
        taps_all, exp = params["upsampler.taps"]
        stack = grids[-1][..., None]
        for step, finer in enumerate(reversed(grids[:-1])):
            taps = taps_all[0 if shared else step][None]
            fx.check_exact(float(stack.abs().amax()) * float(taps.abs().sum()) + 1, "upsampling")
            h, w = finer.shape[1:]
            up = fx.round_shift(_upsample_1d(stack, taps, 1)[:, :h], exp)
            up = fx.round_shift(_upsample_1d(up, taps, 2)[:, :, :w], exp)
            stack = torch.cat([finer[..., None], up], dim=-1)
        return stack

# -- Cool-chic synthesis -----------------------------------------------------------------------------
class CoolChicSynthesis(nn.Module):
    """Per-pixel synthesis from the upsampled latent stack, plus a linear 1x1 stabiliser path."""

    def __init__(self, in_channels: int, layers: str, generators: list[torch.Generator]) -> None:
        super().__init__()
        batch = len(generators)
        self.specs = parse_layers(layers)
        self.in_channels = in_channels
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        channels = in_channels
        for spec in self.specs:
            if spec.residual and spec.out_channels != channels:
                raise ConfigError(f"synthesis {layers!r}: a residual layer must keep {channels} channels")
            fan_in = channels * spec.kernel**2
            if spec.residual:
                w = torch.zeros(batch, spec.out_channels, fan_in)  # residual layers start as identity
            else:
                w = _uniform((spec.out_channels, fan_in), 1.0 / (spec.out_channels**2 * math.sqrt(fan_in)), generators)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(batch, spec.out_channels)))
            channels = spec.out_channels
        self.stabiliser_weight = nn.Parameter(torch.zeros(batch, 3, in_channels))
        self.stabiliser_bias = nn.Parameter(torch.zeros(batch, 3))

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """(B, H, W, L) -> (B, H, W, 3), not clipped (the decoder clips after rounding)."""
        b, h, w, c = stack.shape
        x = stack
        for spec, weight, bias in zip(self.specs, self.weights, self.biases):
            if spec.kernel == 3:
                y = conv3x3(x, weight, bias).reshape(b, h, w, -1)
            else:
                y = batched_linear(x.reshape(b, h * w, -1), weight, bias).reshape(b, h, w, -1)
            x = x + y if spec.residual else y
            if spec.relu:
                x = torch.relu(x)
        return x + batched_linear(stack.reshape(b, h * w, c), self.stabiliser_weight, self.stabiliser_bias).reshape(b, h, w, 3)

    @staticmethod
    def fixed(specs: list[LayerSpec], stack: torch.Tensor, params: QParams) -> torch.Tensor:
        """Fixed-point synthesis of one model: (1, H, W, L) integers -> (H, W, 3) uint8 levels."""
        _, h, w, c = stack.shape
        x = stack
        for i, spec in enumerate(specs):
            inp = patches3x3(x) if spec.kernel == 3 else x.reshape(1, h * w, -1)
            (wi, we), (bi, be) = _q(params, f"synthesis.weights.{i}"), _q(params, f"synthesis.biases.{i}")
            y = fx.linear(inp, wi, we, bi, be, f"synthesis layer {i}").reshape(1, h, w, -1)
            x = x + y if spec.residual else y
            if spec.relu:
                x = fx.relu(x)
        (sw, swe), (sb, sbe) = _q(params, "synthesis.stabiliser_weight"), _q(params, "synthesis.stabiliser_bias")
        x = x + fx.linear(stack.reshape(1, h * w, c), sw, swe, sb, sbe, "synthesis stabiliser").reshape(1, h, w, 3)
        return fx.unit_to_uint8(x[0])


# -- LotteryCodec -------------------------------------------------------------------------------------
RANDOM_WEIGHT_FRAC_BITS = randomnet.RANDOM_WEIGHT_FRAC_BITS


class _TopKMask(torch.autograd.Function):
    """Forward: 1 where the score is at or above its model's threshold; backward: straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return (scores >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _fourier_weights_format1(out_features: int, in_features: int, generator: torch.Generator,
                             scale: float = 0.05) -> torch.Tensor:
    """:func:`.randomnet.random_fourier_weights` as format 1 computed it, in torch (whose ``cos``
    differs from the C library's in the last bit now and then)."""
    k = torch.arange(1, 65, dtype=torch.float64)
    freqs = torch.cat([k / 64.0, k])
    phases = 2 * math.pi * torch.arange(32, dtype=torch.float64) / 32
    points = torch.linspace(0, 2 * math.pi * 64, in_features, dtype=torch.float64)
    bank = scale * torch.cos(freqs[:, None, None] * points[None, None, :] + phases[None, :, None])
    bank = bank.reshape(4096, in_features)
    bound = math.sqrt(6.0 / 4096) / bank.norm(dim=1).clamp_min(1e-12)
    lam = (torch.rand(out_features, 4096, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return fx.to_fixed(lam @ bank, RANDOM_WEIGHT_FRAC_BITS)


def random_weights_format1(shapes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return [_fourier_weights_format1(out_f, in_f, generator) for out_f, in_f in shapes]


def random_weights(shapes: list[tuple[int, int]], seed: int, format_version: int = 2) -> list[torch.Tensor]:
    """The frozen random weights of every layer as integers at 2^-16 (float64 tensors)."""
    if format_version == 1:
        return random_weights_format1(shapes, seed)
    return [torch.from_numpy(w.astype(np.float64)) for w in randomnet.random_weights(shapes, seed)]


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """(H*W, 2) fixed-point (x, y) in [-1, 1] (x along the width), as exact integers at 2^-12."""
    return torch.from_numpy(intmath.pixel_coordinates(height, width))


class LotterySynthesis(nn.Module):
    """Frozen random MLP over pixel coordinates, masked by learned scores, modulated by the latents.

    ``keep_ratio`` is the fraction of random weights each model's mask keeps (the complexity knob):
    the threshold is the k-th largest of the model's scores over all layers, so each layer keeps
    what falls above it. Each model has its own seed, hence its own random network.
    """

    def __init__(self, shape: LotteryShape, seeds: list[int], keep_ratio: float,
                 generators: list[torch.Generator]) -> None:
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"LotteryCodec keep ratio must be in (0, 1], got {keep_ratio}")
        if len(seeds) != len(generators):
            raise ValueError("one seed and one generator per model")
        self.shape, self.seeds, self.keep_ratio = shape, [int(s) for s in seeds], float(keep_ratio)
        layers = shape.layer_shapes
        per_model = [random_weights(layers, s) for s in self.seeds]
        for i in range(len(layers)):
            w = torch.stack([ws[i] for ws in per_model]) / float(1 << RANDOM_WEIGHT_FRAC_BITS)
            self.register_buffer(f"random_weight{i}", w.to(torch.float32), persistent=False)
        self.scores = nn.ParameterList(
            [nn.Parameter(_uniform((o, i), math.sqrt(6.0 / i), generators)) for o, i in layers])
        mods = [(shape.mod_channels, shape.n_grids), (3, shape.mod_channels), (3, 27), (3, 27)]
        self.mod_weights = nn.ParameterList(
            [nn.Parameter(_uniform((o, i), 1.0 / math.sqrt(i), generators)) for o, i in mods])
        self.mod_biases = nn.ParameterList(
            [nn.Parameter(_uniform((o,), 1.0 / math.sqrt(i), generators)) for o, i in mods])
        self.all_ones = keep_ratio == 1.0
        self.register_buffer("_coords", torch.zeros(0), persistent=False)

    def random_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"random_weight{i}") for i in range(len(self.scores))]

    def thresholds(self) -> torch.Tensor:
        flat = torch.cat([s.detach().flatten(1) for s in self.scores], dim=1)
        k = max(1, round(self.keep_ratio * flat.shape[1]))
        return torch.topk(flat, k, dim=1, sorted=True).values[:, -1]

    def masks(self) -> list[torch.Tensor]:
        """Binary masks, (B, out, in) each, straight-through to the scores."""
        if self.all_ones:
            return [torch.ones_like(s) for s in self.scores]
        t = self.thresholds()[:, None, None]
        return [_TopKMask.apply(s, t) for s in self.scores]

    def _coordinates(self, h: int, w: int, device) -> torch.Tensor:
        if self._coords.shape != (h * w, 2) or self._coords.device != torch.device(device):
            self._coords = (pixel_coordinates(h, w) / fx.ONE).to(device=device, dtype=torch.float32)
        return self._coords

    @staticmethod
    def _modulation(stack: torch.Tensor, linear, conv, act) -> tuple[torch.Tensor, torch.Tensor]:
        """Modulation features, deepest first ("rewind"): ``shallow`` = [o3, o2, o1] and ``o0``.
        Layer 1 of the random MLP reads m1 = [o3, o2], layer 2 m2 = [o3, o2, o1], layer 3
        m3 = [o3, o2, o1, o0]."""
        b, h, w, c = stack.shape
        o0 = act(linear(stack.reshape(b, h * w, c), 0))
        o1 = act(linear(o0, 1))
        o2 = act(conv(o1.reshape(b, h, w, 3), 2) + o1)
        o3 = act(conv(o2.reshape(b, h, w, 3), 3) + o2)
        return torch.cat([o3, o2, o1], -1), o0

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """(B, H, W, L) upsampled latents -> (B, H, W, 3) image in [0, 1]."""
        b, h, w, _ = stack.shape
        shallow, o0 = self._modulation(
            stack, lambda x, i: batched_linear(x, self.mod_weights[i], self.mod_biases[i]),
            lambda x, i: conv3x3(x, self.mod_weights[i], self.mod_biases[i]), F.gelu)
        coords = self._coordinates(h, w, stack.device).expand(b, -1, -1)
        ws = [rw * m for rw, m in zip(self.random_weights(), self.masks())]
        x = F.gelu(batched_linear(coords, ws[0], None))
        # [x, m] @ W^T computed as x @ W_x^T + m @ W_m^T: no concatenated copies of the inputs, and
        # no full-size zero-filled gradients for slices of a shared feature tensor.
        for layer, (n_x, width) in enumerate(zip(self.shape.hidden, self.shape.modulation_widths), start=1):
            w_l = ws[layer]
            y = batched_linear(x, w_l[:, :, :n_x], None)
            y = y + batched_linear(shallow if width >= 9 else shallow[..., :width], w_l[:, :, n_x : n_x + min(width, 9)], None)
            if width > 9:
                y = y + batched_linear(o0, w_l[:, :, n_x + 9 :], None)
            x = F.gelu(y) if layer < 3 else torch.tanh(y)
        return ((x + 1) * 0.5).reshape(b, h, w, 3)

    @staticmethod
    def fixed(stack: torch.Tensor, params: QParams, masks: list[torch.Tensor], seed: int,
              shape: LotteryShape, format_version: int = 2) -> torch.Tensor:
        """Fixed-point synthesis of one model: (1, H, W, L) integers -> (H, W, 3) uint8 levels."""
        _, h, w, _ = stack.shape

        def linear(x, i):
            (wi, we), (bi, be) = _q(params, f"synthesis.mod_weights.{i}"), _q(params, f"synthesis.mod_biases.{i}")
            return fx.linear(x, wi, we, bi, be, f"modulation layer {i}")

        shallow, o0 = LotterySynthesis._modulation(stack, linear, lambda x, i: linear(patches3x3(x), i), fx.gelu)
        mods = torch.cat([shallow, o0], -1)
        device = stack.device
        ws = [(rw * m.to(torch.float64))[None].to(device) for rw, m in zip(random_weights(shape.layer_shapes, seed, format_version), masks)]
        e = RANDOM_WEIGHT_FRAC_BITS
        x = fx.gelu(fx.linear(pixel_coordinates(h, w).to(device)[None], ws[0], e, what="random layer 0"))
        for layer, width in zip((1, 2, 3), shape.modulation_widths):
            x = fx.linear(torch.cat([x, mods[..., :width]], -1), ws[layer], e, what=f"random layer {layer}")
            if layer < 3:
                x = fx.gelu(x)
        return fx.tanh_to_uint8(x[0]).reshape(h, w, 3)
