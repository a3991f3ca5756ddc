"""Latent pyramid, upsampling, Cool-chic synthesis and LotteryCodec's seeded masked network."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from ulbc.errors import ConfigError
from ulbc.overfit.synthesis import (
    CoolChicSynthesis,
    LatentPyramid,
    LotteryArchitecture,
    LotterySynthesis,
    Upsampler,
    parse_layers,
    random_weights,
)

HOP = "48-1-linear-relu,3-1-linear-none,3-3-residual-relu,3-3-residual-none"


def test_pyramid_covers_odd_sizes():
    pyramid = LatentPyramid(5, 7, 3)
    assert pyramid.shapes == [(5, 7), (3, 4), (2, 2)]
    assert all(float(g.detach().abs().sum()) == 0 for g in pyramid.grids)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("size", [(16, 16), (13, 9), (1, 1)])
def test_upsampler_shapes_and_constants(shared, size):
    pyramid = LatentPyramid(*size, 4)
    grids = [torch.full_like(g, float(i + 1)) for i, g in enumerate(pyramid.grids)]
    stack = Upsampler(4, shared=shared)(grids)
    assert stack.shape == (1, 4, *size)
    for channel in range(4):  # a constant grid stays constant at every resolution
        assert torch.allclose(stack[0, channel], torch.full(size, float(channel + 1)), atol=1e-5)
    assert len(Upsampler(4, shared=shared).halves) == (1 if shared else 3)


def test_layer_strings():
    specs = parse_layers(HOP)
    assert [(s.out_channels, s.kernel, s.residual, s.relu) for s in specs] == [
        (48, 1, False, True), (3, 1, False, False), (3, 3, True, True), (3, 3, True, False)]
    for bad in ["48-2-linear-relu,3-1-linear-none", "48-1-dense-relu,3-1-linear-none", "48-1-linear-relu"]:
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_coolchic_synthesis_forward_and_macs():
    gen = torch.Generator().manual_seed(0)
    synth = CoolChicSynthesis(7, HOP, gen)
    out = synth(torch.randn(1, 7, 12, 10, generator=gen))
    assert out.shape == (1, 3, 12, 10)
    assert synth.macs_per_pixel() == 7 * 48 + 48 * 3 + 2 * 3 * 3 * 9 + 7 * 3
    with pytest.raises(ConfigError, match="residual"):
        CoolChicSynthesis(7, "8-3-residual-relu,3-1-linear-none", gen)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


SHAPES = [(32, 2), (24, 38), (16, 33), (3, 73)]


def test_random_weights_are_reproducible_across_processes_and_threads():
    local = _digest(random_weights(SHAPES, 1234))
    assert local != _digest(random_weights(SHAPES, 1235))
    code = (
        "import sys, torch, hashlib; torch.set_num_threads(int(sys.argv[1]));"
        "from ulbc.overfit.synthesis import random_weights;"
        f"ws = random_weights({SHAPES!r}, 1234); h = hashlib.sha256();"
        "[h.update(w.contiguous().numpy().tobytes()) for w in ws]; print(h.hexdigest())"
    )
    for threads in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, threads], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == local


def test_lottery_mask_ratio_gradients_and_decoded_masks():
    arch = LotteryArchitecture(n_grids=3)
    net = LotterySynthesis(arch, seed=7, keep_ratio=0.7)
    masks = net.masks()
    kept = sum(float(m.detach().sum()) for m in masks)
    assert kept == pytest.approx(0.7 * net.n_weights, abs=1)
    stack = torch.randn(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    out = net(stack)
    assert out.shape == (1, 3, 9, 11) and float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    out.mean().backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in net.scores)
    assert net.modulation.conv0.weight.grad is not None
    assert all(not w.requires_grad for w in net.random_weights())
    # The decoder has masks, not scores: the same masks give the same image.
    decoder = LotterySynthesis(arch, seed=7, keep_ratio=0.7)
    decoder.load_state_dict(net.state_dict())
    decoder.set_masks([m.detach() for m in masks])
    with torch.no_grad():
        assert torch.equal(decoder(stack), net(stack))
    with pytest.raises(ConfigError):
        LotterySynthesis(arch, seed=7, keep_ratio=0.0)


def test_lottery_initialisation_does_not_touch_the_global_rng():
    arch = LotteryArchitecture(n_grids=3)
    torch.manual_seed(0)
    a = LotterySynthesis(arch, seed=3, keep_ratio=0.5).state_dict()
    torch.manual_seed(99)
    b = LotterySynthesis(arch, seed=3, keep_ratio=0.5).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
