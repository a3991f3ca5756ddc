"""The comparison helpers of the benchmark scripts (the scripts themselves run for minutes to hours)."""

import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _curve(rates, psnrs):
    return [{"bpp": r, "psnr": q} for r, q in zip(rates, psnrs)]


def test_clip_length_bd_rate_and_gain_at_equal_rate():
    bench = _load("video_clip_length")
    anchor = _curve([0.1, 0.2, 0.4], [26.0, 28.0, 30.0])
    # Same qualities for 10 % fewer bits: BD-rate -10 %, and a gain at equal bpp.
    rate, gain, note = bench.bd_rate(anchor, _curve([0.09, 0.18, 0.36], [26.0, 28.0, 30.0]))
    assert rate == pytest.approx(-10.0, abs=0.01) and gain > 0 and note == ""
    # Two points per curve (a straight line in log rate) work too; worse than the anchor is positive.
    rate, gain, _ = bench.bd_rate(anchor[:2], _curve([0.11, 0.22], [26.0, 28.0]))
    assert rate == pytest.approx(10.0, abs=0.01) and gain == pytest.approx(-2 * math.log(1.1) / math.log(2), abs=1e-6)
    # A curve whose quality falls as the rate rises has no BD-rate, and the reason is given.
    rate, gain, note = bench.bd_rate(anchor, _curve([0.1, 0.2], [27.0, 26.0]))
    assert math.isnan(rate) and math.isnan(gain) and "not strictly monotonic" in note
    # Curves without a common PSNR range: no BD-rate, but a difference at equal bpp.
    rate, gain, note = bench.bd_rate(anchor, _curve([0.1, 0.4], [31.0, 33.0]))
    assert math.isnan(rate) and gain > 0 and "no quality overlap" in note


def test_clip_length_iterations_grow_with_the_frame_count():
    bench = _load("video_clip_length")
    assert [bench.iterations_for(n, 3000) for n in (1, 8, 16, 17, 32, 64)] == [3000, 3000, 3000, 6000, 6000, 12000]


def _ablation_row(image, lmbda, seed, keep, j):
    return {"image": image, "size": 256, "lambda": lmbda, "seed": seed, "keep_ratio": keep, "iterations": 1000, "J": j}


def test_mask_ablation_pairs_each_result_with_its_own_all_ones_twin():
    bench = _load("lottery_mask_ablation")
    rows = [_ablation_row("a", 1e-3, 0, 1.0, 2.0), _ablation_row("a", 1e-3, 0, 0.9, 1.9),
            _ablation_row("a", 1e-3, 1, 1.0, 2.2), _ablation_row("a", 1e-3, 1, 0.9, 2.31),
            _ablation_row("b", 1e-3, 0, 0.9, 1.0)]  # no all-ones twin: not paired
    pairs = bench.paired_differences(rows)
    assert [(p["seed"], round(p["delta_pct"], 6)) for p in pairs] == [(0, -5.0), (1, 5.0)]
    summary = bench.summarize([p["delta_pct"] for p in pairs])
    assert summary["n"] == 2 and summary["wins"] == 1 and summary["mean"] == pytest.approx(0.0)
    assert summary["sem"] == pytest.approx(5.0) and summary["t"] == pytest.approx(0.0)
    # Seed spread: the all-ones J of image a moves by 0.2 between seeds, 9.52 % of their mean.
    assert bench.seed_spread(rows) == [pytest.approx(100 * 0.2 / 2.1)]
    assert math.isnan(bench.summarize([1.0])["sem"])


def test_mask_ablation_pairs_only_runs_with_the_same_number_of_candidates():
    bench = _load("lottery_mask_ablation")
    one = dict(candidates=1)
    rows = [_ablation_row("a", 1e-3, 0, 1.0, 2.0) | one | {"network_seed": 0},
            _ablation_row("a", 1e-3, 0, 0.9, 1.9) | one | {"network_seed": 0},
            _ablation_row("a", 1e-3, 0, 1.0, 2.4) | {"candidates": 3, "network_seed": 7},
            _ablation_row("a", 1e-3, 0, 0.9, 2.2) | {"candidates": 3, "network_seed": 9},
            _ablation_row("a", 1e-3, 1, 0.9, 2.0) | {"network_seed": 1},
            _ablation_row("a", 1e-3, 1, 1.0, 2.1)]  # older row: default candidates, kept network unknown
    pairs = sorted(bench.paired_differences(rows), key=lambda p: p["candidates"])
    assert [(p["candidates"], p["seed"], p["same_network"], round(p["delta_pct"], 6)) for p in pairs] == [
        (1, 0, True, -5.0), (3, 0, False, round(100 * (2.2 / 2.4 - 1), 6)), (3, 1, None, round(100 * (2.0 / 2.1 - 1), 6))]
    # Seeds 0 and 1 with three candidates make one spread; one candidate vs three is not a seed spread.
    assert bench.seed_spread(rows) == [pytest.approx(100 * 0.3 / 2.25)]


def test_mask_ablation_default_candidates_is_the_codecs():
    from ulbc.codecs import get_codec

    assert _load("lottery_mask_ablation").CODEC_DEFAULT_CANDIDATES == get_codec("lottery").options["candidates"]
