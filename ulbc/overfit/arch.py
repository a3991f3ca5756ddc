"""The overfitted codecs' architecture description, shapes and complexity, without torch.

What a decoder needs before it touches a network: the header's architecture, the shapes of the
transmitted tensors (so the parameter payload can be parsed) and the multiply-accumulates per pixel.
Both the torch networks (:mod:`.networks`, :mod:`.model`) and the compiled decoder
(:mod:`.fastdecode`) build on it; importing it costs no more than the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..errors import ConfigError

# -- the auto-regressive entropy model's context ----------------------------------------------
#: The context is taken from the causal half of a (2R+1) x (2R+1) window.
CONTEXT_RADIUS = 4
MAX_CONTEXT = CONTEXT_RADIUS * (2 * CONTEXT_RADIUS + 1) + CONTEXT_RADIUS  # 40
#: Coarser-grid positions around the co-located element, in the order they are added to the context.
COARSE_OFFSETS = ((0, 0), (-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))
#: log-scale clip of the Laplace (LotteryCodec's bounds) and the offset applied before it.
LOG_SCALE_MIN, LOG_SCALE_MAX, LOG_SCALE_OFFSET = -4.6, 5.0, 4.0
#: The coder snaps log-scales to this grid (1/256) so scales come from one table.
LOG_SCALE_STEPS = 256


@lru_cache(maxsize=None)
def context_offsets(n_context: int) -> tuple[tuple[int, int], ...]:
    """The first ``n_context`` causal (row, column) offsets, nearest first (ties: upper, then left)."""
    if not 1 <= n_context <= MAX_CONTEXT:
        raise ValueError(f"ARM context size must be in 1..{MAX_CONTEXT}, got {n_context}")
    r = CONTEXT_RADIUS
    causal = [(dr, dc) for dr in range(-r, 1) for dc in range(-r, r + 1) if dr < 0 or dc < 0]
    causal.sort(key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))
    return tuple(causal[:n_context])


def wavefront_stride(n_context: int) -> int:
    """K in the wavefront index c + K r (one more than the context's reach to the right)."""
    return 1 + max([dc for dr, dc in context_offsets(n_context) if dr < 0] + [0])


def check_coarse(n_coarse: int) -> int:
    if not 0 <= n_coarse <= len(COARSE_OFFSETS):
        raise ValueError(f"coarse ARM context size must be in 0..{len(COARSE_OFFSETS)}, got {n_coarse}")
    return n_coarse


#: Inputs of LotteryCodec's two 3x3 modulation layers (3 channels, 3x3 windows).
LOTTERY_MODULATION_CONV = 27


def grid_shape(height: int, width: int, level: int) -> tuple[int, int]:
    """Grid ``level`` covers the image with ⌈H/2^level⌉ x ⌈W/2^level⌉ elements."""
    return -(-height // 2**level), -(-width // 2**level)


_LAYER = re.compile(r"^(\d+)-(1|3)-(linear|residual)-(relu|none)$")


@dataclass(frozen=True)
class LayerSpec:
    out_channels: int
    kernel: int
    residual: bool
    relu: bool


def parse_layers(text: str) -> list[LayerSpec]:
    """Parse Cool-chic's '<out>-<kernel 1|3>-<linear|residual>-<relu|none>' list, comma separated."""
    specs = []
    for part in (p.strip() for p in text.split(",")):
        match = _LAYER.match(part)
        if not match:
            raise ConfigError(f"synthesis layer {part!r}: expected '<out>-<1|3>-<linear|residual>-<relu|none>'")
        out, k, kind, act = match.groups()
        if not 1 <= int(out) <= 256:
            raise ConfigError(f"synthesis layer {part!r}: channels must be in 1..256")
        specs.append(LayerSpec(int(out), int(k), kind == "residual", act == "relu"))
    if not specs or specs[-1].out_channels != 3:
        raise ConfigError(f"synthesis {text!r}: the last layer must output 3 channels")
    return specs


@dataclass(frozen=True)
class LotteryShape:
    """Sizes of LotteryCodec's random MLP and modulation network (the released defaults)."""

    n_grids: int = 7
    mod_channels: int = 48
    hidden: tuple[int, int, int] = (32, 24, 16)

    @property
    def modulation_widths(self) -> tuple[int, int, int]:
        """Channels of m1 = [o3, o2], m2 = [o3, o2, o1], m3 = [o3, o2, o1, o0]."""
        return 6, 9, 9 + self.mod_channels

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        m1, m2, m3 = self.modulation_widths
        h1, h2, h3 = self.hidden
        return [(h1, 2), (h2, h1 + m1), (h3, h2 + m2), (3, h3 + m3)]

    @property
    def n_weights(self) -> int:
        return sum(o * i for o, i in self.layer_shapes)


KINDS = ("coolchic", "lottery")
#: Cool-chic's decoder presets (synthesis layers, ARM context); HOP is Cool-chic 5's default.
COOLCHIC_PRESETS = {
    "lop": ("8-1-linear-relu,3-1-linear-none,3-3-residual-none", 8),
    "mop": ("16-1-linear-relu,3-1-linear-none,3-3-residual-relu,3-3-residual-none", 12),
    "hop": ("48-1-linear-relu,3-1-linear-none,3-3-residual-relu,3-3-residual-none", 16),
}


@dataclass(frozen=True)
class Architecture:
    """Everything the decoder needs to rebuild the networks (it is written in the header)."""

    kind: str
    n_grids: int = 7
    arm_context: int = 16
    arm_hidden: int = 2
    arm_coarse: int = 0  # coarser-grid context values (0, 1, 5 or 9)
    synthesis: str = COOLCHIC_PRESETS["hop"][0]  # coolchic only
    mod_channels: int = 48  # lottery only
    hidden: tuple[int, int, int] = (32, 24, 16)  # lottery only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown overfitted model kind {self.kind!r}")
        if not 1 <= self.n_grids <= 12:
            raise ConfigError(f"n_grids must be in 1..12, got {self.n_grids}")
        if not 0 <= self.arm_hidden <= 4:
            raise ConfigError(f"arm_hidden must be in 0..4, got {self.arm_hidden}")
        if self.arm_coarse not in (0, 1, 5, 9):
            raise ConfigError(f"arm_coarse must be 0, 1, 5 or 9, got {self.arm_coarse}")
        if not 1 <= self.arm_context <= 40:
            raise ConfigError(f"arm_context must be in 1..40, got {self.arm_context}")
        if not 1 <= self.mod_channels <= 256 or len(self.hidden) != 3 or not all(1 <= h <= 256 for h in self.hidden):
            raise ConfigError("lottery widths must be in 1..256")
        parse_layers(self.synthesis)

    @property
    def lottery_shape(self) -> LotteryShape:
        return LotteryShape(self.n_grids, self.mod_channels, tuple(self.hidden))

    @property
    def shared_upsampling(self) -> bool:
        return self.kind == "lottery"

    def grid_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        return [grid_shape(height, width, i) for i in range(self.n_grids)]


def synthesis_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Shapes of the transmitted synthesis tensors (names as in the torch modules)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if arch.kind == "coolchic":
        channels = arch.n_grids
        for i, spec in enumerate(parse_layers(arch.synthesis)):
            if spec.residual and spec.out_channels != channels:
                raise ConfigError(f"synthesis {arch.synthesis!r}: a residual layer must keep {channels} channels")
            shapes[f"synthesis.weights.{i}"] = (spec.out_channels, channels * spec.kernel**2)
            shapes[f"synthesis.biases.{i}"] = (spec.out_channels,)
            channels = spec.out_channels
        shapes["synthesis.stabiliser_weight"] = (3, arch.n_grids)
        shapes["synthesis.stabiliser_bias"] = (3,)
    else:
        for i, (out, inp) in enumerate(lottery_modulation_shapes(arch)):
            shapes[f"synthesis.mod_weights.{i}"] = (out, inp)
            shapes[f"synthesis.mod_biases.{i}"] = (out,)
    return shapes


def lottery_modulation_shapes(arch: Architecture) -> list[tuple[int, int]]:
    m = arch.mod_channels
    return [(m, arch.n_grids), (3, m), (3, LOTTERY_MODULATION_CONV), (3, LOTTERY_MODULATION_CONV)]


def param_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Per-model shapes of every transmitted network tensor: ARM, upsampling taps, synthesis
    (``OverfittedModel.param_shapes`` without building the model; a test keeps the two equal)."""
    c = arch.arm_context + arch.arm_coarse
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(arch.arm_hidden):
        shapes[f"arm.hidden_weight.{i}"] = (c, c)
        shapes[f"arm.hidden_bias.{i}"] = (c,)
    shapes["arm.out_weight"] = (2, c)
    shapes["arm.out_bias"] = (2,)
    shapes["upsampler.taps"] = (upsampling_kernels(arch), 4)
    shapes.update(synthesis_shapes(arch))
    return shapes


def upsampling_kernels(arch: Architecture) -> int:
    return 1 if arch.shared_upsampling else max(arch.n_grids - 1, 1)


def upsampling_macs_per_pixel(height: int, width: int, n_grids: int) -> float:
    """4 taps per produced sample, two passes per step (rows, then columns), every channel."""
    total = 0
    for step in range(n_grids - 1):
        fine = n_grids - 2 - step
        fine_h, fine_w = grid_shape(height, width, fine)
        coarse_w = grid_shape(height, width, fine + 1)[1]
        total += 4 * (step + 1) * (fine_h * coarse_w + fine_h * fine_w)
    return total / (height * width)


def arm_macs_per_element(arch: Architecture) -> int:
    c = arch.arm_context + arch.arm_coarse
    return arch.arm_hidden * c * c + 2 * c


def synthesis_macs_per_pixel(arch: Architecture, kept_weights: int | None = None) -> float:
    if arch.kind == "coolchic":
        total, channels = 0, arch.n_grids
        for spec in parse_layers(arch.synthesis):
            total += channels * spec.out_channels * spec.kernel**2
            channels = spec.out_channels
        return total + arch.n_grids * 3
    s = arch.lottery_shape
    modulation = s.n_grids * s.mod_channels + s.mod_channels * 3 + 2 * LOTTERY_MODULATION_CONV * 3
    return (kept_weights if kept_weights is not None else s.n_weights) + modulation


def macs_per_pixel(arch: Architecture, height: int, width: int, kept_weights: int | None = None) -> float:
    """Decoder multiply-accumulates per pixel: ARM (per latent element), upsampling, synthesis
    (LotteryCodec: only the random weights its masks keep)."""
    elements = sum(h * w for h, w in arch.grid_shapes(height, width))
    return (arm_macs_per_element(arch) * elements / (height * width)
            + upsampling_macs_per_pixel(height, width, arch.n_grids) + synthesis_macs_per_pixel(arch, kept_weights))
