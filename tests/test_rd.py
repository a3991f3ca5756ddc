"""RD analysis: summaries over ok rows, BD-rates on curves with known answers, plots and tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ulbc.errors import ConfigError, InputError
from ulbc.provenance import code_digest
from ulbc.rd import bd_rate_table, encoder_notes, plot_rd, summarize, write_table
from ulbc.schema import METRIC_COLUMNS, METRIC_ROW_SCHEMA

ANCHOR_BPP = [0.2, 0.4, 0.8, 1.6]
ANCHOR_PSNR = [25.0, 30.0, 35.0, 40.0]


def row(**overrides) -> dict:
    """A row with every METRIC_ROW_SCHEMA column set; the quality columns follow ``psnr_rgb``."""
    psnr = overrides.pop("psnr_rgb", 35.0)
    mse = overrides.pop("mse_rgb", 255.0**2 / 10 ** (psnr / 10))
    base = {
        "dataset": "kodak", "item": "img0", "method": "jpeg", "codec": "jpeg", "rate_label": "r0",
        "rate_param": "quality", "rate_value": 0.0, "codec_options": "{}", "width": 64, "height": 64,
        "bytes": 100, "payload_bytes": 90, "bpp": 0.5, "payload_bpp": 0.45, "bpp_estimated": None, "bpp_paper": None,
        "mse_rgb": mse, "psnr_rgb": 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf,
        # Any increasing function of PSNR keeps the BD-rate answers exact for the MS-SSIM metric too.
        "ms_ssim_rgb": 1 - 10 ** (-psnr / 20), "encode_s": 0.02, "decode_s": 0.01, "device": "cpu",
        "status": "ok", "error": "", "seed": 0, "codec_version": "1", "code_digest": code_digest("jpeg"), "ulbc_version": "0.1.0",
        "git_commit": "abc", "config_hash": "h", "library_versions": "{}",
        "bits_nn": None, "bits_mask": None, "bits_latent": None, "macs_per_pixel": None, "encode_info": "",
        "level": "image", "clip": "", "frames": 1,
    }
    base.update(overrides)
    return complete_row(base)


def complete_row(values: dict) -> dict:
    """``values`` in schema order; metric columns not given are NaN (not measured); metric_info says
    that PSNR and MS-SSIM were measured, as a shard job would."""
    unknown = set(values) - set(METRIC_ROW_SCHEMA.names)
    assert not unknown, f"not schema columns: {unknown}"
    values = {"metric_info": MEASURED, **values}
    return {name: values.get(name, math.nan if name in METRIC_COLUMNS else "") for name in METRIC_ROW_SCHEMA.names}


MEASURED = '{"ms-ssim": {"options": {}}, "psnr": {"options": {}}}'


def curve_rows(method, bpps, psnrs, *, dataset="kodak", items=2) -> list[dict]:
    """Rows of one method; items differ by ±1 dB around ``psnrs`` at equal bpp."""
    rows = []
    for k, (bpp, psnr) in enumerate(zip(bpps, psnrs)):
        for i in range(items):
            offset = 0.0 if items == 1 else (2 * i / (items - 1) - 1)
            rows.append(row(dataset=dataset, method=method, codec=method, item=f"img{i}", rate_label=f"r{k}",
                            rate_value=float(k), bpp=bpp, payload_bpp=0.9 * bpp, psnr_rgb=psnr + offset))
    return rows


def frame(rows) -> pd.DataFrame:
    # Through Arrow, like the real metrics file, so dtypes match what read_metrics returns.
    return pa.Table.from_pylist(rows, schema=METRIC_ROW_SCHEMA).to_pandas()


@pytest.fixture
def study() -> pd.DataFrame:
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    rows += curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    rows += curve_rows("worse", [1.25 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    rows += curve_rows("far", ANCHOR_BPP, [p + 40 for p in ANCHOR_PSNR])
    rows += curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR, dataset="clic")
    rows += curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR, dataset="clic")
    rows += curve_rows("webp", ANCHOR_BPP, ANCHOR_PSNR, dataset="noanchor")
    return frame(rows)


METRICS = ("psnr_rgb", "psnr_of_mean_mse", "ms_ssim_db")


@pytest.mark.parametrize("interpolation", ["akima", "pchip", "cubic"])
def test_bd_rate_of_scaled_rates(study, interpolation):
    table = bd_rate_table(study, "jpeg", interpolation=interpolation).set_index(["dataset", "method"])
    for metric in METRICS:
        assert table.loc[("kodak", "better"), f"bd_rate_{metric}"] == pytest.approx(-20.0, abs=0.5)
        assert table.loc[("kodak", "worse"), f"bd_rate_{metric}"] == pytest.approx(25.0, abs=0.5)
        assert table.loc[("clic", "better"), f"bd_rate_{metric}"] == pytest.approx(-20.0, abs=0.5)
        assert table.loc[("kodak", "jpeg"), f"bd_rate_{metric}"] == 0.0
    assert table.loc[("kodak", "better"), "overlap_low_psnr_rgb"] == pytest.approx(25.0)
    assert table.loc[("kodak", "better"), "overlap_high_psnr_rgb"] == pytest.approx(40.0)
    assert table.loc[("kodak", "better"), "n_points"] == 4
    assert table.loc[("kodak", "better"), "n_items"] == 2 and table.loc[("kodak", "better"), "n_excluded"] == 0
    assert (table["interpolation"] == interpolation).all() and (table["anchor"] == "jpeg").all()
    assert table.loc[("kodak", "better"), "note"] == ""


def test_bd_table_layout_and_nan_reasons(study):
    table = bd_rate_table(study, "jpeg")
    assert list(table.columns) == (
        ["dataset", "method", "anchor", "interpolation"] + [f"bd_rate_{m}" for m in METRICS]
        + [f"bd_{m}" for m in METRICS] + [f"thin_{m}" for m in METRICS]
        + ["n_points", "n_points_anchor", "n_items", "n_excluded"]
        + [f"overlap_{s}_{m}" for m in METRICS for s in ("low", "high")] + ["note"]
    )
    # Anchor first within each dataset, datasets sorted.
    order = table[["dataset", "method"]].values.tolist()
    assert order[:3] == [["clic", "jpeg"], ["clic", "better"], ["kodak", "jpeg"]]
    t = table.set_index(["dataset", "method"])
    far = t.loc[("kodak", "far")]
    assert all(math.isnan(far[f"bd_rate_{m}"]) for m in METRICS)
    assert "psnr_rgb: no quality overlap" in far["note"]
    lonely = t.loc[("noanchor", "webp")]
    assert math.isnan(lonely["bd_rate_psnr_rgb"])
    assert "anchor jpeg has no results for dataset noanchor" in lonely["note"]


def test_unknown_anchor_lists_methods(study):
    with pytest.raises(ConfigError, match="'hevc-intra'.*methods present: better, far, jpeg, webp, worse"):
        bd_rate_table(study, "hevc-intra")
    with pytest.raises(ConfigError, match="interpolation"):
        bd_rate_table(study, "jpeg", interpolation="linear")


def failed(**overrides) -> dict:
    return row(status="encode_error", error="boom", psnr_rgb=math.nan, mse_rgb=math.nan, ms_ssim_rgb=math.nan,
               bpp=math.nan, **overrides)


def uneven_curve_rows(method, scale, items=("a", "b", "c"), tilt=0.0) -> list[dict]:
    """Items whose rates and qualities differ (and, with ``tilt``, whose gain over the anchor differs),
    so leaving one out moves both curves and the BD-rate."""
    rows = []
    for k, (bpp, psnr) in enumerate(zip(ANCHOR_BPP, ANCHOR_PSNR)):
        for i, item in enumerate(items):
            rows.append(row(method=method, codec=method, item=item, rate_label=f"r{k}", rate_value=float(k),
                            bpp=scale * bpp * (1 + 0.3 * i) * (1 + tilt * i), psnr_rgb=psnr + 1.5 * i * (1 + 0.2 * k)))
    return rows


def test_a_failed_item_is_excluded_from_both_curves_and_its_rate_point_survives():
    rows = uneven_curve_rows("jpeg", 1.0) + uneven_curve_rows("better", 0.8, tilt=-0.2)
    clean = bd_rate_table(frame(rows), "jpeg").set_index("method")
    without_b = bd_rate_table(frame([r for r in rows if r["item"] != "b"]), "jpeg").set_index("method")
    # Item b of "better" fails at its top rate point.
    hit = next(i for i, r in enumerate(rows) if r["method"] == "better" and r["item"] == "b" and r["rate_label"] == "r3")
    rows[hit] = failed(method="better", codec="better", item="b", rate_label="r3", rate_value=3.0)
    t = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert t.loc["better", "n_points"] == 4 and t.loc["better", "n_points_anchor"] == 4
    assert t.loc["better", "n_items"] == 2 and t.loc["better", "n_excluded"] == 1
    assert "1 item(s) excluded after failures: b" in t.loc["better", "note"]
    for metric in METRICS:
        value = t.loc["better", f"bd_rate_{metric}"]
        assert value == pytest.approx(without_b.loc["better", f"bd_rate_{metric}"], rel=1e-12)
        assert value != pytest.approx(clean.loc["better", f"bd_rate_{metric}"], rel=1e-6)  # b mattered
    # The anchor's own row does not lose b: its curve compares it with itself.
    assert t.loc["jpeg", "n_excluded"] == 0 and t.loc["jpeg", "note"] == ""
    # The summary still counts the failure at its rate point.
    s = summarize(frame(rows)).set_index(["method", "rate_label"])
    assert s.loc[("better", "r3"), "n_failed"] == 1 and s.loc[("better", "r0"), "n_failed"] == 0


def test_anchor_failures_exclude_items_from_every_method_and_the_note_names_a_few():
    items = [f"kodim{i:02d}" for i in range(1, 10)]
    rows = uneven_curve_rows("jpeg", 1.0, items) + uneven_curve_rows("better", 0.8, items)
    for item in items[:7]:  # seven anchor items fail at r1
        hit = next(i for i, r in enumerate(rows) if r["method"] == "jpeg" and r["item"] == item
                   and r["rate_label"] == "r1")
        rows[hit] = failed(item=item, rate_label="r1", rate_value=1.0)
    t = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert t.loc["better", "n_excluded"] == 7 and t.loc["better", "n_items"] == 2
    assert ("7 item(s) excluded after failures: kodim01, kodim02, kodim03, kodim04, kodim05, ..."
            in t.loc["better", "note"])
    assert math.isfinite(t.loc["better", "bd_rate_psnr_rgb"])
    assert t.loc["jpeg", "n_excluded"] == 7


def test_a_rate_point_where_every_item_failed_is_dropped_and_named():
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    rows += [r for r in curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR) if r["rate_label"] != "r3"]
    rows += [failed(method="better", codec="better", item=f"img{i}", rate_label="r3", rate_value=3.0)
             for i in range(2)]
    rows += curve_rows("sparse", ANCHOR_BPP[:2], ANCHOR_PSNR[:2])
    rows.append(failed(method="sparse", codec="sparse", item="img9", rate_label="r1", rate_value=1.0))
    t = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert t.loc["better", "n_points"] == 3 and t.loc["better", "n_excluded"] == 0
    assert "method: rate point(s) r3 dropped, no item ok" in t.loc["better", "note"]
    assert t.loc["better", "bd_rate_psnr_rgb"] == pytest.approx(-20.0, abs=0.5)
    assert t.loc["better", "overlap_high_psnr_rgb"] == pytest.approx(35.0)
    # img9 has one failed row and no other: excluded, and the two-point curve survives.
    assert t.loc["sparse", "n_points"] == 2 and t.loc["sparse", "n_excluded"] == 1
    assert "excluded after failures: img9" in t.loc["sparse", "note"]
    assert math.isfinite(t.loc["sparse", "bd_rate_psnr_rgb"])


def test_no_common_item_gives_nan_with_a_reason():
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    # img0 of "better" fails at r3, img1 at r2: each point keeps an ok item, but no item is ok at all.
    for r in curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR):
        broken = (r["item"], r["rate_label"]) in {("img0", "r3"), ("img1", "r2")}
        rows.append(failed(**{k: r[k] for k in ("method", "codec", "item", "rate_label", "rate_value")}) if broken else r)
    t = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert math.isnan(t.loc["better", "bd_rate_psnr_rgb"]) and t.loc["better", "n_items"] == 0
    assert "no item is ok at every rate point of both method and anchor" in t.loc["better", "note"]


def test_per_rate_point_curves_are_taken_as_given_but_not_with_failures(study):
    summary = summarize(study)
    t = bd_rate_table(summary, "jpeg").set_index(["dataset", "method"])
    assert t.loc[("kodak", "better"), "bd_rate_psnr_rgb"] == pytest.approx(-20.0, abs=0.5)
    assert pd.isna(t.loc[("kodak", "better"), "n_items"]) and t.loc[("kodak", "better"), "n_excluded"] == 0
    summary.loc[summary.index[0], "n_failed"] = 1
    with pytest.raises(InputError, match="pass the per-item rows"):
        bd_rate_table(summary, "jpeg")


def test_non_monotonic_curve_is_nan():
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    rows += curve_rows("bumpy", ANCHOR_BPP, [25.0, 33.0, 31.0, 40.0])
    t = bd_rate_table(frame(rows), "jpeg").set_index("method")
    assert math.isnan(t.loc["bumpy", "bd_rate_psnr_rgb"])
    assert "not strictly monotonic" in t.loc["bumpy", "note"]


def test_psnr_conventions_differ():
    rows = [row(item="a", mse_rgb=1.0), row(item="b", mse_rgb=100.0)]
    s = summarize(frame(rows))
    assert len(s) == 1
    per_item = [10 * math.log10(255**2 / 1.0), 10 * math.log10(255**2 / 100.0)]
    assert s.loc[0, "psnr_rgb"] == pytest.approx(np.mean(per_item))  # 38.13 dB
    assert s.loc[0, "psnr_of_mean_mse"] == pytest.approx(10 * math.log10(255**2 / 50.5))  # 31.10 dB
    assert s.loc[0, "psnr_rgb"] - s.loc[0, "psnr_of_mean_mse"] > 7


def test_summary_excludes_failed_rows_and_counts_them():
    rows = [row(item="a", bpp=0.5, psnr_rgb=30.0, encode_s=1.0),
            row(item="b", bpp=0.7, psnr_rgb=32.0, encode_s=3.0),
            row(item="c", bpp=999.0, psnr_rgb=math.nan, mse_rgb=math.nan, ms_ssim_rgb=math.nan,
                status="decode_error", error="bad", encode_s=100.0)]
    s = summarize(frame(rows))
    assert s.loc[0, "n_items"] == 3 and s.loc[0, "n_failed"] == 1
    assert s.loc[0, "bpp"] == pytest.approx(0.6)
    assert s.loc[0, "psnr_rgb"] == pytest.approx(31.0)
    assert s.loc[0, "encode_s"] == pytest.approx(2.0)
    ms = np.mean([1 - 10 ** (-30 / 20), 1 - 10 ** (-32 / 20)])
    assert s.loc[0, "ms_ssim_rgb"] == pytest.approx(ms)
    assert s.loc[0, "ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - ms))

    all_failed = summarize(frame([row(status="encode_error", error="x", bpp=math.nan)]))
    assert all_failed.loc[0, "n_failed"] == 1 and math.isnan(all_failed.loc[0, "psnr_rgb"])


def test_summary_ms_ssim_nan_if_any_item_nan_and_sorted_by_bpp():
    rows = [row(item="a", rate_label="hi", rate_value=2.0, bpp=1.0),
            row(item="b", rate_label="hi", rate_value=2.0, bpp=1.0, ms_ssim_rgb=math.nan),
            row(item="a", rate_label="lo", rate_value=1.0, bpp=0.1)]
    s = summarize(frame(rows))
    assert s["rate_label"].tolist() == ["lo", "hi"]
    assert not math.isnan(s.loc[0, "ms_ssim_rgb"])
    assert math.isnan(s.loc[1, "ms_ssim_rgb"]) and math.isnan(s.loc[1, "ms_ssim_db"])
    assert not math.isnan(s.loc[1, "psnr_rgb"])


def _check_images(paths):
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:2000]
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".part")]


def test_plots_are_written(study, tmp_path):
    summary = summarize(study)
    paths = [tmp_path / "rd.png", tmp_path / "rd.svg"]
    plot_rd(summary, paths, metric="psnr_rgb", anchor="jpeg")
    _check_images(paths)
    log_paths = [tmp_path / "log" / "rd.png", tmp_path / "log" / "rd.svg"]
    plot_rd(summary, log_paths, metric="ms_ssim_db", anchor="jpeg", log_x=True)
    _check_images(log_paths)


def test_log_rate_axis_where_the_rates_need_it_and_readable_titles(study, tmp_path):
    from ulbc.rd import item_spread, wants_log_rate

    assert not wants_log_rate(np.array(ANCHOR_BPP))  # 0.2..1.6: linear
    assert wants_log_rate(np.array([0.02, 0.04, 0.3]))  # ultra-low rates
    assert wants_log_rate(np.array([0.2, 5.0]))  # a span of 25x
    assert not wants_log_rate(np.array([np.nan, 0.0]))
    low = study.assign(bpp=study["bpp"] / 20)
    paths = [tmp_path / "rd.png", tmp_path / "rd.svg"]
    spread = item_spread(low, "psnr_rgb")
    # The two items of each rate point are 1 dB either side of its mean: the 10-90 % bar spans 1.6 dB.
    assert ((spread["high"] - spread["low"]).round(6) == 1.6).all() and len(spread) == 7 * 4
    plot_rd(summarize(low), paths, metric="psnr_rgb", anchor="jpeg", spread=spread)
    svg = paths[1].read_text()
    # Matplotlib writes titles and labels as SVG comments of their text.
    assert "kodak: PSNR" in svg and "(higher is better)" in svg and "log scale" in svg
    assert "psnr_rgb vs bpp" not in svg
    plot_rd(summarize(study), paths, metric="psnr_rgb", anchor="jpeg")
    assert "log scale" not in paths[1].read_text()


def test_per_item_curves_one_panel_per_item(study, tmp_path):
    from ulbc.rd import plot_item_rd

    rows = frame(curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR, items=6)
                 + curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR, items=6)
                 + curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR, dataset="clic", items=2))
    path = tmp_path / "items.svg"
    assert plot_item_rd(rows, [path], metric="psnr_rgb", anchor="jpeg", items=4)
    svg = path.read_text()
    # kodak shows its first four items (of six), clic its two; each panel is titled by its item.
    assert [f"kodak: img{i}" in svg for i in range(6)] == [True] * 4 + [False] * 2
    assert "clic: img0" in svg and "clic: img1" in svg and ", per item (higher is better)" in svg
    assert not plot_item_rd(rows, [tmp_path / "none.svg"], metric="lpips")  # not measured: nothing written
    assert not (tmp_path / "none.svg").exists()


def test_per_item_figures_also_show_ms_ssim_in_db(study, tmp_path):
    from ulbc.rd import item_spread, plot_item_rd, with_item_derived

    rows = with_item_derived(study)
    # row() sets MS-SSIM = 1 - 10^(-PSNR/20): in dB, half the item's PSNR.
    assert np.allclose(rows["ms_ssim_db"], rows["psnr_rgb"] / 2)
    assert "psnr_of_mean_mse" not in rows.columns  # for one item it is that item's PSNR: not repeated
    assert "ms_ssim_db" not in study.columns  # the metrics rows themselves are left as they were
    spread = item_spread(rows, "ms_ssim_db")
    assert ((spread["high"] - spread["low"]).round(6) == 0.8).all() and len(spread) == 7 * 4
    assert plot_item_rd(rows, [tmp_path / "items.svg"], metric="ms_ssim_db", anchor="jpeg")
    assert "MS-SSIM" in (tmp_path / "items.svg").read_text()


def test_plot_single_point_and_all_nan_metric(tmp_path):
    summary = summarize(frame([row(ms_ssim_rgb=math.nan)]))
    paths = [tmp_path / "one.png", tmp_path / "one.svg"]
    plot_rd(summary, paths, metric="psnr_rgb")
    _check_images(paths)
    nan_paths = [tmp_path / "nan.png", tmp_path / "nan.svg"]
    plot_rd(summary, nan_paths, metric="ms_ssim_db", anchor="not-there")
    _check_images(nan_paths)
    with pytest.raises(ConfigError, match="format"):
        plot_rd(summary, [tmp_path / "x.gif"])


def test_write_table_csv_and_html(study, tmp_path):
    table = bd_rate_table(study, "jpeg")
    write_table(table, tmp_path / "bd.csv")
    back = pd.read_csv(tmp_path / "bd.csv")
    assert back["bd_rate_psnr_rgb"].tolist()[:2] == pytest.approx(table["bd_rate_psnr_rgb"].tolist()[:2])
    write_table(table, tmp_path / "bd.html")
    html = (tmp_path / "bd.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<table" in html and "bd_rate_psnr_rgb" in html
    assert "-20.00" in html
    with pytest.raises(ConfigError, match="csv or .html"):
        write_table(table, tmp_path / "bd.xlsx")


def test_end_to_end_from_shards(tmp_path):
    from ulbc.aggregate import aggregate_shards, read_metrics

    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    rows += curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    paths = []
    for i in range(0, len(rows), 4):
        paths.append(tmp_path / f"s{i}.parquet")
        pq.write_table(pa.Table.from_pylist(rows[i : i + 4], schema=METRIC_ROW_SCHEMA), paths[-1])
    aggregate_shards(paths, tmp_path / "metrics.parquet", engine="pyarrow")
    table = bd_rate_table(read_metrics(tmp_path / "metrics.parquet"), "jpeg").set_index("method")
    assert table.loc["better", "bd_rate_psnr_of_mean_mse"] == pytest.approx(-20.0, abs=0.5)


def test_summary_counts_clips_not_their_frames():
    rows = [row(item="walk", level="clip", clip="walk", frames=3, bpp=0.2, psnr_rgb=30.0)]
    rows += [row(item=f"walk/{i:06d}", level="frame", clip="walk", bpp=math.nan, bytes=None, psnr_rgb=40.0)
             for i in range(3)]
    summary = summarize(frame(rows))
    assert len(summary) == 1 and summary.loc[0, "n_items"] == 1
    assert summary.loc[0, "psnr_rgb"] == pytest.approx(30.0) and summary.loc[0, "bpp"] == pytest.approx(0.2)


def test_task_table_takes_task_columns_from_the_machine_rows_and_psnr_from_the_human_ones():
    from ulbc.rd import task_table

    bd = pd.DataFrame([
        {"dataset": "coco", "method": "hevc", "anchor": "hevc", "bd_rate_map_bbox": 0.0, "bd_map_bbox": 0.0,
         "bd_rate_psnr_rgb": 0.0, "bd_rate_lpips_alex": 0.0, "note": ""},
        {"dataset": "coco", "method": "cheng", "anchor": "hevc", "bd_rate_map_bbox": -30.0, "bd_map_bbox": 1.5,
         "bd_rate_psnr_rgb": -20.0, "bd_rate_lpips_alex": -5.0, "note": ""},
        {"dataset": "coco", "method": "cheng+a", "anchor": "hevc", "bd_rate_map_bbox": -31.0, "bd_map_bbox": 1.6,
         "bd_rate_psnr_rgb": -19.0, "bd_rate_lpips_alex": -4.0, "note": "a human note"},
        {"dataset": "coco", "method": "cheng+a@machine", "anchor": "hevc", "bd_rate_map_bbox": -37.0,
         "bd_map_bbox": 2.5, "bd_rate_psnr_rgb": 40.0, "bd_rate_lpips_alex": 9.0, "note": "few points"},
    ])
    table = task_table(bd).set_index("method")
    assert list(table.index) == ["hevc", "cheng", "cheng+a"]  # machine rows join their method's row
    assert list(table.columns) == ["dataset", "anchor", "task_rows", "bd_rate_map_bbox", "bd_map_bbox",
                                   "bd_rate_psnr_rgb", "note"]  # lpips is no task metric: not in Table 1
    assert table.loc["cheng+a", "task_rows"] == "cheng+a@machine"
    assert table.loc["cheng+a", "bd_rate_map_bbox"] == -37.0 and table.loc["cheng+a", "bd_map_bbox"] == 2.5
    assert table.loc["cheng+a", "bd_rate_psnr_rgb"] == -19.0  # PSNR of the decode for viewing
    assert table.loc["cheng+a", "note"] == "a human note; cheng+a@machine: few points"
    assert table.loc["cheng", "task_rows"] == "cheng" and table.loc["cheng", "bd_rate_map_bbox"] == -30.0
    assert task_table(bd.drop(columns=["bd_rate_map_bbox", "bd_map_bbox"])).empty  # no task metric measured


def test_encoder_notes_are_said_once_per_dataset_and_method():
    note = json.dumps({"note": "decoded without the generative model: a lower bound"})
    frame = pd.DataFrame([
        row(method="misc", item="a", encode_info=note), row(method="misc", item="b", encode_info=note),
        row(method="misc", dataset="clic", encode_info=json.dumps({"note": "not bit-exact across devices"})),
        row(method="misc", dataset="clic", item="c", status="decode_error", encode_info=json.dumps({"note": "x"})),
        row(method="jpeg", encode_info=json.dumps({"other": 1})), row(method="webp", encode_info="{not json"),
    ])
    assert encoder_notes(frame) == ["clic misc: not bit-exact across devices",
                                    "kodak misc: decoded without the generative model: a lower bound"]
