"""The auto-regressive entropy model (ARM) of the latent grids, and their range coding.

Each latent element is coded under a discretised Laplace whose mean and scale a tiny MLP predicts
from the element's causal neighbourhood in its own grid (already decoded values, zero outside the
grid). One MLP, batched over models (leading dimension B), serves every grid and position:

    h_1 = relu(W_1 c + b_1 + c),  h_2 = relu(W_2 h_1 + b_2 + h_1),  (mu, s) = W_o h_2 + b_o,
    scale = exp(clip(s - 4, -4.6, 5))

Training uses the float path; coding uses :mod:`.fixedpoint` so that encoder and decoder feed the
entropy coder (:mod:`.rans`, integer-only) identical parameters on every machine. ReLU (not GELU)
keeps the hidden layers exact. :mod:`.fastdecode` is the compiled decoder of the same arithmetic.

The context is ``n_context`` causal neighbours in the element's own grid plus, optionally,
``n_coarse`` values of the next coarser grid around the co-located element (a cross-scale context
in the spirit of Cool-chic 5's inter-feature context); positions outside a grid read zero.

Coding order: grids from the coarsest to the finest (so a grid's coarser neighbour is complete
before it starts); inside a grid, by **wavefront**. Element (r, c) belongs to wavefront ``c + K r``
with K one more than the furthest column to the right the context reaches in the rows above, so
every element of a wavefront depends only on earlier wavefronts; the decoder runs about ``W + K H``
vectorised steps per grid rather than ``W H`` scalar ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ..errors import BitstreamError
from .arch import (  # noqa: F401 (re-exported)
    COARSE_OFFSETS,
    CONTEXT_RADIUS,
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    LOG_SCALE_OFFSET,
    LOG_SCALE_STEPS,
    MAX_CONTEXT,
    check_coarse,
    context_offsets,
    wavefront_stride,
)
from . import fixedpoint as fx
from . import rans
from .networks import batched_linear
from .rans import SCALE_INDEX_MAX, SCALE_INDEX_MIN

#: Smallest probability an element is given while training (the coder's 16-bit floor).
MIN_PROBABILITY = 2.0**-16


def gather_contexts(grid: torch.Tensor, n_context: int, coarse: torch.Tensor | None = None,
                    n_coarse: int = 0) -> torch.Tensor:
    """(B, h, w) grid -> (B, h*w, n_context + n_coarse) contexts (zero outside the grids);
    differentiable. ``coarse`` is the next coarser grid (None for the coarsest grid)."""
    b, h, w = grid.shape
    r = CONTEXT_RADIUS
    padded = torch.nn.functional.pad(grid, (r, r, r, 0))
    cols = [padded[:, r + dr : r + dr + h, r + dc : r + dc + w] for dr, dc in context_offsets(n_context)]
    if n_coarse:
        if coarse is None:
            cols += [torch.zeros_like(grid)] * n_coarse
        else:
            cp = torch.nn.functional.pad(coarse, (1, 1, 1, 1))
            rows = torch.arange(h, device=grid.device) // 2 + 1
            cols_idx = torch.arange(w, device=grid.device) // 2 + 1
            for dr, dc in COARSE_OFFSETS[:n_coarse]:
                cols.append(cp[:, (rows + dr)[:, None], (cols_idx + dc)[None, :]])
    return torch.stack(cols, dim=-1).reshape(b, h * w, len(cols))


class ARM(nn.Module):
    """Residual MLP from a context vector to the Laplace (mean, raw log-scale), one per model."""

    def __init__(self, n_context: int, n_hidden: int, generators: list[torch.Generator], n_coarse: int = 0) -> None:
        super().__init__()
        batch = len(generators)
        context_offsets(n_context)  # validates
        self.n_context, self.n_coarse, self.n_hidden = n_context, check_coarse(n_coarse), n_hidden
        c = n_context + n_coarse
        # Hidden layers start at zero (pure residual); the output layer is small and random.
        self.hidden_weight = nn.ParameterList([nn.Parameter(torch.zeros(batch, c, c)) for _ in range(n_hidden)])
        self.hidden_bias = nn.ParameterList([nn.Parameter(torch.zeros(batch, c)) for _ in range(n_hidden)])
        self.out_weight = nn.Parameter(torch.stack([torch.randn(2, c, generator=g) / 4.0 for g in generators]))
        self.out_bias = nn.Parameter(torch.zeros(batch, 2))

    def forward(self, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) contexts -> mean and log-scale, each (B, N)."""
        h = contexts
        for w, b in zip(self.hidden_weight, self.hidden_bias):
            h = torch.relu(batched_linear(h, w, b) + h)
        out = batched_linear(h, self.out_weight, self.out_bias)
        log_scale = (out[..., 1] - LOG_SCALE_OFFSET).clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        return out[..., 0], log_scale

    def param_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]

    def macs_per_element(self) -> int:
        c = self.n_context + self.n_coarse
        return self.n_hidden * c * c + 2 * c


