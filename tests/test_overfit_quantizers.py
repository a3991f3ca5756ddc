"""Latent quantisation proxies (ulbc.overfit.quantizers) and the Exp-Golomb coder (ulbc.overfit.expgolomb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ulbc.errors import BitstreamError
from ulbc.overfit.expgolomb import (
    MAX_PREFIX_ZEROS,
    BitReader,
    BitWriter,
    best_order,
    code_bits,
    code_lengths,
    decode_signed,
    encode_signed,
    unzigzag,
    zigzag,
)
from ulbc.overfit.quantizers import (
    AnnealingSchedule,
    LatentQuantizer,
    gaussian_noise,
    kumaraswamy_noise,
    soft_round,
    soft_round_conditional_mean,
    soft_round_inverse,
    ste_round,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(n: int = 2001) -> torch.Tensor:
    # Avoid exact half-integers: round() there depends on the tie rule, soft-round gives .5.
    return torch.linspace(-5.3, 5.3, n, dtype=torch.float64)


# ---------------------------------------------------------------- soft-round


def test_soft_round_tiny_temperature_is_round() -> None:
    x = _x()
    for t in (1e-6, 1e-5):  # below MIN_TEMPERATURE: exact round
        assert torch.equal(soft_round(x, t), torch.round(x)), t
    # Just above it the closed form is used; it equals round except within a few t of a half.
    away = (x - torch.floor(x) - 0.5).abs() > 0.02
    assert torch.allclose(soft_round(x, 1e-3)[away], torch.round(x)[away], atol=1e-6)


def test_soft_round_formula_matches_spec_at_moderate_t() -> None:
    x = _x(101)
    t = 0.3
    f = torch.floor(x)
    expected = f + 0.5 + torch.tanh((x - f - 0.5) / t) / (2 * np.tanh(1 / (2 * t)))
    assert torch.allclose(soft_round(x, t), expected)


def test_soft_round_large_temperature_is_identity() -> None:
    x = _x()
    assert torch.allclose(soft_round(x, 100.0), x, atol=1e-4)
    assert torch.allclose(soft_round(x, float("inf")), x)


def test_soft_round_is_continuous_and_monotone() -> None:
    x = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    y = soft_round(x, 0.2)
    d = torch.diff(y)
    assert bool((d >= 0).all())
    assert float(d.max()) < 1e-3  # no jumps at integers


@pytest.mark.parametrize("t", [0.1, 0.3, 1.0, 5.0])
def test_soft_round_inverse(t: float) -> None:
    x = _x(501)
    assert torch.allclose(soft_round_inverse(soft_round(x, t), t), x, atol=1e-6)


def test_soft_round_inverse_is_finite_at_integers_for_small_t() -> None:
    y = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float32)
    out = soft_round_inverse(y, 0.01)
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out, y, atol=0.5)


def test_conditional_mean_tends_to_identity_for_large_t() -> None:
    z = _x(101)
    assert torch.allclose(soft_round_conditional_mean(z, 1e3), z, atol=1e-3)


def test_soft_round_gradients_finite() -> None:
    for t in (1e-5, 1e-3, 0.08, 0.35, 10.0):
        x = _x(301).clone().requires_grad_(True)
        soft_round(x, t).sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()), t


def test_soft_round_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError):
        soft_round(torch.zeros(3), 0.0)


# ---------------------------------------------------------------- STE


def test_ste_round_forward_and_gradient() -> None:
    x = torch.tensor([-1.7, -0.2, 0.4, 2.6], requires_grad=True)
    y = ste_round(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


# ---------------------------------------------------------------- noise


def test_kumaraswamy_a1_is_uniform() -> None:
    n = kumaraswamy_noise((200_000,), 1.0, _gen(1))
    assert float(n.min()) >= -0.5 and float(n.max()) <= 0.5
    assert abs(float(n.mean())) < 0.005
    assert abs(float(n.var()) - 1 / 12) < 0.002
    hist = torch.histc(n, bins=10, min=-0.5, max=0.5) / n.numel()
    assert float((hist - 0.1).abs().max()) < 0.005


def test_kumaraswamy_larger_a_concentrates_near_zero() -> None:
    variances = []
    for a in (1.0, 2.0, 4.0, 8.0):
        n = kumaraswamy_noise((100_000,), a, _gen(2))
        assert float(n.min()) >= -0.5 and float(n.max()) <= 0.5
        variances.append(float(n.var()))
    assert all(v1 > v2 for v1, v2 in zip(variances, variances[1:])), variances
    # Mode at 0 (b chosen so the Kumaraswamy mode is 1/2): the central bin is the most populated.
    n = kumaraswamy_noise((100_000,), 4.0, _gen(3))
    hist = torch.histc(n, bins=11, min=-0.5, max=0.5)
    assert int(torch.argmax(hist)) == 5


def test_kumaraswamy_rejects_a_below_one() -> None:
    with pytest.raises(ValueError):
        kumaraswamy_noise((3,), 0.5, _gen())


def test_noise_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = kumaraswamy_noise((64,), 2.0, _gen(7))
    b = kumaraswamy_noise((64,), 2.0, _gen(7))
    c = kumaraswamy_noise((64,), 2.0, _gen(8))
    g1 = gaussian_noise((64,), 0.2, _gen(7))
    g2 = gaussian_noise((64,), 0.2, _gen(7))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(g1, g2)
    assert abs(float(gaussian_noise((100_000,), 0.2, _gen(9)).std()) - 0.2) < 0.005
    assert torch.equal(torch.random.get_rng_state(), before)


# ---------------------------------------------------------------- LatentQuantizer


def test_latent_quantizer_modes() -> None:
    x = (torch.randn(4, 1, 8, 8, generator=_gen(4)) * 3).requires_grad_(True)
    for mode in ("softround+noise", "softround+noise+cmean", "noise", "ste", "hard"):
        for kind in ("gaussian", "kumaraswamy"):
            q = LatentQuantizer(mode, kind)
            level = 0.2 if kind == "gaussian" else 2.0
            y1 = q(x, 0.3, level, _gen(5))
            y2 = q(x, 0.3, level, _gen(5))
            assert torch.equal(y1, y2), (mode, kind)
            assert y1.shape == x.shape
            if mode in ("ste", "hard"):
                assert torch.equal(y1.detach(), torch.round(x.detach()))
            if mode == "hard":
                assert not y1.requires_grad
            else:
                (g,) = torch.autograd.grad(y1.sum(), x)
                assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, (mode, kind)


def test_latent_quantizer_softround_noise_formula() -> None:
    x = torch.randn(100, generator=_gen(6)) * 2
    t, sigma = 0.3, 0.2
    expected = soft_round(soft_round(x, t) + gaussian_noise(x.shape, sigma, _gen(11)), t)
    assert torch.equal(LatentQuantizer("softround+noise", "gaussian")(x, t, sigma, _gen(11)), expected)


def test_latent_quantizer_noise_mode_zero_noise_is_identity_and_errors() -> None:
    x = torch.randn(10, generator=_gen(6))
    assert torch.equal(LatentQuantizer("noise")(x, 0.3, 0.0, _gen()), x)
    with pytest.raises(ValueError):
        LatentQuantizer("noise")(x, 0.3, 0.1)  # no generator
    with pytest.raises(ValueError):
        LatentQuantizer("bogus")
    with pytest.raises(ValueError):
        LatentQuantizer("noise", "laplace")


# ---------------------------------------------------------------- schedule


def test_annealing_schedule_linear_and_cosine() -> None:
    s = AnnealingSchedule(100, 0.35, 0.08, 0.22, 0.15)
    assert s(0) == (0.35, 0.22)
    assert s(100) == pytest.approx((0.08, 0.15))
    assert s(50) == pytest.approx((0.215, 0.185))
    assert s(1000) == s(100) and s(-5) == s(0)
    ts = [s.temperature(i) for i in range(101)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    c = AnnealingSchedule(100, 0.35, 0.08, 0.22, 0.15, shape="cosine")
    assert c(0) == pytest.approx((0.35, 0.22)) and c(100) == pytest.approx((0.08, 0.15))
    assert c(50) == pytest.approx(s(50))
    assert c.temperature(10) > s.temperature(10)  # cosine starts slowly
    with pytest.raises(ValueError):
        AnnealingSchedule(0, 0.35, 0.08, 0.2, 0.1)
    with pytest.raises(ValueError):
        AnnealingSchedule(10, 0.35, 0.08, 0.2, 0.1, shape="exp")


# ---------------------------------------------------------------- Exp-Golomb


def _random_ints(seed: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = np.round(rng.laplace(0, 6, n)).astype(np.int64)
    big = rng.integers(-(1 << 30), 1 << 30, 50)
    return np.concatenate([[0, 1, -1, 0, (1 << 30), -(1 << 30)], small, big])


def test_zigzag_mapping() -> None:
    v = np.array([0, 1, -1, 2, -2, 3, -3])
    assert zigzag(v).tolist() == [0, 1, 2, 3, 4, 5, 6]
    w = np.arange(-1000, 1000)
    assert np.array_equal(unzigzag(zigzag(w)), w)


@pytest.mark.parametrize("k", range(9))
def test_exp_golomb_round_trip_and_bit_count(k: int) -> None:
    v = _random_ints(k)
    data = encode_signed(v, k)
    assert np.array_equal(decode_signed(data, v.size, k), v)
    u = zigzag(v)
    formula = int(np.sum(2 * np.floor(np.log2(u.astype(np.float64) + 2**k)) + 1 - k))
    assert code_bits(v, k) == formula
    assert len(data) == (formula + 7) // 8


def test_exp_golomb_known_codes() -> None:
    # order 0: 0 -> "1", 1 -> "010", -1 -> "011"; order 1: 0 -> "10", 1 -> "11", -1 -> "0100".
    assert encode_signed(np.array([0, 1, -1]), 0) == bytes([0b10100110])
    assert encode_signed(np.array([0, 1, -1]), 1) == bytes([0b10110100])
    assert code_lengths(np.array([0, 1, -1, 2, -2, 3]), 0).tolist() == [1, 3, 3, 5, 5, 5]


def test_exp_golomb_empty() -> None:
    assert encode_signed(np.array([], dtype=np.int64), 3) == b""
    assert decode_signed(b"", 0, 3).size == 0


def test_best_order() -> None:
    rng = np.random.default_rng(5)
    assert best_order(np.zeros(100, dtype=np.int64)) == 0
    wide = np.round(rng.normal(0, 200, 5000)).astype(np.int64)
    k = best_order(wide, kmax=8)
    bits = [code_bits(wide, j) for j in range(9)]
    assert bits[k] == min(bits) and k >= 5


def test_exp_golomb_truncation_raises() -> None:
    v = _random_ints(11, 200)
    data = encode_signed(v, 2)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            decode_signed(data[:cut], v.size, 2)


def test_exp_golomb_trailing_garbage_raises() -> None:
    v = np.array([3, -4, 0, 7])
    data = encode_signed(v, 1)
    with pytest.raises(BitstreamError):
        decode_signed(data + b"\x00", v.size, 1)
    # Non-zero padding bits in the last byte.
    bits = code_bits(v, 1)
    if bits % 8:
        bad = data[:-1] + bytes([data[-1] | 1])
        with pytest.raises(BitstreamError):
            decode_signed(bad, v.size, 1)
    assert np.array_equal(decode_signed(data + b"\xff", v.size, 1, strict=False), v)


def test_all_zero_stream_fails_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(BitstreamError, match="leading zeros"):
        decode_signed(bytes(1 << 20), 10_000, 0)
    with pytest.raises(BitstreamError):
        decode_signed(bytes(3), 1, 0)  # 24 zero bits: runs out before a 1
    assert time.perf_counter() - start < 1.0


def test_too_large_values_rejected() -> None:
    with pytest.raises(ValueError):
        encode_signed(np.array([1 << 40]), 0)
    with pytest.raises(ValueError):
        encode_signed(np.array([0.5]), 0)
    with pytest.raises(ValueError):
        encode_signed(np.array([1]), -1)
    # The largest magnitude the prefix bound allows still round-trips.
    k = 0
    biggest = (1 << (MAX_PREFIX_ZEROS + 1 + k)) - (1 << k) - 1  # largest zig-zag u
    v = unzigzag(np.array([biggest]))
    assert np.array_equal(decode_signed(encode_signed(v, k), 1, k), v)


def test_bitwriter_bitreader_fields() -> None:
    w = BitWriter()
    w.write(5, 3)
    w.write(0, 2)
    w.write_signed_exp_golomb(np.array([-3, 2]), 0)
    w.write(0xABC, 12)
    assert w.bit_length == 3 + 2 + 5 + 5 + 12 and w.pad_bits == (-w.bit_length) % 8
    r = BitReader(w.getvalue())
    assert r.read(3) == 5 and r.read(2) == 0
    assert r.read_signed_exp_golomb(2, 0).tolist() == [-3, 2]
    assert r.read(12) == 0xABC
    r.expect_padding()
    with pytest.raises(BitstreamError):
        r.read(8)
    with pytest.raises(ValueError):
        w.write(8, 3)
