"""Decoder-side networks of the overfitted image codecs.

* :class:`LatentPyramid` — the per-image code: L single-channel grids of ⌈H/2^i⌉ × ⌈W/2^i⌉, zero at start.
* :class:`Upsampler` — brings every grid to H × W with learned 2× transposed convolutions.
* :class:`CoolChicSynthesis` — the trained per-pixel synthesis of Cool-chic ("48-1-linear-relu,...").
* :class:`LotterySynthesis` — LotteryCodec: a frozen random MLP regenerated from a seed, a learned
  binary supermask over its weights (global top-k of learned scores, straight-through gradient) and
  a small trained modulation network fed by the upsampled latents.

Random weights are drawn on the CPU from a dedicated ``torch.Generator`` in a fixed order, so the
decoder rebuilds exactly the encoder's network on any machine and device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class LatentPyramid(nn.Module):
    """L zero-initialised grids; grid i has ⌈H/2^i⌉ × ⌈W/2^i⌉ elements (every pixel is covered)."""

    def __init__(self, height: int, width: int, n_grids: int) -> None:
        super().__init__()
        if n_grids < 1:
            raise ConfigError(f"latent pyramid needs at least one grid, got {n_grids}")
        self.shapes = [grid_shape(height, width, i) for i in range(n_grids)]
        self.grids = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, h, w)) for h, w in self.shapes])

    def __len__(self) -> int:
        return len(self.grids)


def grid_shape(height: int, width: int, level: int) -> tuple[int, int]:
    return -(-height // 2**level), -(-width // 2**level)


def _symmetric(half: torch.Tensor) -> torch.Tensor:
    """(a, b, c, d) -> (a, b, c, d, d, c, b, a): a symmetric even-length 1-D kernel."""
    return torch.cat([half, half.flip(0)])


# Bicubic-like 8-tap 2x upsampling kernel (half of it; Cool-chic's initialisation).
_UPSAMPLE_INIT = (0.0351562, 0.1054687, -0.2617187, -0.8789063)


class Upsampler(nn.Module):
    """Coarse-to-fine 2× upsampling of a latent pyramid into an L × H × W stack.

    Each step transposes-convolves the accumulated coarse stack by 2 with a separable symmetric
    8-tap kernel (4 free parameters, the outer product gives the 2-D kernel), crops it to the next
    finer grid and concatenates that grid. ``shared=True`` uses one kernel for every step
    (LotteryCodec); otherwise each step has its own (Cool-chic).
    """

    def __init__(self, n_grids: int, shared: bool = False) -> None:
        super().__init__()
        n_kernels = 1 if shared else max(n_grids - 1, 1)
        init = -torch.tensor(_UPSAMPLE_INIT)  # sign makes the centre taps positive
        self.halves = nn.ParameterList([nn.Parameter(init.clone()) for _ in range(n_kernels)])
        self.shared = shared

    def kernel(self, step: int) -> torch.Tensor:
        k1 = _symmetric(self.halves[0 if self.shared else step])
        return torch.outer(k1, k1)

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        stack = grids[-1]
        for step, finer in enumerate(reversed(grids[:-1])):
            kernel = self.kernel(step)
            channels = stack.shape[1]
            # Replicate padding before the transposed conv keeps the borders free of zero ramps.
            padded = F.pad(stack, (2, 2, 2, 2), mode="replicate")
            weight = kernel.expand(channels, 1, 8, 8)
            up = F.conv_transpose2d(padded, weight, stride=2, padding=3, groups=channels)
            up = up[:, :, 4 : 4 + finer.shape[2], 4 : 4 + finer.shape[3]]
            stack = torch.cat([finer, up], dim=1)
        return stack

    def macs_per_pixel(self, n_grids: int) -> float:
        """Multiply-accumulates per output pixel (transposed conv taps per produced sample)."""
        # Each step produces (n coarse channels) samples per finer pixel, 16 taps each (64 / stride²).
        total = 0.0
        for step in range(n_grids - 1):
            level = n_grids - 2 - step  # the finer grid of this step
            channels = step + 1
            total += channels * 16 / 4**level
        return total


# -- Cool-chic synthesis -------------------------------------------------------------------------------
_LAYER = re.compile(r"^(\d+)-(\d+)-(linear|residual)-(relu|none)$")


@dataclass(frozen=True)
class LayerSpec:
    out_channels: int
    kernel: int
    residual: bool
    relu: bool


def parse_layers(text: str) -> list[LayerSpec]:
    """Parse Cool-chic's '<out>-<k>-<linear|residual>-<relu|none>' list, comma separated."""
    specs = []
    for part in (p.strip() for p in text.split(",")):
        match = _LAYER.match(part)
        if not match:
            raise ConfigError(f"synthesis layer {part!r}: expected '<out>-<kernel>-<linear|residual>-<relu|none>'")
        out, k, kind, act = match.groups()
        if int(k) % 2 == 0 or int(out) < 1:
            raise ConfigError(f"synthesis layer {part!r}: kernel must be odd and channels positive")
        specs.append(LayerSpec(int(out), int(k), kind == "residual", act == "relu"))
    if not specs or specs[-1].out_channels != 3:
        raise ConfigError(f"synthesis {text!r}: the last layer must output 3 channels")
    return specs


