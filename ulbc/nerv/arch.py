"""NeRV architecture: sizes chosen from the clip, the layer list, its header bytes and its cost.

A NeRV (Chen et al., NeurIPS 2021; spec §5.1) maps a frame index to a frame:

    t = i / (T - 1)                                  (0 for a one-frame clip)
    γ(t) = [sin(b^0 π t), cos(b^0 π t), ..., sin(b^(l-1) π t), cos(b^(l-1) π t)]   (2l values)
    stem:  Linear(2l → D) → GELU → Linear(D → c0·h0·w0) → GELU → reshape (c0, h0, w0)
    stage i: conv3x3(c_i → c_{i+1}·s_i²) → PixelShuffle(s_i) → GELU
    head:  conv k×k (c_S → 3) → (tanh + 1) / 2, cropped to H×W (top-left)

**Strides from the clip size** (:func:`choose_strides`): the stride product P is a number
2^a·3^b·5^c with at most ``MAX_STAGES`` factors; the base map is h0 = ⌈H/P⌉ by w0 = ⌈W/P⌉. Among the
P whose base map keeps its shorter side ≥ ``base_size`` and whose padded frame (h0·P × w0·P) wastes
at most ``MAX_WASTE`` (5 %) of the area, the largest wins (smallest base map, so the fewest stem
weights); its prime factors become the strides, largest first. Examples: 1920x1080 with base_size 9
→ (5, 3, 2, 2, 2) on a 9×16 base, NeRV's own choice; 160x120 with base_size 3 → (5, 2, 2, 2) on 3×4;
320x240 → (3, 3, 3, 3) on 3×4 (243x324 cropped); 48x32 → (2, 2, 2) on 4×6; 352x288 →
(3, 3, 2, 2, 2) on 4×5. If no P qualifies (tiny frames) the network has no stages (P = 1).

**Channels**: c0 = ``width`` (the codec's rate knob), then c_i = max(min_width, round(width /
reduction^i)), NeRV's "reduction" rule. The header stores every size explicitly, so a decoder needs
none of these rules.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property

from ..bitstream import decode_varint, encode_varint
from ..errors import BitstreamError, ConfigError

MAX_STAGES = 6
STRIDE_FACTORS = (5, 3, 2)
#: Largest fraction of padded area accepted when choosing strides (the padding is cropped away).
MAX_WASTE = 0.05
# Bounds a header must respect: they keep a corrupted header from asking for huge allocations.
MAX_PE_LEVELS = 256
MAX_CHANNELS = 4096
MAX_STEM_DIM = 1 << 14
MAX_STRIDE = 8
MAX_WEIGHTS = 1 << 26  # 64 M parameters (NeRV-L is 12.6 M)
MAX_ACTIVATION = 1 << 28  # elements of one frame's largest feature map (1 GiB in float32)
HEAD_KERNELS = (1, 3)


@dataclass(frozen=True)
class Layer:
    """One weight layer: ``kind`` "linear" (out, in) or "conv" (out, in, k, k)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]

    @property
    def n_weights(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def out_features(self) -> int:
        return self.weight_shape[0]

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])


