"""Network-parameter quantisation and serialisation (ulbc.overfit.nnquant)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ulbc.bitstream import encode_varint
from ulbc.errors import BitstreamError
from ulbc.overfit.expgolomb import code_bits
from ulbc.overfit.nnquant import (
    best_order_bits,
    choose_step,
    choose_steps,
    decode_params,
    dequantize,
    encode_params,
    fake_quantize,
    group_parameters,
    parse_params,
    power_of_two_steps,
    quantize_tensor,
    step_exponent,
)


def _mlp(seed: int = 0) -> nn.Module:
    model = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    gen = torch.Generator().manual_seed(seed)  # reproducible toy model, global RNG untouched
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def _named(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _steps(named: dict[str, torch.Tensor], w: float = 2.0**-8, b: float = 2.0**-12) -> dict[str, float]:
    return {n: (b if n.endswith("bias") else w) for n in named}


def test_step_grid_and_exponent() -> None:
    grid = power_of_two_steps(1, 16)
    assert grid[0] == 0.5 and grid[-1] == 2.0**-16 and len(grid) == 16
    assert [step_exponent(s) for s in grid] == list(range(1, 17))
    assert step_exponent(1.0) == 0
    for bad in (0.3, 2.0, 0.0, -0.5, 2.0**-65):
        with pytest.raises(ValueError):
            step_exponent(bad)


def test_quantize_dequantize_exact() -> None:
    t = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for e in (1, 6, 12, 16):
        step = 2.0**-e
        q = quantize_tensor(t, step)
        assert q.dtype == torch.int64
        d = dequantize(q, step)
        assert d.dtype == torch.float32
        # ints * 2^-e is exact: dividing back gives the integers exactly, error <= step / 2.
        assert torch.equal((d / step).to(torch.int64), q)
        assert float((d - t).abs().max()) <= step / 2


def test_round_trip_small_mlp_bit_exact() -> None:
    named = _named(_mlp())
    steps = _steps(named)
    data = encode_params(named, steps)
    shapes = {n: tuple(t.shape) for n, t in named.items()}
    decoded = decode_params(data, shapes)
    expected = fake_quantize(named, steps)
    assert set(decoded) == set(named)
    for n in named:
        assert decoded[n].dtype == torch.float32 and decoded[n].shape == named[n].shape
        assert torch.equal(decoded[n], expected[n]), n
        assert float((decoded[n] - named[n]).abs().max()) <= steps[n] / 2
    parsed = parse_params(data, shapes)
    for n, q in parsed.items():
        assert q.step == steps[n] and torch.equal(q.ints, quantize_tensor(named[n], steps[n]))
        assert q.order == best_order_bits(q.ints)[1]


def test_round_trip_loads_into_model() -> None:
    model = _mlp(3)
    named = _named(model)
    steps = _steps(named, 2.0**-10, 2.0**-14)
    shapes = {n: tuple(t.shape) for n, t in named.items()}
    other = _mlp(4)
    other.load_state_dict(decode_params(encode_params(named, steps), shapes))
    x = torch.randn(32, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(other(x), model(x), atol=1e-2)


def test_bit_count_matches_bytes() -> None:
    named = _named(_mlp(5))
    steps = _steps(named, 2.0**-9, 2.0**-13)
    data = encode_params(named, steps)
    parsed = parse_params(data, {n: tuple(t.shape) for n, t in named.items()})
    payload_bits = 0
    header_bits = 8 * len(encode_varint(len(named)))
    for n in sorted(named):
        q = parsed[n]
        bits = code_bits(q.ints.numpy(), q.order)
        assert bits == best_order_bits(q.ints)[0]
        payload_bits += bits
        header_bits += 8 * (2 + len(encode_varint(math.ceil(bits / 8))))
    slack = 8 * len(data) - header_bits - payload_bits
    assert 0 <= slack <= 7 * len(named)


def test_rd_search_coarser_step_for_larger_lambda() -> None:
    weights = torch.randn(400, generator=torch.Generator().manual_seed(2)) * 0.3
    grid = power_of_two_steps(1, 16)

    def mse(step: float) -> float:
        return float(((dequantize(quantize_tensor(weights, step), step) - weights) ** 2).mean())

    chosen = [choose_step(weights, grid, mse, lmbda).step for lmbda in (0.0, 1e-9, 1e-6, 1e-4, 1e-2, 1.0)]
    assert chosen[0] == 2.0**-16  # no rate penalty: finest step
    assert chosen[-1] == 0.5  # rate dominates: coarsest step
    assert all(a <= b for a, b in zip(chosen, chosen[1:])), chosen
    assert len(set(chosen)) >= 3
    res = choose_step(weights, grid, mse, 1e-6)
    assert len(res.table) == len(grid)
    assert res.cost == min(row[3] for row in res.table)
    assert res.cost == pytest.approx(res.distortion + 1e-6 * res.bits)


def test_rd_search_skips_steps_beyond_float32_exactness() -> None:
    big = torch.tensor([3.0, -2.5])
    res = choose_step(big, [2.0**-20, 2.0**-23, 2.0**-24], lambda s: 0.0, 1.0)
    assert res.step == 2.0**-20 and len(res.table) == 1
    with pytest.raises(ValueError):
        choose_step(big, [2.0**-24], lambda s: 0.0, 1.0)


def test_joint_search_per_module_groups() -> None:
    model = _mlp(6)
    groups = group_parameters(model, prefix="synth.")
    assert set(groups) == {"synth.weight", "synth.bias"}
    assert all(n.endswith("bias") for n in groups["synth.bias"])
    named = {n: t.detach() for g in groups.values() for n, t in g.items()}
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(1))
    ref = model(x).detach()
    probe = _mlp(7)

    def distortion(steps: dict[str, float]) -> float:
        per_tensor = {n: steps["synth.bias" if n.endswith("bias") else "synth.weight"] for n in named}
        q = fake_quantize(named, per_tensor)
        probe.load_state_dict({n.removeprefix("synth."): t for n, t in q.items()})
        with torch.no_grad():
            return float(((probe(x) - ref) ** 2).mean())

    grids = {"synth.weight": power_of_two_steps(2, 10), "synth.bias": power_of_two_steps(2, 12)}
    fine = choose_steps(groups, grids, distortion, 1e-9)
    coarse = choose_steps(groups, grids, distortion, 1e-3)
    assert len(fine.table) == 9 * 11
    for g in grids:
        assert coarse.step[g] >= fine.step[g]
    assert coarse.bits < fine.bits


def _sample() -> tuple[bytes, dict[str, tuple[int, ...]]]:
    named = _named(_mlp(8))
    return encode_params(named, _steps(named)), {n: tuple(t.shape) for n, t in named.items()}


def test_truncated_data_raises() -> None:
    data, shapes = _sample()
    for cut in (0, 1, 2, 3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            decode_params(data[:cut], shapes)


def test_corrupt_data_raises() -> None:
    data, shapes = _sample()
    with pytest.raises(BitstreamError):
        decode_params(data + b"\x00", shapes)  # trailing byte
    with pytest.raises(BitstreamError):
        decode_params(data, {**shapes, "extra": (3,)})  # wrong tensor count
    bad = bytearray(data)
    bad[1] = 200  # step exponent of the first tensor out of range
    with pytest.raises(BitstreamError):
        decode_params(bytes(bad), shapes)
    bad = bytearray(data)
    bad[2] = 99  # Exp-Golomb order out of range
    with pytest.raises(BitstreamError):
        decode_params(bytes(bad), shapes)
    bad = bytearray(data)
    bad[3] = 0x7F  # first payload length no longer matches
    with pytest.raises(BitstreamError):
        decode_params(bytes(bad), shapes)
    # Wrong shapes (element counts) make the payload lengths disagree.
    first = sorted(shapes)[0]
    wrong = {**shapes, first: (shapes[first][0] + 1, *shapes[first][1:])}
    with pytest.raises(BitstreamError):
        decode_params(data, wrong)


def test_random_corruption_never_hangs_or_crashes_otherwise() -> None:
    data, shapes = _sample()
    rng = np.random.default_rng(0)
    for _ in range(200):
        bad = bytearray(data)
        for pos in rng.integers(0, len(bad), 3):
            bad[pos] ^= int(rng.integers(1, 256))
        try:
            out = decode_params(bytes(bad), shapes)
        except BitstreamError:
            continue
        assert set(out) == set(shapes)  # a corruption that still parses yields well-formed tensors


def test_encode_params_validation() -> None:
    named = _named(_mlp())
    with pytest.raises(ValueError):
        encode_params(named, {})
    with pytest.raises(ValueError):
        encode_params(named, {n: 0.3 for n in named})
    assert decode_params(encode_params({}, {}), {}) == {}