class CoolChicSynthesis(nn.Module):
    """Per-pixel synthesis from the upsampled latent stack (Cool-chic's layer strings)."""

    def __init__(self, in_channels: int, layers: str, generator: torch.Generator) -> None:
        super().__init__()
        self.specs = parse_layers(layers)
        self.convs = nn.ModuleList()
        channels = in_channels
        for spec in self.specs:
            if spec.residual and spec.out_channels != channels:
                raise ConfigError(f"synthesis {layers!r}: a residual layer must keep {channels} channels")
            conv = nn.Conv2d(channels, spec.out_channels, spec.kernel)
            with torch.no_grad():
                if spec.residual:
                    conv.weight.zero_()  # residual layers start as the identity
                else:
                    bound = 1.0 / (spec.out_channels**2 * math.sqrt(channels * spec.kernel**2))
                    conv.weight.uniform_(-bound, bound, generator=generator)
                conv.bias.zero_()
            self.convs.append(conv)
            channels = spec.out_channels
        # A linear 1x1 path from the input straight to RGB stabilises early training.
        self.stabiliser = nn.Conv2d(in_channels, 3, 1)
        with torch.no_grad():
            self.stabiliser.weight.zero_()
            self.stabiliser.bias.zero_()

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        x = stack
        for spec, conv in zip(self.specs, self.convs):
            pad = spec.kernel // 2
            y = conv(F.pad(x, (pad,) * 4, mode="replicate") if pad else x)
            x = x + y if spec.residual else y
            if spec.relu:
                x = F.relu(x)
        return x + self.stabiliser(stack)

    def macs_per_pixel(self) -> int:
        total, channels = 0, self.stabiliser.in_channels
        for spec in self.specs:
            total += channels * spec.out_channels * spec.kernel**2
            channels = spec.out_channels
        return total + self.stabiliser.in_channels * 3


# -- LotteryCodec ---------------------------------------------------------------------------------------
class _TopKMask(torch.autograd.Function):
    """Forward: 1 where the score is at or above the threshold; backward: straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return (scores >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def random_fourier_weights(out_features: int, in_features: int, generator: torch.Generator,
                           scale: float = 0.05) -> torch.Tensor:
    """LotteryCodec's "FFN" initialisation: W = Λ·B over a fixed cosine bank B, Λ random.

    B holds 128 frequencies (64 low, k/64, and 64 high, k) × 32 phases = 4096 rows of cosines sampled
    at ``in_features`` points across one period of the lowest frequency, times ``scale``. Only Λ
    (uniform, each column bounded by √(6/4096)/‖B_row‖) comes from the generator. Everything is float64
    on the CPU, then rounded once to float32, so every machine rebuilds the same bits.
    """
    k = torch.arange(1, 65, dtype=torch.float64)
    freqs = torch.cat([k / 64.0, k])
    phases = 2 * math.pi * torch.arange(32, dtype=torch.float64) / 32
    points = torch.linspace(0, 2 * math.pi * 64, in_features, dtype=torch.float64)
    bank = scale * torch.cos(freqs[:, None, None] * points[None, None, :] + phases[None, :, None])
    bank = bank.reshape(4096, in_features)
    bound = math.sqrt(6.0 / 4096) / bank.norm(dim=1).clamp_min(1e-12)
    lam = (torch.rand(out_features, 4096, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return (lam @ bank).to(torch.float32)


@dataclass(frozen=True)
class LotteryArchitecture:
    """Sizes of LotteryCodec's random MLP and modulation network (released defaults)."""

    n_grids: int = 7
    mod_channels: int = 48
    hidden: tuple[int, int, int] = (32, 24, 16)

    @property
    def modulation_widths(self) -> tuple[int, int, int]:
        """Channels of m1 = [o3, o2], m2 = [o3, o2, o1], m3 = [o3, o2, o1, o0]."""
        return 6, 9, 9 + self.mod_channels


