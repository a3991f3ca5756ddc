"""The metric registry drives the row schema, summaries and BD-rates; Y'CbCr metrics; lossless items."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ulbc.errors import ConfigError, InputError
from ulbc.metrics import METRICS, Column, Metric, build_metrics, compute_metrics, item_columns, register_metric
from ulbc.metrics.fidelity import rgb_to_ycbcr
from ulbc.rd import bd_rate_table, summarize
from ulbc.schema import METRIC_ROW_SCHEMA

from test_rd import ANCHOR_BPP, ANCHOR_PSNR, curve_rows, frame, row


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    noisy = np.clip(reference.astype(int) + rng.integers(-6, 7, reference.shape), 0, 255).astype(np.uint8)
    return reference, noisy


class _Sloppy(Metric):
    """Not registered: a metric whose output does not match its declaration."""

    name = "sloppy"
    columns = (Column("sloppy_score", "a score"),)

    def __init__(self, output, **kwargs):
        super().__init__(**kwargs)
        self.output = output

    def compute(self, reference, reconstruction):
        return self.output


def test_a_metric_returning_an_undeclared_column_fails_loudly(images):
    with pytest.raises(InputError, match="undeclared column.*sloppy_extra"):
        compute_metrics([_Sloppy({"sloppy_score": 1.0, "sloppy_extra": 2.0})], *images)
    with pytest.raises(InputError, match="no value for declared column.*sloppy_score"):
        compute_metrics([_Sloppy({})], *images)
    assert compute_metrics([_Sloppy({"sloppy_score": 1.0})], *images) == {"sloppy_score": 1.0}


def test_registry_refuses_a_name_or_column_twice():
    class Again(Metric):
        name = "psnr"

    with pytest.raises(ValueError, match="registered twice"):
        register_metric(Again)

    class Thief(Metric):
        name = "thief"
        columns = (Column("psnr_rgb", "stolen"),)

    with pytest.raises(ValueError, match="already belongs to metric 'psnr'"):
        register_metric(Thief)
    assert "thief" not in METRICS


def test_row_schema_holds_every_item_column_of_the_registry():
    names = METRIC_ROW_SCHEMA.names
    for column in item_columns():
        assert column.name in names
    assert "metric_info" in names
    # Dataset-level metrics have no per-item column.
    for cls in METRICS.values():
        if cls.level == "dataset":
            assert not any(c.name in names for c in cls.columns)


def test_metric_options_are_checked():
    with pytest.raises(ConfigError, match="metric 'psnr-y': option matrix must be one of"):
        build_metrics(["psnr-y"], {"psnr-y": {"matrix": "bt2020"}})
    with pytest.raises(ConfigError, match="unknown option"):
        build_metrics(["psnr"], {"psnr": {"peak": 1}})
    with pytest.raises(ConfigError, match="not among the metrics measured"):
        build_metrics(["psnr"], {"psnr-y": {}})
    with pytest.raises(ConfigError, match="unknown metric 'nope'"):
        build_metrics(["nope"])


def test_ycbcr_matches_scikit_image_bt601_studio_swing(images):
    from skimage.color import rgb2ycbcr

    reference, _ = images
    ours = rgb_to_ycbcr(reference, "bt601", "limited")
    # scikit-image uses the standard's matrix rounded to three decimals: agreement to 1e-3 code values.
    np.testing.assert_allclose(ours, rgb2ycbcr(reference), atol=1e-3)
    full = rgb_to_ycbcr(np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8), "bt709", "full")
    np.testing.assert_allclose(full, [[[255, 128, 128], [0, 128, 128]]], atol=1e-9)


def test_psnr_yuv_is_the_six_one_one_weighting(images):
    reference, noisy = images
    values = compute_metrics(build_metrics(["psnr-y", "psnr-yuv"]), reference, noisy)
    ref, rec = rgb_to_ycbcr(reference), rgb_to_ycbcr(noisy)
    per_plane = [10 * math.log10(255**2 / np.mean((ref[..., c] - rec[..., c]) ** 2)) for c in range(3)]
    assert values["psnr_y"] == pytest.approx(per_plane[0])
    assert values["psnr_u"] == pytest.approx(per_plane[1]) and values["psnr_v"] == pytest.approx(per_plane[2])
    assert values["psnr_yuv"] == pytest.approx((6 * per_plane[0] + per_plane[1] + per_plane[2]) / 8)
    bt601 = compute_metrics(build_metrics(["psnr-y"], {"psnr-y": {"matrix": "bt601"}}), reference, noisy)
    assert bt601["psnr_y"] != pytest.approx(values["psnr_y"], abs=1e-9)


def test_a_lossless_item_keeps_its_rate_point_and_is_counted():
    rows = [row(item="a", rate_label="r1", rate_value=1.0, bpp=2.0, mse_rgb=0.0),
            row(item="b", rate_label="r1", rate_value=1.0, bpp=2.0, mse_rgb=4.0),
            row(item="a", rate_label="r0", rate_value=0.0, bpp=0.5, mse_rgb=10.0),
            row(item="b", rate_label="r0", rate_value=0.0, bpp=0.5, mse_rgb=20.0)]
    summary = summarize(frame(rows)).set_index("rate_label")
    assert summary.loc["r1", "n_lossless"] == 1 and summary.loc["r0", "n_lossless"] == 0
    expected = (100.0 + 10 * math.log10(255**2 / 4.0)) / 2
    assert summary.loc["r1", "psnr_rgb"] == pytest.approx(expected)
    assert math.isfinite(summary.loc["r1", "psnr_of_mean_mse"])


def test_total_bits_over_total_pixels_differs_from_the_mean_on_mixed_sizes():
    rows = [row(item="small", width=10, height=10, bytes=100, bpp=8.0),
            row(item="large", width=100, height=100, bytes=1000, bpp=0.8)]
    summary = summarize(frame(rows))
    assert summary.loc[0, "bpp"] == pytest.approx(4.4)
    assert summary.loc[0, "bpp_total"] == pytest.approx(8 * 1100 / 10100)


def _lpips_like(rows: list[dict]) -> list[dict]:
    """Give rows an LPIPS column that falls as PSNR rises (lower is better), as a real one would."""
    out = []
    for r in rows:
        r = dict(r, lpips=0.6 - 0.01 * r["psnr_rgb"],
                 metric_info='{"lpips": {"options": {}}, "ms-ssim": {"options": {}}, "psnr": {"options": {}}}')
        out.append(r)
    return out


def test_bd_rate_of_a_lower_is_better_metric_is_at_equal_metric_value():
    if "lpips" not in METRICS:
        pytest.skip("lpips metric not registered")
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR) + curve_rows("better", [0.8 * b for b in ANCHOR_BPP],
                                                                     ANCHOR_PSNR)
    table = bd_rate_table(frame(_lpips_like(rows)), "jpeg").set_index("method")
    assert table.loc["better", "bd_rate_lpips"] == pytest.approx(-20.0, abs=0.5)
    assert table.loc["better", "bd_rate_psnr_rgb"] == pytest.approx(table.loc["better", "bd_rate_lpips"], abs=0.5)
    # At matched bpp the better method has the lower LPIPS: a negative difference, in LPIPS units.
    assert table.loc["better", "bd_lpips"] < 0 and table.loc["better", "bd_psnr_rgb"] > 0
    assert table.loc["better", "overlap_low_lpips"] < table.loc["better", "overlap_high_lpips"]
    assert table.loc["jpeg", "bd_lpips"] == 0.0


def test_bd_at_matched_bpp_survives_disjoint_quality_ranges():
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR) + curve_rows("far", ANCHOR_BPP, [p + 20 for p in ANCHOR_PSNR])
    table = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert math.isnan(table.loc["far", "bd_rate_psnr_rgb"])
    assert "no quality overlap" in table.loc["far", "note"]
    assert table.loc["far", "bd_psnr_rgb"] == pytest.approx(20.0, abs=1e-6)


def test_summary_columns_follow_the_metrics_measured():
    rows = [dict(row(), psnr_y=30.0, metric_info='{"psnr": {}, "psnr-y": {}}')]
    summary = summarize(pd.DataFrame(frame([rows[0]])))
    assert "psnr_y" in summary.columns and "ms_ssim_rgb" not in summary.columns
    assert summary.loc[0, "psnr_y"] == pytest.approx(30.0)


def test_metrics_command_lists_the_registry(capsys):
    import json

    from ulbc.cli import main

    main(["metrics", "--json"])
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert list(listed) == list(METRICS)
    assert listed["fid"]["level"] == "dataset" and listed["fid"]["weights"] == ["inception-v3-fid"]
    assert {c["name"]: c["better"] for c in listed["lpips"]["columns"]} == {"lpips": "lower"}
    assert "pixels_per_degree" in listed["flip"]["option_specs"]
