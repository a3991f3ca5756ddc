"""Quantisation and serialisation of a decoder network's parameters (Cool-chic style, spec §2.2-2.3).

After training, every parameter group (e.g. the weights, and separately the biases, of each
module) is quantised with a step from a grid of powers of two, chosen by an RD search that
minimises ``distortion(step) + lmbda * bits(step)``. The integers are written with a signed
(zig-zag) Exp-Golomb code of the order that makes them shortest.

Why powers of two: ``ints * 2^-e`` is exact in float32 as long as ``|ints| <= 2^24`` and the
result is a normal float (here ``e <= 64``), so the decoder reproduces the encoder's dequantised
weights bit for bit with no rounding ambiguity. Encoder and decoder both call ``dequantize``; the
tests check the decoded tensors equal the encoder's ones exactly.

Stream layout (``encode_params``)::

    n_tensors  varint                 number of tensors (a cheap check against the caller's shapes)
    then for each tensor, names in sorted order:
      exponent   1 byte               step = 2^-exponent, exponent in 0..64
      order      1 byte               Exp-Golomb order k, 0..MAX_ORDER
      n_bytes    varint               length of the payload
      payload    n_bytes              the tensor's integers (row-major), order-k zig-zag Exp-Golomb,
                                      zero-padded to a whole byte

Tensor names and shapes are not stored: the decoder's architecture (known from the header)
provides them. Malformed data raises ``BitstreamError``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..bitstream import encode_varint
from .expgolomb import MAX_ORDER, code_bits, encode_signed
from .format import FLOAT32_EXACT_INT as _FLOAT32_EXACT_INT
from .format import MAX_STEP_EXPONENT, parse_param_ints

# Orders tried when picking the Exp-Golomb order of a tensor (Cool-chic tries 0..12).
DEFAULT_KMAX = 12

TensorGroup = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def power_of_two_steps(e_min: int = 1, e_max: int = 16) -> list[float]:
    """The step grid ``[2^-e_min, ..., 2^-e_max]``, coarsest first."""
    if not (0 <= e_min <= e_max <= MAX_STEP_EXPONENT):
        raise ValueError(f"step exponents must satisfy 0 <= e_min <= e_max <= {MAX_STEP_EXPONENT}, got {e_min}, {e_max}")
    return [2.0**-e for e in range(e_min, e_max + 1)]


def step_exponent(step: float) -> int:
    """``e`` such that ``step == 2^-e``; raises ValueError for any other step."""
    mantissa, exp = math.frexp(float(step))  # step = mantissa * 2^exp, mantissa in [0.5, 1)
    e = 1 - exp
    if mantissa != 0.5 or not (0 <= e <= MAX_STEP_EXPONENT):
        raise ValueError(f"quantisation step must be 2^-e with e in 0..{MAX_STEP_EXPONENT}, got {step!r}")
    return e


def quantize_tensor(t: torch.Tensor, step: float) -> torch.Tensor:
    """``round(t / step)`` as int64 (halves to even). Dividing by a power of two is exact."""
    step_exponent(step)
    return torch.round(t.detach() / step).to(torch.int64)


def dequantize(ints: torch.Tensor, step: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``ints * step`` in ``dtype``; exact in float32 when ``|ints| <= 2^24`` (step a power of two)."""
    step_exponent(step)
    return ints.to(dtype) * step