class ModulationNetwork(nn.Module):
    """The trained "rewind" modulation network: latents -> features handed to the random MLP."""

    def __init__(self, arch: LotteryArchitecture, generator: torch.Generator) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(arch.n_grids, arch.mod_channels, 1)
        self.conv1 = nn.Conv2d(arch.mod_channels, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.conv3 = nn.Conv2d(3, 3, 3)
        # PyTorch's default (Kaiming-uniform) bounds, but drawn from the encoder's own generator.
        with torch.no_grad():
            for conv in (self.conv0, self.conv1, self.conv2, self.conv3):
                bound = 1.0 / math.sqrt(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
                conv.weight.uniform_(-bound, bound, generator=generator)
                conv.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o0 = F.gelu(self.conv0(stack))
        o1 = F.gelu(self.conv1(o0))
        o2 = F.gelu(self.conv2(F.pad(o1, (1, 1, 1, 1), mode="replicate")) + o1)
        o3 = F.gelu(self.conv3(F.pad(o2, (1, 1, 1, 1), mode="replicate")) + o2)
        # Deepest features first ("rewind").
        return torch.cat([o3, o2], 1), torch.cat([o3, o2, o1], 1), torch.cat([o3, o2, o1, o0], 1)


class LotterySynthesis(nn.Module):
    """Frozen random MLP over pixel coordinates, masked by learned scores, modulated by the latents.

    ``keep_ratio`` is the global fraction of random weights the mask keeps (the complexity knob):
    the threshold is the k-th largest score over all layers, so each layer keeps what falls above it.
    """

    def __init__(self, arch: LotteryArchitecture, seed: int, keep_ratio: float,
                 init_generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"LotteryCodec keep ratio must be in (0, 1], got {keep_ratio}")
        self.arch, self.seed, self.keep_ratio = arch, int(seed), float(keep_ratio)
        m1, m2, m3 = arch.modulation_widths
        h1, h2, h3 = arch.hidden
        self.shapes = [(h1, 2), (h2, h1 + m1), (h3, h2 + m2), (3, h3 + m3)]
        weights = random_weights(self.shapes, self.seed)
        for i, w in enumerate(weights):
            self.register_buffer(f"random_weight{i}", w, persistent=False)
        # Scores and the modulation network are trained, so only the encoder draws them; their
        # generator defaults to one derived from the seed so an encode is reproducible.
        gen = init_generator or torch.Generator().manual_seed(self.seed ^ 0x5EED)
        self.scores = nn.ParameterList()
        for out_f, in_f in self.shapes:
            bound = math.sqrt(6.0 / in_f)  # Kaiming-uniform bound for a linear layer
            self.scores.append(nn.Parameter((torch.rand(out_f, in_f, generator=gen) * 2 - 1) * bound))
        self.modulation = ModulationNetwork(arch, gen)
        self._fixed_masks: list[torch.Tensor] | None = None

    @property
    def n_weights(self) -> int:
        return sum(o * i for o, i in self.shapes)

    def random_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"random_weight{i}") for i in range(len(self.shapes))]

    def threshold(self) -> torch.Tensor:
        flat = torch.cat([s.detach().flatten() for s in self.scores])
        k = max(1, round(self.keep_ratio * flat.numel()))
        return torch.topk(flat, k, sorted=True).values[-1]

    def masks(self) -> list[torch.Tensor]:
        """Binary masks (straight-through to the scores while training; fixed once decoded)."""
        if self._fixed_masks is not None:
            return self._fixed_masks
        threshold = self.threshold()
        return [_TopKMask.apply(s, threshold) for s in self.scores]

    def set_masks(self, masks: list[torch.Tensor]) -> None:
        """Use decoded masks instead of scores (the decoder has no scores)."""
        if [tuple(m.shape) for m in masks] != [tuple(s) for s in self.shapes]:
            raise ConfigError("mask shapes do not match the architecture")
        self._fixed_masks = [m.to(torch.float32) for m in masks]

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """(1, n_grids, H, W) upsampled latents -> (1, 3, H, W) image in [0, 1]."""
        _, _, height, width = stack.shape
        m1, m2, m3 = self.modulation(stack)
        ys = torch.linspace(-1, 1, height, device=stack.device)
        xs = torch.linspace(-1, 1, width, device=stack.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y])[None]  # (1, 2, H, W): x along width, y along height
        w = [rw.to(stack.device) * m.to(stack.device) for rw, m in zip(self.random_weights(), self.masks())]
        h = F.gelu(_pointwise(coords, w[0]))
        h = F.gelu(_pointwise(torch.cat([h, m1], 1), w[1]))
        h = F.gelu(_pointwise(torch.cat([h, m2], 1), w[2]))
        return (torch.tanh(_pointwise(torch.cat([h, m3], 1), w[3])) + 1) / 2

    def macs_per_pixel(self, count_kept_only: bool = True) -> float:
        masked = sum(float(m.detach().sum()) for m in self.masks()) if count_kept_only else self.n_weights
        mod = self.modulation
        mod_macs = (mod.conv0.in_channels * mod.conv0.out_channels + mod.conv1.in_channels * 3 + 2 * 9 * 9)
        return masked + mod_macs


def _pointwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight[:, :, None, None])


def random_weights(shapes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    """The frozen random weights of every layer, drawn in layer order from one CPU generator."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return [random_fourier_weights(out_f, in_f, generator) for out_f, in_f in shapes]
