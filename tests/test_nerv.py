"""The NeRV building blocks: architecture sizing and header, seeded random weights, nested supermasks
and their straight-through gradients, the integer entropy coder, quantisation, training, MAC count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ulbc.errors import BitstreamError
from ulbc.nerv import entropy, stream
from ulbc.nerv.arch import Architecture, build_architecture, choose_strides
from ulbc.nerv.model import (DenseNeRV, SupermaskNeRV, frame_positions, mask_counts, nested_levels,
                             positional_encoding, random_weights)
from ulbc.nerv.training import TrainSettings, clip_mse, train


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_arch(height: int = 32, width: int = 48, channels: int = 8) -> Architecture:
    return build_architecture(height, width, channels=channels, stem_dim=16, pe_levels=16, pe_base=1.25, base_size=3,
                              reduction=1.5, min_width=4, head_kernel=3)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """Four 32x48 frames of a real photo, shifted to simulate motion: (T, 3, H, W) in [0, 1]."""
    from skimage.data import astronaut

    image = astronaut()
    frames = np.stack([image[100 + 3 * i : 132 + 3 * i, 180 + 2 * i : 228 + 2 * i] for i in range(4)])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


# -- architecture --------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, base, strides", [
    (1080, 1920, 9, (5, 3, 2, 2, 2)),  # NeRV's own 9x16 base for 1080p
    (120, 160, 3, (5, 2, 2, 2)),
    (240, 320, 3, (3, 3, 3, 3)),  # 243x324 cropped: 2.5 % waste buys the smaller 3x4 base
    (32, 48, 3, (2, 2, 2)),
    (288, 352, 3, (3, 3, 2, 2, 2)),
    (8, 8, 3, (2,)),
    (8, 8, 9, ()),
])
def test_strides_follow_the_frame_size(height, width, base, strides):
    assert choose_strides(height, width, base) == strides
    arch = build_architecture(height, width, channels=4, stem_dim=4, pe_levels=4, pe_base=1.25, base_size=base,
                              reduction=2, min_width=2, head_kernel=1)
    h0, w0 = arch.base_shape
    assert h0 * arch.scale >= height and w0 * arch.scale >= width
    assert h0 * w0 * arch.scale**2 <= 1.05 * height * width


def test_architecture_header_round_trip_and_bounds():
    arch = tiny_arch()
    data = arch.to_bytes()
    parsed, pos = Architecture.from_bytes(data, 0, arch.height, arch.width)
    assert parsed == arch and pos == len(data)
    huge = Architecture(1080, 1920, 80, 1.25, 4096, (5, 3, 2, 2, 2), (4096,) * 6, 3)
    with pytest.raises(BitstreamError, match="parameters|feature map"):
        Architecture.from_bytes(huge.to_bytes(), 0, 1080, 1920)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            Architecture.from_bytes(data[:cut], 0, arch.height, arch.width)


def test_network_output_has_the_frame_size_and_range(clip):
    arch = tiny_arch()
    model = DenseNeRV(arch, seed=0)
    pe = positional_encoding(frame_positions(4), arch.pe_levels, arch.pe_base)
    assert pe.shape == (4, 32) and frame_positions(1) == [0.0] and frame_positions(3) == [0.0, 0.5, 1.0]
    assert torch.equal(pe[0, 0::2], torch.zeros(16)) and torch.equal(pe[0, 1::2], torch.ones(16))
    with torch.no_grad():
        out = model(pe)
    assert out.shape == clip.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_macs_per_pixel_matches_torch_flop_counter():
    arch = tiny_arch(channels=12)
    model = DenseNeRV(arch, seed=0)
    pe = positional_encoding([0.0], arch.pe_levels, arch.pe_base)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pe)
    # Both count the padded frame the network renders (base map x strides) before the crop; the
    # codec divides by the decoded pixels.
    assert counter.get_total_flops() == 2 * arch.macs_per_frame()
    assert arch.macs_per_pixel() == pytest.approx(arch.macs_per_frame() / (32 * 48))


# -- random weights and supermasks ---------------------------------------------------------------------
@pytest.mark.parametrize("init", ["signed", "uniform"])
def test_random_weights_come_from_the_seed_alone(init):
    arch = tiny_arch()
    torch.manual_seed(1)
    first = random_weights(arch, 1234, init)
    torch.manual_seed(999)
    torch.rand(1000)  # the global generator's state must not matter
    second = random_weights(arch, 1234, init)
    other = random_weights(arch, 1235, init)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert [tuple(w.shape) for w in first] == [layer.weight_shape for layer in arch.layers]
    values = torch.cat([w.flatten() for w in first])
    if init == "signed":
        assert set(values.unique().tolist()) == {-1.0, 1.0}
    else:
        assert float(values.abs().max()) < 1 and abs(float(values.mean())) < 0.05
    model = SupermaskNeRV(arch, 1234, [40000, 20000], init)
    assert all(torch.equal(a, b) for a, b in zip(model.random_weights(), first))


def test_nested_masks_have_the_densities_and_are_nested():
    scores = torch.rand(40, 30, generator=torch.Generator().manual_seed(0))
    scores[0, :10] = 0.5  # ties are broken by position, counts stay exact
    codes = [int(0.6 * 65535), int(0.3 * 65535), int(0.05 * 65535)]
    counts = mask_counts(scores.numel(), codes)
    assert counts == [720, 360, 60]
    levels = nested_levels(scores, counts)
    for k, count in enumerate(counts, start=1):
        mask = levels >= k
        assert int(mask.sum()) == count
        assert float(scores[mask].min()) >= float(scores[~mask].max())  # top-k of the scores
        if k > 1:
            assert bool((mask <= (levels >= k - 1)).all())  # M_k inside M_{k-1}


def test_straight_through_gradients_reach_scores_and_scales(clip):
    arch = tiny_arch()
    model = SupermaskNeRV(arch, 7, [32768, 16384, 6553])
    pe = positional_encoding(frame_positions(4), arch.pe_levels, arch.pe_base)
    loss = ((model(pe) - clip) ** 2).mean()
    loss.backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in model.scores)
    assert model.alphas.grad is not None and bool((model.alphas.grad != 0).any())
    assert all(not w.requires_grad for w in model.random_weights())
    # Frozen masks: the scores no longer get gradients, the scales and biases still do.
    model.zero_grad(set_to_none=True)
    model.freeze_levels()
    ((model(pe) - clip) ** 2).mean().backward()
    assert all(s.grad is None for s in model.scores)
    assert model.alphas.grad is not None


def test_effective_weight_is_the_level_sum_of_scales():
    arch = tiny_arch()
    model = SupermaskNeRV(arch, 3, [40000, 10000], train_biases=False)
    with torch.no_grad():
        model.alphas.copy_(torch.tensor([[0.5, 0.25]]).repeat(len(arch.layers), 1))
    model.freeze_levels()
    weights, biases = model.effective()
    assert biases == [None] * len(arch.layers)
    for w, r, v in zip(weights, model.random_weights(), model.levels()):
        expected = r * torch.tensor([0.0, 0.5, 0.75])[v]
        assert torch.equal(w, expected)


# -- entropy coding and quantisation -------------------------------------------------------------------
def test_integer_arrays_round_trip_near_their_entropy():
    rng = np.random.default_rng(0)
    weights = np.round(rng.laplace(0, 12, 20000)).clip(-127, 127).astype(np.int64)
    weights[rng.random(weights.size) < 0.4] = 0  # pruned
    arrays = [weights, np.zeros(7, np.int64), np.array([-3]), rng.integers(0, 4, 3000), np.zeros(0, np.int64),
              np.array([2, 2, 2, 9])]
    blob = entropy.encode_int_arrays(arrays)
    decoded = entropy.decode_int_arrays(blob, [a.size for a in arrays])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, decoded))
    assert 8 * len(blob) < 1.02 * entropy.empirical_bits(arrays) + 2000
    with pytest.raises(BitstreamError):
        entropy.decode_int_arrays(blob, [a.size for a in arrays][:-1])  # sizes the blob does not hold
    for cut in range(0, len(blob), 7):
        with pytest.raises(BitstreamError):
            entropy.decode_int_arrays(blob[:cut], [a.size for a in arrays])


def test_symmetric_quantisation_keeps_zeros_and_halves_the_step():
    t = torch.randn(500, generator=torch.Generator().manual_seed(0))
    t[::3] = 0
    ints, step = stream.quantize_symmetric(t, 8)
    assert int(np.abs(ints).max()) == 127 and np.all(ints[::3] == 0)
    back = stream.dequantize(ints, step, t.shape)
    assert float((back - t).abs().max()) <= step / 2 + 1e-7
    assert torch.equal(back[::3], torch.zeros_like(back[::3]))
    ints, step = stream.quantize_symmetric(torch.zeros(4), 8)
    assert step == 0.0 and np.array_equal(ints, np.zeros(4))


def test_global_pruning_removes_the_smallest_weights():
    model = DenseNeRV(tiny_arch(), seed=1)
    before = torch.cat([w.detach().flatten() for w in model.weights])
    model.prune(0.4)
    after = torch.cat([w.detach().flatten() for w in model.weights])
    pruned = after == 0
    assert int(pruned.sum()) == round(0.4 * after.numel())
    assert torch.equal(after[~pruned], before[~pruned])
    assert float(before[~pruned].abs().min()) >= float(before[pruned].abs().max())  # global, by magnitude


# -- training ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dense", "supermask"])
def test_training_raises_psnr(clip, kind):
    arch = tiny_arch()
    model = DenseNeRV(arch, 0) if kind == "dense" else SupermaskNeRV(arch, 0, [32768, 16384, 6553])
    pe = positional_encoding(frame_positions(4), arch.pe_levels, arch.pe_base)
    settings = TrainSettings(iterations=60, lr=5e-3, score_lr=0.05, batch_frames=2, eval_every=10)
    outcome = train(model, pe, clip, settings, seed=0)
    gain = 10 * math.log10(outcome.initial_mse / outcome.best_mse)
    assert gain > 5, gain
    assert clip_mse(model, pe, clip, 4) == pytest.approx(outcome.best_mse, rel=1e-5)  # best checkpoint loaded
    assert outcome.nan_restores == 0


def test_a_diverging_step_restores_the_best_parameters(clip):
    arch = tiny_arch()
    model = DenseNeRV(arch, 0)
    pe = positional_encoding(frame_positions(4), arch.pe_levels, arch.pe_base)
    target = clip.clone()
    target[1, 0, 0, 0] = float("nan")  # every step that sees frame 1 has a NaN loss
    outcome = train(model, pe, target, TrainSettings(iterations=12, lr=5e-3, batch_frames=1, eval_every=4), seed=0)
    assert outcome.nan_restores >= 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
