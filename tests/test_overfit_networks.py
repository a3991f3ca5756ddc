"""Overfitted-codec internals: fixed-point arithmetic, ARM contexts and latent range coding, the
batched networks, and agreement between the float model and the decoder's exact integer path."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ulbc.errors import BitstreamError, ConfigError
from ulbc.overfit import fixedpoint as fx
from ulbc.overfit.arm import (
    QuantizedARM,
    coding_plan,
    context_offsets,
    decode_latents,
    encode_latents,
    gather_contexts,
    laplace_bits,
    wavefront_stride,
)
from ulbc.overfit.model import (
    Architecture,
    OverfittedModel,
    _fake_quantized,
    evaluate_hard,
    latent_integers,
    model_slice,
    reconstruct,
)
from ulbc.overfit.networks import (
    LotteryShape,
    Upsampler,
    grid_shape,
    parse_layers,
    pixel_coordinates,
    random_weights,
)
from ulbc.overfit.stream import to_qparams
from ulbc.overfit.nnquant import encode_params


# -- fixed point ---------------------------------------------------------------------------------------
def test_round_shift_rounds_halves_up_and_is_exact():
    v = torch.tensor([-5.0, -4.0, -3.0, 3.0, 4.0, 5.0, 2.0**51 + 2], dtype=torch.float64)
    assert fx.round_shift(v, 1).tolist() == [-2.0, -2.0, -1.0, 2.0, 2.0, 3.0, 2.0**50 + 1]
    assert fx.round_shift(v, 0).tolist() == v.tolist()
    assert fx.round_shift(v[:2], -3).tolist() == [-40.0, -32.0]


def test_fixed_linear_matches_float_and_refuses_overflow():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 50, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(1, 4, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    w_int, b_int = torch.round(w * 2**8), torch.round(b * 2**12)
    out = fx.linear(fx.to_fixed(x), w_int, 8, b_int, 12)
    ref = fx.to_fixed(x) / fx.ONE @ (w_int[0] / 2**8).T + b_int / 2**12
    assert torch.all((out / fx.ONE - ref).abs() <= 1 / fx.ONE)
    assert torch.equal(out, torch.round(out))
    with pytest.raises(fx.FixedPointOverflow):
        fx.linear(torch.full((1, 2, 7), 2.0**40, dtype=torch.float64), torch.full((1, 1, 7), 2.0**14, dtype=torch.float64), 8)


def test_gelu_and_tanh_tables():
    x = torch.arange(-9 * 4096, 9 * 4096, 37, dtype=torch.float64)
    ref = F.gelu(x / fx.ONE) * fx.ONE
    assert float((fx.gelu(x) - ref).abs().max()) <= 0.5 + 1e-6
    levels = fx.tanh_to_uint8(x)
    assert float((levels - 127.5 * (torch.tanh(x / fx.ONE) + 1)).abs().max()) <= 0.5 + 1e-9
    assert levels.min() == 0 and levels.max() == 255


# -- ARM -----------------------------------------------------------------------------------------------
def test_context_offsets_are_causal_and_nearest_first():
    offsets = context_offsets(24)
    assert offsets[:2] == ((-1, 0), (0, -1))
    assert all(dr < 0 or dc < 0 for dr, dc in offsets) and len(set(offsets)) == 24
    assert wavefront_stride(24) == 4 and wavefront_stride(2) == 1
    with pytest.raises(ValueError):
        context_offsets(41)


@pytest.mark.parametrize("n_context,n_coarse", [(2, 0), (16, 0), (24, 0), (12, 5), (4, 9)])
def test_coding_plan_agrees_with_training_contexts_and_is_decodable(n_context, n_coarse):
    shapes = [(5, 7), (3, 4), (2, 2), (1, 1)]
    grids = [torch.arange(1, 1 + h * w, dtype=torch.float64).reshape(1, h, w) * (g + 1) for g, (h, w) in enumerate(shapes)]
    plan = coding_plan(shapes, n_context, n_coarse)
    flat = np.concatenate([g.reshape(-1).numpy() for g in grids] + [np.zeros(1)])
    inverse = np.empty_like(plan.order)
    inverse[plan.order] = np.arange(plan.n_elements)
    trained = torch.cat([gather_contexts(g, n_context, grids[i + 1] if i + 1 < len(grids) else None, n_coarse)[0]
                         for i, g in enumerate(grids)]).numpy()
    assert np.array_equal(flat[plan.contexts][inverse], trained)
    # Every context element is decoded in an earlier wavefront (or is the zero slot).
    step_of = np.empty(plan.n_elements + 1, dtype=np.int64)
    for s, (a, b) in enumerate(zip(plan.step_bounds[:-1], plan.step_bounds[1:])):
        step_of[plan.order[a:b]] = s
    step_of[-1] = -1
    for s, (a, b) in enumerate(zip(plan.step_bounds[:-1], plan.step_bounds[1:])):
        assert np.all(step_of[plan.contexts[a:b]] < s)


def test_laplace_bits_are_a_distribution():
    values = torch.arange(-3000, 3001, dtype=torch.float64)
    for mean, log_scale in [(0.0, -4.6), (0.3, 0.0), (-7.2, 2.0), (50.0, 5.0)]:
        bits = laplace_bits(values, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
        total = float(torch.sum(2.0 ** -bits))  # every value gets at least the 2^-16 floor
        assert 1 - 2e-3 <= total <= 1 + len(values) * 2.0**-16, (mean, log_scale, total)


def _random_arm(n_context: int, n_hidden: int, seed: int, n_coarse: int = 0) -> QuantizedARM:
    gen = torch.Generator().manual_seed(seed)
    width = n_context + n_coarse
    layers = []
    for i in range(n_hidden + 1):
        out = 2 if i == n_hidden else width
        w = torch.round(torch.randn(out, width, generator=gen, dtype=torch.float64) * 2**6 / width)
        b = torch.round(torch.randn(out, generator=gen, dtype=torch.float64) * 2**4)
        layers.append(((w, 6), (b, 4)))
    return QuantizedARM(layers, n_context, n_coarse)


@pytest.mark.parametrize("n_coarse", [0, 5])
def test_latent_range_coding_round_trip_and_damage(n_coarse):
    shapes = [(9, 13), (5, 7), (3, 4)]
    rng = np.random.default_rng(1)
    grids = [np.rint(rng.laplace(0, 2.0 / (i + 1), s)).astype(np.int64) for i, s in enumerate(shapes)]
    arm = _random_arm(12, 2, 3, n_coarse)
    data, bound = encode_latents(grids, arm)
    assert bound == max(int(np.abs(g).max()) for g in grids)
    decoded = decode_latents(data, shapes, bound, arm)
    assert all(np.array_equal(a, b) for a, b in zip(grids, decoded))
    # All-zero latents cost nothing.
    assert encode_latents([np.zeros(s, dtype=np.int64) for s in shapes], arm) == (b"", 0)
    with pytest.raises(BitstreamError):
        decode_latents(data[:-3], shapes, bound, arm)
    with pytest.raises(BitstreamError):
        decode_latents(data + b"\0\0\0\0" * 8, shapes, bound, arm)


# -- networks ------------------------------------------------------------------------------------------
def test_grid_shapes_cover_odd_sizes():
    assert [grid_shape(5, 7, i) for i in range(4)] == [(5, 7), (3, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("size", [(16, 16), (13, 9), (1, 1)])
def test_upsampler_keeps_constants(shared, size):
    shapes = [grid_shape(*size, i) for i in range(4)]
    up = Upsampler(2, 4, shared)
    stack = up([torch.full((2, *s), float(i + 1)) for i, s in enumerate(shapes)])
    assert stack.shape == (2, *size, 4)
    for channel in range(4):
        assert torch.allclose(stack[..., channel], torch.full((2, *size), float(channel + 1)), atol=1e-5)


def test_layer_strings():
    specs = parse_layers("48-1-linear-relu,3-1-linear-none,3-3-residual-relu,3-3-residual-none")
    assert [(s.out_channels, s.kernel, s.residual, s.relu) for s in specs] == [
        (48, 1, False, True), (3, 1, False, False), (3, 3, True, True), (3, 3, True, False)]
    for bad in ["48-2-linear-relu,3-1-linear-none", "48-1-dense-relu,3-1-linear-none", "48-1-linear-relu"]:
        with pytest.raises(ConfigError):
            parse_layers(bad)
    with pytest.raises(ConfigError, match="residual"):
        OverfittedModel(Architecture("coolchic", synthesis="8-3-residual-relu,3-1-linear-none"), 4, 4, [0])


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_random_weights_are_reproducible_across_processes_and_threads():
    shapes = LotteryShape().layer_shapes
    local = _digest(random_weights(shapes, 1234))
    assert local != _digest(random_weights(shapes, 1235))
    code = (
        "import sys, torch, hashlib; torch.set_num_threads(int(sys.argv[1]));"
        "from ulbc.overfit.networks import random_weights;"
        f"ws = random_weights({shapes!r}, 1234); h = hashlib.sha256();"
        "[h.update(w.contiguous().numpy().tobytes()) for w in ws]; print(h.hexdigest())"
    )
    for threads in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, threads], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == local


def test_pixel_coordinates_span_minus_one_to_one():
    c = pixel_coordinates(3, 5) / fx.ONE
    assert c[:, 0].reshape(3, 5)[0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert c[:, 1].reshape(3, 5)[:, 0].tolist() == [-1.0, 0.0, 1.0]
    assert pixel_coordinates(1, 1).tolist() == [[-fx.ONE, -fx.ONE]]


def test_lottery_masks_keep_ratio_and_gradients():
    model = OverfittedModel(Architecture("lottery", n_grids=3), 9, 11, [7, 8], keep_ratio=0.7)
    masks = model.synthesis.masks()
    n = LotteryShape(3).n_weights
    for b in range(2):
        assert sum(float(m[b].detach().sum()) for m in masks) == pytest.approx(0.7 * n, abs=1)
    image, bits = model(model.quantized_latents("ste"))
    assert image.shape == (2, 9, 11, 3) and float(image.detach().min()) >= 0 and float(image.detach().max()) <= 1
    (image.mean() + bits.sum()).backward()
    assert all(float(s.grad.abs().sum()) > 0 for s in model.synthesis.scores)
    assert all(not w.requires_grad for w in model.synthesis.random_weights())
    # Two models with two seeds have two different random networks.
    w0 = model.synthesis.random_weights()[1]
    assert not torch.equal(w0[0], w0[1])


def test_initialisation_is_per_model_and_ignores_the_global_rng():
    arch = Architecture("lottery", n_grids=3)
    torch.manual_seed(0)
    pair = OverfittedModel(arch, 8, 8, [3, 4]).state_dict()
    torch.manual_seed(99)
    single = OverfittedModel(arch, 8, 8, [4]).state_dict()
    for key, value in single.items():
        assert torch.equal(pair[key][1:], value), key


def test_select_keeps_the_chosen_models():
    model = OverfittedModel(Architecture("coolchic", n_grids=3), 6, 6, [1, 2, 3])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.arange(3, dtype=p.dtype).reshape(-1, *([1] * (p.dim() - 1))))
    chosen = model.select([2, 0])
    assert chosen.seeds == [3, 1]
    for (name, p), q in zip(model.named_parameters(), chosen.parameters()):
        assert torch.equal(q[0], p[2]) and torch.equal(q[1], p[0]), name


@pytest.mark.parametrize("kind", ["coolchic", "lottery"])
def test_fixed_point_decoder_matches_the_float_model(kind):
    """With the same quantised networks and latents, the decoder's integer path and the float
    model agree to within one 8-bit level (fixed-point rounding), and the integer path is exact."""
    torch.manual_seed(0)
    h, w = 23, 31
    model = OverfittedModel(Architecture(kind, n_grids=4, arm_context=8), h, w, [5], keep_ratio=0.6)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("latents."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif not name.startswith("synthesis.scores."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    exps = {n: 10 for n in model.network_names()}
    network = {n: _fake_quantized(t[None], torch.tensor([exps[n]]))[0] for n, t in model_slice(model, 0).items()}
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, t in network.items():
            params[n].copy_(t[None])
        image, _ = model(model.quantized_latents("hard"))
    float_levels = torch.round(image[0].clamp(0, 1) * 255).numpy()
    q = to_qparams(encode_params(network, {n: 2.0 ** -e for n, e in exps.items()}), {n: t.shape for n, t in network.items()})
    masks = [m[0].detach().numpy() for m in model.synthesis.masks()] if kind == "lottery" else None
    decoded = reconstruct(model.arch, h, w, q, latent_integers(model, 0), masks, model.seeds[0])
    diff = np.abs(decoded.astype(int) - float_levels.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02
    assert np.array_equal(decoded, reconstruct(model.arch, h, w, q, latent_integers(model, 0), masks, model.seeds[0]))


def test_hard_evaluation_reports_per_model_numbers():
    model = OverfittedModel(Architecture("coolchic", n_grids=3), 8, 8, [1, 2])
    target = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    mse, bits = evaluate_hard(model, target)
    assert mse.shape == (2,) and bits.shape == (2,) and math.isfinite(float(mse.sum()))


def test_latent_payload_garbage_is_a_bitstream_error():
    shapes = [(16, 16), (8, 8)]
    arm = QuantizedARM([((torch.zeros(2, 8, dtype=torch.float64), 0), (torch.zeros(2, dtype=torch.float64), 0))], 8)
    # Scale e^-4.6: almost all mass on 0, so random words soon describe an impossible symbol.
    refused = 0
    for seed in range(20):
        data = np.random.default_rng(seed).integers(0, 2**32, 64, dtype=np.uint64).astype("<u4").tobytes()
        try:
            decode_latents(data, shapes, 2, arm)
        except BitstreamError:
            refused += 1
    assert refused > 0