@dataclass(frozen=True)
class Architecture:
    """Every size of one NeRV. ``height``/``width`` are the frame size it renders (not stored in the
    header: they come from the container)."""

    height: int
    width: int
    pe_levels: int
    pe_base: float
    stem_dim: int
    strides: tuple[int, ...]
    channels: tuple[int, ...]  # c0 (base map) then the output channels of each stage
    head_kernel: int = 3

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides) + 1:
            raise ValueError("an architecture needs one more channel count than strides")

    @property
    def scale(self) -> int:
        return math.prod(self.strides)

    @property
    def base_shape(self) -> tuple[int, int]:
        return -(-self.height // self.scale), -(-self.width // self.scale)

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """Weight layers in their fixed order (the order of the bitstream and of the random draws)."""
        h0, w0 = self.base_shape
        c = self.channels
        out = [Layer("stem0", "linear", (self.stem_dim, 2 * self.pe_levels)),
               Layer("stem1", "linear", (c[0] * h0 * w0, self.stem_dim))]
        for i, s in enumerate(self.strides):
            out.append(Layer(f"stage{i}", "conv", (c[i + 1] * s * s, c[i], 3, 3)))
        out.append(Layer("head", "conv", (3, c[-1], self.head_kernel, self.head_kernel)))
        return tuple(out)

    @property
    def n_weights(self) -> int:
        return sum(layer.n_weights for layer in self.layers)

    @property
    def n_biases(self) -> int:
        return sum(layer.out_features for layer in self.layers)

    def feature_sizes(self) -> list[int]:
        """Elements of each feature map of one frame (stem output, then each conv output)."""
        h, w = self.base_shape
        sizes = [self.stem_dim, self.channels[0] * h * w]
        for i, s in enumerate(self.strides):
            sizes.append(self.channels[i + 1] * s * s * h * w)
            h, w = h * s, w * s
        sizes.append(3 * h * w)
        return sizes

    def macs_per_frame(self) -> int:
        """Multiply-accumulates of the decoder for one frame: linear layers out·in, a k×k conv
        C_in·C_out·k² per output position (the positional encoding and activations not counted)."""
        h, w = self.base_shape
        macs = self.stem_dim * 2 * self.pe_levels + self.channels[0] * h * w * self.stem_dim
        for i, s in enumerate(self.strides):
            macs += 9 * self.channels[i] * self.channels[i + 1] * s * s * h * w
            h, w = h * s, w * s
        return macs + self.head_kernel**2 * self.channels[-1] * 3 * h * w

    def macs_per_pixel(self) -> float:
        return self.macs_per_frame() / (self.height * self.width)

    def check_bounds(self) -> None:
        """Raise ValueError when the network would be unreasonably large to build or run."""
        if self.n_weights + self.n_biases > MAX_WEIGHTS:
            raise ValueError(f"network has {self.n_weights + self.n_biases} parameters, more than {MAX_WEIGHTS}")
        if max(self.feature_sizes()) > MAX_ACTIVATION:
            raise ValueError(f"a feature map of {max(self.feature_sizes())} elements exceeds {MAX_ACTIVATION}")

    # -- header bytes --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """pe_levels varint, pe_base float32 LE, stem_dim varint, n_stages byte, strides (bytes),
        channels (varints), head kernel byte."""
        return b"".join([encode_varint(self.pe_levels), struct.pack("<f", self.pe_base), encode_varint(self.stem_dim),
                         bytes([len(self.strides), *self.strides]),
                         b"".join(encode_varint(c) for c in self.channels), bytes([self.head_kernel])])

    @classmethod
    def from_bytes(cls, data: bytes, pos: int, height: int, width: int) -> tuple["Architecture", int]:
        """Parse and validate the fields written by :meth:`to_bytes`; returns (arch, next position)."""
        pe_levels, pos = decode_varint(data, pos, "positional-encoding levels")
        if pos + 4 > len(data):
            raise BitstreamError("truncated header field 'positional-encoding base'")
        (pe_base,) = struct.unpack_from("<f", data, pos)
        stem_dim, pos = decode_varint(data, pos + 4, "stem width")
        if pos >= len(data):
            raise BitstreamError("truncated header field 'stage count'")
        n_stages = data[pos]
        if n_stages > MAX_STAGES:
            raise BitstreamError(f"header declares {n_stages} stages, at most {MAX_STAGES} allowed")
        if pos + 1 + n_stages > len(data):
            raise BitstreamError("truncated header field 'strides'")
        strides = tuple(data[pos + 1 : pos + 1 + n_stages])
        pos += 1 + n_stages
        channels = []
        for i in range(n_stages + 1):
            c, pos = decode_varint(data, pos, f"channels {i}")
            channels.append(c)
        if pos >= len(data):
            raise BitstreamError("truncated header field 'head kernel'")
        head_kernel = data[pos]
        if not 1 <= pe_levels <= MAX_PE_LEVELS:
            raise BitstreamError(f"positional-encoding levels {pe_levels} outside 1..{MAX_PE_LEVELS}")
        if not (math.isfinite(pe_base) and 1.0 < pe_base <= 16.0):
            raise BitstreamError(f"positional-encoding base {pe_base!r} outside (1, 16]")
        if not 1 <= stem_dim <= MAX_STEM_DIM:
            raise BitstreamError(f"stem width {stem_dim} outside 1..{MAX_STEM_DIM}")
        if any(not 2 <= s <= MAX_STRIDE for s in strides):
            raise BitstreamError(f"strides {strides} outside 2..{MAX_STRIDE}")
        if any(not 1 <= c <= MAX_CHANNELS for c in channels):
            raise BitstreamError(f"channel counts {channels} outside 1..{MAX_CHANNELS}")
        if head_kernel not in HEAD_KERNELS:
            raise BitstreamError(f"head kernel {head_kernel} is not one of {HEAD_KERNELS}")
        arch = cls(height, width, pe_levels, float(pe_base), stem_dim, strides, tuple(channels), head_kernel)
        if arch.scale > 2 * max(height, width):
            raise BitstreamError(f"stride product {arch.scale} is far larger than the {width}x{height} frame")
        try:
            arch.check_bounds()
        except ValueError as exc:
            raise BitstreamError(str(exc)) from None
        return arch, pos + 1


def choose_strides(height: int, width: int, base_size: int) -> tuple[int, ...]:
    """Strides for a height x width frame (see the module docstring), largest first."""
    best: tuple[float, tuple[int, ...]] | None = None
    for a in range(MAX_STAGES + 1):
        for b in range(MAX_STAGES + 1 - a):
            for c in range(MAX_STAGES + 1 - a - b):
                p = 2**a * 3**b * 5**c
                h0, w0 = -(-height // p), -(-width // p)
                if min(h0, w0) < base_size or h0 * w0 * p * p > (1 + MAX_WASTE) * height * width:
                    continue
                if best is None or p > best[0]:
                    best = (p, (5,) * c + (3,) * b + (2,) * a)
    return best[1] if best is not None else ()


def channel_plan(width: int, n_stages: int, reduction: float, min_width: int) -> tuple[int, ...]:
    """c0 = width, then each stage's output channels: max(min_width, round(width / reduction^i))."""
    return (width,) + tuple(max(min_width, round(width / reduction**i)) for i in range(1, n_stages + 1))


def build_architecture(height: int, width: int, *, channels: int, stem_dim: int, pe_levels: int, pe_base: float,
                       base_size: int, reduction: float, min_width: int, head_kernel: int) -> Architecture:
    """The architecture an encoder uses for a clip of this size (options already validated)."""
    strides = choose_strides(height, width, base_size)
    arch = Architecture(height, width, pe_levels, float(struct.unpack("<f", struct.pack("<f", pe_base))[0]),
                        stem_dim, strides, channel_plan(channels, len(strides), reduction, min_width), head_kernel)
    try:
        arch.check_bounds()
    except ValueError as exc:
        raise ConfigError(f"NeRV for {width}x{height}: {exc}") from None
    return arch