def laplace_bits(values: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Code length in bits of integers (or their training proxies) under a discretised Laplace."""
    scale = torch.exp(log_scale)
    upper = (values - mean + 0.5) / scale
    lower = (values - mean - 0.5) / scale
    # P = F(upper) - F(lower), F the Laplace CDF. With both exponentials bounded by 1 there is no
    # overflow in any branch and no cancellation in the tails.
    e_lower, e_upper = torch.exp(-lower.abs()), torch.exp(-upper.abs())
    prob = torch.where(lower >= 0, 0.5 * (e_lower - e_upper),
                       torch.where(upper <= 0, 0.5 * (e_upper - e_lower), 1.0 - 0.5 * (e_lower + e_upper)))
    return -torch.log2(prob.clamp_min(MIN_PROBABILITY))


# -- fixed-point evaluation and range coding ---------------------------------------------------------
@dataclass(frozen=True)
class QuantizedARM:
    """One model's ARM as the bitstream carries it: per layer (weight, bias) integer tensors (float64)
    with the exponents e of their steps 2^-e; the last layer is the output layer."""

    layers: list[tuple[tuple[torch.Tensor, int], tuple[torch.Tensor, int]]]
    n_context: int
    n_coarse: int = 0

    @classmethod
    def from_params(cls, params, n_hidden: int, n_context: int, n_coarse: int = 0,
                    prefix: str = "arm.") -> "QuantizedARM":
        layers = [(params[f"{prefix}hidden_weight.{i}"], params[f"{prefix}hidden_bias.{i}"]) for i in range(n_hidden)]
        layers.append((params[f"{prefix}out_weight"], params[f"{prefix}out_bias"]))
        return cls(layers, n_context, n_coarse)

    def entropy_parameters(self, contexts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) integer latents -> (means as integers at 2^-12, log-scale indices k: scale
        e^(k/256)), int64 arrays, identical on every machine."""
        x = (contexts.to(torch.float64) * fx.ONE)[None]
        for i, ((w, we), (b, be)) in enumerate(self.layers):
            y = fx.linear(x, w[None], we, b[None], be, f"ARM layer {i}")
            x = fx.relu(y + x) if i < len(self.layers) - 1 else y
        out = x[0]
        # log-scale on a 1/256 grid (a table of scales in format 1, of inverse scales in format 2)
        shift = fx.ACT_FRAC_BITS - int(math.log2(LOG_SCALE_STEPS))
        index = fx.round_shift(out[:, 1] - LOG_SCALE_OFFSET * fx.ONE, shift).clamp(SCALE_INDEX_MIN, SCALE_INDEX_MAX)
        return out[:, 0].to(torch.int64).numpy(), index.to(torch.int64).numpy()

    def evaluate(self, contexts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Format 1: (N, C) integer latents -> (means, scales) as float64 arrays for constriction."""
        mean, index = self.entropy_parameters(contexts)
        return mean / fx.ONE, _scale_table()[index - SCALE_INDEX_MIN]


@lru_cache(maxsize=None)
def _scale_table() -> np.ndarray:
    return np.array([math.exp(i / LOG_SCALE_STEPS) for i in range(SCALE_INDEX_MIN, SCALE_INDEX_MAX + 1)])


@dataclass(frozen=True)
class CodingPlan:
    """Where every latent element sits in the coding order, and where its context comes from.

    Elements of all grids live in one flat buffer (grid after grid, row-major) followed by one
    always-zero slot that out-of-grid context positions point to.
    """

    order: np.ndarray  # flat element indices in coding order
    contexts: np.ndarray  # (n_elements, C) flat indices of each element's context, in coding order
    step_bounds: np.ndarray  # coding-order positions where each wavefront starts, plus the end
    n_elements: int


def coding_plan(shapes: list[tuple[int, int]], n_context: int, n_coarse: int = 0) -> CodingPlan:
    offsets = context_offsets(n_context)
    stride = wavefront_stride(n_context)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    n_elements = int(starts[-1])
    zero_slot = n_elements
    keys, flat, ctx = [], [], []
    for g, (h, w) in enumerate(shapes):
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        wave = cols + stride * rows
        # Coarsest grid first; a grid's wavefronts are numbered after all those of coarser grids.
        keys.append(np.stack([np.full(rows.shape, len(shapes) - 1 - g), wave, rows]))
        flat.append(starts[g] + rows * w + cols)
        idx = np.empty((rows.size, len(offsets) + n_coarse), dtype=np.int64)
        for j, (dr, dc) in enumerate(offsets):
            rr, cc = rows + dr, cols + dc
            inside = (rr >= 0) & (cc >= 0) & (cc < w)
            idx[:, j] = np.where(inside, starts[g] + rr * w + cc, zero_slot)
        for j, (dr, dc) in enumerate(COARSE_OFFSETS[:n_coarse], start=len(offsets)):
            if g + 1 >= len(shapes):
                idx[:, j] = zero_slot
                continue
            ch, cw = shapes[g + 1]
            rr, cc = rows // 2 + dr, cols // 2 + dc
            inside = (rr >= 0) & (rr < ch) & (cc >= 0) & (cc < cw)
            idx[:, j] = np.where(inside, starts[g + 1] + rr * cw + cc, zero_slot)
        ctx.append(idx)
    keys_all = np.concatenate(keys, axis=1)
    perm = np.lexsort((keys_all[2], keys_all[1], keys_all[0]))  # grid (coarse first), wavefront, row
    step_key = keys_all[0][perm] * (int(keys_all[1].max()) + 1) + keys_all[1][perm]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(step_key)) + 1, [n_elements]])
    return CodingPlan(np.concatenate(flat)[perm], np.concatenate(ctx)[perm], bounds, n_elements)


def _laplace_family(bound: int):
    import constriction

    return constriction.stream.model.QuantizedLaplace(-bound, bound)


def encode_latents(grids: list[np.ndarray], arm: QuantizedARM) -> tuple[bytes, int]:
    """Range-code integer grids under the fixed-point ARM (format 2: :mod:`.rans`). Returns
    (stream, bound) where every latent lies in [-bound, bound] (the decoder needs the bound)."""
    values = np.concatenate([g.reshape(-1) for g in grids]).astype(np.int64)
    bound = int(np.abs(values).max()) if values.size else 0
    if bound == 0:
        return b"", 0  # all zero: nothing to send
    plan = coding_plan([g.shape for g in grids], arm.n_context, arm.n_coarse)
    buffer = np.concatenate([values, [0]])
    mean, index = arm.entropy_parameters(torch.from_numpy(buffer[plan.contexts]))
    starts, freqs = rans.symbol_ranges(values[plan.order], mean, index, bound)
    return rans.rans_encode(starts, freqs), bound


def _words(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise BitstreamError("latent payload is not a whole number of 32-bit words")
    return np.frombuffer(data, dtype="<u4")


def _grids_of(buffer: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    out, pos = [], 0
    for h, w in shapes:
        out.append(buffer[pos : pos + h * w].reshape(h, w))
        pos += h * w
    return out


def decode_latents(data: bytes, shapes: list[tuple[int, int]], bound: int, arm: QuantizedARM,
                   format_version: int = 2) -> list[np.ndarray]:
    """Inverse of :func:`encode_latents`, wavefront by wavefront: the reference decoder (the ARM in
    torch fixed point, one batch per wavefront; rANS symbol by symbol in Python)."""
    if format_version == 1:
        return _decode_latents_v1(data, shapes, bound, arm)
    plan = coding_plan(shapes, arm.n_context, arm.n_coarse)
    buffer = np.zeros(plan.n_elements + 1, dtype=np.int64)
    if bound > 0:
        try:
            decoder = rans.RansDecoder(_words(data))
        except ValueError as exc:
            raise BitstreamError(f"latent payload does not decode ({exc})") from None
        inverse, exp_table = rans.inverse_scales(), rans.half_exp_table()
        half = 1 << (fx.ACT_FRAC_BITS - 1)
        for start, stop in zip(plan.step_bounds[:-1], plan.step_bounds[1:]):
            means, indices = arm.entropy_parameters(torch.from_numpy(buffer[plan.contexts[start:stop]]))
            symbols = []
            for mu, k in zip(means.tolist(), indices.tolist()):
                inv = int(inverse[k - SCALE_INDEX_MIN])
                symbol, low, high = rans.find_symbol(
                    decoder.slot(), (mu + half) >> fx.ACT_FRAC_BITS, bound,
                    lambda j: rans.laplace_cum(j, mu, inv, bound, exp_table))
                try:
                    decoder.advance(low, high - low)
                except ValueError as exc:
                    raise BitstreamError(f"latent payload does not decode ({exc})") from None
                symbols.append(symbol)
            buffer[plan.order[start:stop]] = symbols
        if not decoder.finished_cleanly():
            raise BitstreamError("latent payload does not end where its last element does (damaged stream)")
    elif data:
        raise BitstreamError("latent payload present although every latent is zero")
    return _grids_of(buffer, shapes)


def _decode_latents_v1(data: bytes, shapes: list[tuple[int, int]], bound: int, arm: QuantizedARM) -> list[np.ndarray]:
    """Format 1: constriction's range coder under its float64 QuantizedLaplace."""
    import constriction

    plan = coding_plan(shapes, arm.n_context, arm.n_coarse)
    buffer = np.zeros(plan.n_elements + 1, dtype=np.int64)
    if bound > 0:
        decoder = constriction.stream.queue.RangeDecoder(_words(data).astype(np.uint32))
        family = _laplace_family(bound)
        for start, stop in zip(plan.step_bounds[:-1], plan.step_bounds[1:]):
            means, scales = arm.evaluate(torch.from_numpy(buffer[plan.contexts[start:stop]]))
            try:
                buffer[plan.order[start:stop]] = decoder.decode(family, means, scales)
            except (AssertionError, ValueError, RuntimeError) as exc:  # how constriction reports bad data
                raise BitstreamError(f"latent payload does not decode ({exc})") from None
        if not decoder.maybe_exhausted():
            raise BitstreamError("latent payload has data left over after the last element")
    elif data:
        raise BitstreamError("latent payload present although every latent is zero")
    return _grids_of(buffer, shapes)