def fake_quantize(named_tensors: Mapping[str, torch.Tensor], steps: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The dequantised tensors the decoder will reconstruct (load them to evaluate the RD cost)."""
    return {name: dequantize(quantize_tensor(t, steps[name]), steps[name], t.dtype) for name, t in named_tensors.items()}


def best_order_bits(ints: torch.Tensor | np.ndarray, kmax: int = DEFAULT_KMAX) -> tuple[int, int]:
    """``(bits, order)``: the shortest Exp-Golomb code length of ``ints`` over orders 0..kmax."""
    arr = ints.detach().cpu().numpy() if isinstance(ints, torch.Tensor) else np.asarray(ints)
    best = (-1, -1)
    for k in range(kmax + 1):
        bits = code_bits(arr, k)
        if best[0] < 0 or bits < best[0]:
            best = (bits, k)
    return best


def default_bits(int_tensors: Sequence[torch.Tensor]) -> float:
    """Payload bits of a group as ``encode_params`` would write them (best order per tensor, no
    byte padding or per-tensor header: those add at most ~4 bytes per tensor whatever the step)."""
    return float(sum(best_order_bits(t)[0] for t in int_tensors))


def _encodable(ints: Sequence[torch.Tensor]) -> bool:
    """False when a step is so fine that some integer loses float32 exactness (> 2^24)."""
    return all(t.numel() == 0 or int(t.abs().max()) <= _FLOAT32_EXACT_INT for t in ints)


def _tensor_list(params: TensorGroup) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        return [params]
    if isinstance(params, Mapping):
        return [params[name] for name in sorted(params)]
    return list(params)


@dataclass(frozen=True)
class StepChoice:
    """Result of an RD step search: the chosen step(s) and the numbers behind the choice."""

    step: float | dict[str, float]
    distortion: float
    bits: float
    cost: float
    table: list[tuple[object, float, float, float]] = field(default_factory=list, repr=False)
    """Every candidate tried: (step or steps, distortion, bits, cost)."""


def choose_step(
    params: TensorGroup,
    candidate_steps: Iterable[float],
    distortion_fn: Callable[[float], float],
    lmbda: float,
    bits_fn: Callable[[Sequence[torch.Tensor]], float] | None = None,
) -> StepChoice:
    """RD search of the quantisation step of one parameter group.

    For each candidate step the group is quantised, ``bits_fn`` (default: Exp-Golomb bits at the
    best order, per tensor) gives its rate and ``distortion_fn(step)`` — provided by the caller,
    who loads the dequantised weights and evaluates the model — its distortion. The step with the
    smallest ``distortion + lmbda * bits`` wins; on ties the coarser step (fewer bits) wins.
    ``lmbda`` must already include any normalisation (e.g. Cool-chic's ``λ / N_pix``).
    """
    tensors = _tensor_list(params)
    steps = sorted({float(s) for s in candidate_steps}, reverse=True)
    if not steps:
        raise ValueError("choose_step needs at least one candidate step")
    bits_fn = bits_fn or default_bits
    table: list[tuple[object, float, float, float]] = []
    best: tuple[float, float, float, float] | None = None
    for step in steps:
        step_exponent(step)
        ints = [quantize_tensor(t, step) for t in tensors]
        if not _encodable(ints):
            continue
        bits = float(bits_fn(ints))
        dist = float(distortion_fn(step))
        cost = dist + lmbda * bits
        table.append((step, dist, bits, cost))
        if best is None or cost < best[3]:
            best = (step, dist, bits, cost)
    if best is None:
        raise ValueError("choose_step: every candidate step is too fine (integers beyond 2^24)")
    return StepChoice(step=best[0], distortion=best[1], bits=best[2], cost=best[3], table=table)


def choose_steps(
    groups: Mapping[str, TensorGroup],
    candidate_steps: Mapping[str, Iterable[float]],
    distortion_fn: Callable[[dict[str, float]], float],
    lmbda: float,
    bits_fn: Callable[[Sequence[torch.Tensor]], float] | None = None,
) -> StepChoice:
    """Exhaustive joint search over several groups (Cool-chic tries every (Δw, Δb) pair of a module).

    ``distortion_fn`` receives ``{group: step}``; the rate is the sum of the groups' bits. The cost
    grows as the product of the grid sizes, so keep the grids short on CPU.
    """
    bits_fn = bits_fn or default_bits
    names = sorted(groups)
    grids = {n: sorted({float(s) for s in candidate_steps[n]}, reverse=True) for n in names}
    bits_cache: dict[tuple[str, float], float] = {}
    for n in names:
        if not grids[n]:
            raise ValueError(f"choose_steps: no candidate steps for group {n!r}")
        tensors = _tensor_list(groups[n])
        for s in grids[n]:
            step_exponent(s)
            ints = [quantize_tensor(t, s) for t in tensors]
            if _encodable(ints):
                bits_cache[(n, s)] = float(bits_fn(ints))
        grids[n] = [s for s in grids[n] if (n, s) in bits_cache]
        if not grids[n]:
            raise ValueError(f"choose_steps: every candidate step of group {n!r} is too fine (integers beyond 2^24)")
    table: list[tuple[object, float, float, float]] = []
    best: tuple[dict[str, float], float, float, float] | None = None
    for combo in itertools.product(*(grids[n] for n in names)):
        chosen = dict(zip(names, combo))
        bits = sum(bits_cache[(n, s)] for n, s in chosen.items())
        dist = float(distortion_fn(dict(chosen)))
        cost = dist + lmbda * bits
        table.append((chosen, dist, bits, cost))
        if best is None or cost < best[3]:
            best = (chosen, dist, bits, cost)
    assert best is not None  # every grid is non-empty here
    return StepChoice(step=best[0], distortion=best[1], bits=best[2], cost=best[3], table=table)


def group_parameters(module: nn.Module, prefix: str = "") -> dict[str, dict[str, torch.Tensor]]:
    """Splits a module's parameters into ``{prefix + "weight": {...}, prefix + "bias": {...}}``.

    Why: weights and biases have very different dynamic ranges, so each gets its own step.
    Parameter names keep ``prefix`` so that groups of several modules can share one dict.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {f"{prefix}weight": {}, f"{prefix}bias": {}}
    for name, p in module.named_parameters():
        kind = "bias" if name.rsplit(".", 1)[-1] == "bias" else "weight"
        groups[f"{prefix}{kind}"][f"{prefix}{name}"] = p
    return {k: v for k, v in groups.items() if v}


@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor as stored in the stream."""

    ints: torch.Tensor
    step: float
    order: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.ints, self.step, dtype)


def encode_params(
    named_tensors: Mapping[str, torch.Tensor],
    steps: Mapping[str, float],
    kmax: int = DEFAULT_KMAX,
) -> bytes:
    """Serialises the tensors (sorted by name), each with its step and best Exp-Golomb order."""
    missing = sorted(set(named_tensors) - set(steps))
    if missing:
        raise ValueError(f"encode_params: no quantisation step for {missing}")
    if not 0 <= kmax <= MAX_ORDER:
        raise ValueError(f"encode_params: kmax must be in 0..{MAX_ORDER}, got {kmax}")
    out = bytearray(encode_varint(len(named_tensors)))
    for name in sorted(named_tensors):
        step = float(steps[name])
        exponent = step_exponent(step)
        ints = quantize_tensor(named_tensors[name], step).reshape(-1).cpu().numpy()
        if ints.size and int(np.abs(ints).max()) > _FLOAT32_EXACT_INT:
            raise ValueError(f"encode_params: step {step} is too fine for {name!r} (|int| > 2^24 loses float32 exactness)")
        _, order = best_order_bits(ints, kmax)
        payload = encode_signed(ints, order)
        out += bytes((exponent, order)) + encode_varint(len(payload)) + payload
    return bytes(out)


def parse_params(data: bytes, shapes: Mapping[str, Sequence[int]]) -> dict[str, QuantizedTensor]:
    """Reads the integers, steps and orders written by ``encode_params`` (:func:`.format.parse_param_ints`)."""
    return {name: QuantizedTensor(torch.from_numpy(ints), 2.0**-exponent, order)
            for name, (ints, exponent, order) in parse_param_ints(data, shapes).items()}


def decode_params(
    data: bytes,
    shapes: Mapping[str, Sequence[int]],
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Decodes ``encode_params`` output into dequantised tensors, bit-exact with ``fake_quantize``."""
    return {name: q.dequantize(dtype) for name, q in parse_params(data, shapes).items()}
