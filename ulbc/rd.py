"""Rate-distortion analysis: per-rate-point summaries, Bjøntegaard deltas, RD plots and tables.

Two dataset-level PSNR conventions are kept side by side because published BD-rates differ by
several points between them: ``psnr_rgb`` is the mean of per-item PSNR (common for image sets
such as Kodak), ``psnr_of_mean_mse`` is the PSNR of the mean MSE, which is dominated by the
worst-coded items.

Summaries and plots average each rate point over its ok items. BD-rates are computed from the
per-item rows instead, over the items ok at every rate point of both curves, so that a failed item
leaves the compared image set rather than erasing a rate point.
"""

from __future__ import annotations

import html
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .fsutil import atomic_path, write_bytes_atomic
from .metrics import METRICS, all_columns, read_metric_info
from .schema import ENCODER_RATE_COLUMNS, RD_LEVELS, target_method

GROUP_KEYS = ["dataset", "method", "codec", "rate_label", "rate_value"]
#: Summary columns before the metric columns, and after them.
COUNT_COLUMNS = ["n_items", "n_failed", "n_lossless"]
#: bpp_estimated: the encoder's likelihood estimate; bpp_paper: the rate as the method's paper counts
#: it; each where every ok item has one (else NaN).
RATE_COLUMNS = ["bpp", "bpp_total", "payload_bpp", *ENCODER_RATE_COLUMNS]
TIMING_COLUMNS = ["encode_s", "decode_s"]
_ROW_COLUMNS = GROUP_KEYS + ["status", "bpp", "payload_bpp", "bytes", "width", "height", "encode_s", "decode_s"]

# Points each interpolation needs: a cubic polynomial fit through fewer than 4 points is underdetermined;
# akima falls back to a straight line for 2 points, and pchip handles 2 points natively.
INTERPOLATIONS = {"akima": 2, "pchip": 2, "cubic": 4}
# bjontegaard's own threshold for a warning about a thin overlap; we report it in the note instead.
LOW_OVERLAP = 0.75
#: A BD value is "thin" (``thin_<column>``, greyed and marked in the HTML tables, not to be quoted
#: as a plain number) when a curve has fewer points than this or the quality ranges overlap less.
THIN_MIN_POINTS = 4
THIN_OVERLAP = 0.5

RATE_LABELS = {
    "bpp": "bits per pixel (bpp), mean over items",
    "bpp_total": "bits per pixel (bpp), total bits / total pixels",
    "payload_bpp": "codec payload bits per pixel (bpp)",
}


def column_label(name: str) -> str:
    """Axis label of a rate or metric column (from the metric registry)."""
    if name in RATE_LABELS:
        return RATE_LABELS[name]
    column = all_columns().get(name)
    return column.label if column is not None else name


def item_label(name: str) -> str:
    """:func:`column_label` for one item's value (the per-item plots): without "mean over items"."""
    return column_label(name).replace(", mean over items", "").replace(" mean over items", "")


def set_log_rate_axis(ax) -> None:
    """A log rate axis whose labels never overlap: decades labelled, and the 2 and 5 in between
    labelled plainly only where the axis spans less than two decades (no decade tick may show)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()
    if low > 0 and high / low < 100:
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def method_labels(rows: pd.DataFrame) -> dict[str, str]:
    """The label of each method of ``rows`` in plots and tables: its name with what changes the
    meaning of its results (:meth:`ulbc.codecs.base.Codec.label_tags` of its codec and options),
    e.g. "lottery (100 it, demo)", "x265 (inter, 4:2:0)". ``<method>@machine`` rows get the label
    of their method plus "@machine". A method whose codec is not registered here keeps its name."""
    from .codecs import CODECS
    from .errors import UlbcError

    labels: dict[str, str] = {}
    if rows.empty or "codec" not in rows.columns:
        return labels
    options_column = rows["codec_options"] if "codec_options" in rows.columns else pd.Series("", index=rows.index)
    firsts = rows.assign(_options=options_column.fillna("")).drop_duplicates("method")
    for method, codec, options_text in zip(firsts["method"], firsts["codec"], firsts["_options"]):
        base, _, target = str(method).partition("@")
        tags: tuple[str, ...] = ()
        try:
            options = json.loads(options_text) if options_text else {}
            if codec in CODECS and isinstance(options, dict):
                tags = tuple(CODECS[codec](**options).label_tags())
        except (ValueError, TypeError, UlbcError):
            tags = ()
        labels[method] = base + (f" ({', '.join(tags)})" if tags else "") + (f"@{target}" if target else "")
    return labels


def measured_metrics(rows: pd.DataFrame) -> list[str]:
    """Registered metrics a table of rows measured, in registry order: those named in its
    ``metric_info`` records, or, for rows without them, those with a value in any of their columns."""
    named: set[str] = set()
    if "metric_info" in rows.columns:
        for text in rows["metric_info"].dropna().unique():
            named.update(read_metric_info(text))
    found = []
    for name, cls in METRICS.items():
        if name in named:
            found.append(name)
        elif not named and cls.level == "item" and all(c.name in rows.columns for c in cls.columns) and any(
                rows[c.name].notna().any() for c in cls.columns):
            found.append(name)
    return found


def quality_columns(metric_names: Sequence[str], *, rd_only: bool = False) -> list[str]:
    """Summary columns of ``metric_names``: each metric's own columns, then its derived ones."""
    out = []
    for name in metric_names:
        cls = METRICS[name]
        out += [c.name for c in (*cls.columns, *cls.derived) if c.rd or not rd_only]
    return out


def _mean_of_column(values: pd.Series, column) -> float:
    """NaN if any value is NaN (a mean over a subset of the items would describe another set than
    the other columns); +inf counted at the column's cap."""
    values = values.astype("float64")
    if values.isna().any() or values.empty:
        return math.nan
    if column.cap is not None:
        values = values.where(~np.isposinf(values.to_numpy()), column.cap)
    return float(values.mean())


def summarize(df: pd.DataFrame, *, metrics: Sequence[str] | None = None,
              dataset_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (dataset, method, codec, rate_label, rate_value) rate point, over image and clip
    rows (frame rows are left out: each clip row already stands for its frames).

    ``n_items`` counts every row and ``n_failed`` those with status != "ok"; all averages are over
    the ok rows only, so a failed item lowers neither the rate nor the quality. Two rates are given:
    ``bpp`` is the mean of per-item bpp (what the BD-rates use), ``bpp_total`` the total bits over
    the total pixels; they differ on sets of mixed sizes. Each measured metric (``metrics``, by
    default :func:`measured_metrics`) contributes the means of its columns and its derived columns.
    A column's mean is NaN if any ok item's value is NaN (MS-SSIM of images under 161 px on a side).
    A lossless item (PSNR +inf) is counted at its column's cap (100 dB) and in ``n_lossless``, so
    it keeps its rate point on the curve. Dataset-level metrics (FID, KID) come from
    ``dataset_table`` (:func:`ulbc.features.dataset_metric_table`), measured over every ok item.
    """
    missing = [c for c in _ROW_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"metrics table: missing column(s) {', '.join(missing)}")
    names = list(metrics) if metrics is not None else measured_metrics(df)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"summary: unknown metric(s) {', '.join(unknown)}")
    item_names = [n for n in names if METRICS[n].level == "item"]
    row_columns = [c for n in item_names for c in METRICS[n].columns]
    absent = [c.name for c in row_columns if c.name not in df.columns]
    if absent:
        raise InputError(f"metrics table: missing column(s) {', '.join(absent)}")
    if "level" in df.columns:
        # Frames of a clip are summarised by the clip's own row, never counted as items.
        df = df[df["level"].isin(RD_LEVELS) | df["level"].isna()]
    frames = df["frames"] if "frames" in df.columns else pd.Series(1, index=df.index)
    optional = [key for key in ENCODER_RATE_COLUMNS if key in df.columns]
    work = df[_ROW_COLUMNS + optional + [c.name for c in row_columns]].copy()
    work["_pixels"] = (work["width"].astype("float64") * work["height"].astype("float64")
                       * frames.fillna(1).astype("float64"))
    # A missing status counts as failed: only rows that say "ok" carry trustworthy metrics.
    work["_ok"] = work["status"].eq("ok").fillna(False).astype(bool)
    instances = {n: METRICS[n]() for n in item_names}
    out = []
    for key, part in work.groupby(GROUP_KEYS, dropna=False, sort=False):
        ok = part[part["_ok"]]
        record = dict(zip(GROUP_KEYS, key), n_items=len(part), n_failed=int((~part["_ok"]).sum()))
        lossless = np.zeros(len(ok), dtype=bool)
        bits = 8.0 * ok["bytes"].astype("float64")
        record["bpp"] = float(ok["bpp"].mean()) if len(ok) else math.nan
        record["bpp_total"] = float(bits.sum() / ok["_pixels"].sum()) if len(ok) and bits.notna().all() else math.nan
        record["payload_bpp"] = float(ok["payload_bpp"].mean()) if len(ok) else math.nan
        for key in ENCODER_RATE_COLUMNS:
            estimates = ok[key].astype("float64") if key in optional else None
            record[key] = float(estimates.mean()) if len(ok) and estimates is not None and estimates.notna().all() \
                else math.nan
        for name in item_names:
            means = {}
            for column in METRICS[name].columns:
                means[column.name] = _mean_of_column(ok[column.name], column)
                if column.cap is not None:
                    lossless |= np.isposinf(ok[column.name].astype("float64").to_numpy())
            record.update(means)
            record.update(instances[name].derive(means))
        record["n_lossless"] = int(lossless.sum())
        record["encode_s"] = float(ok["encode_s"].mean()) if len(ok) else math.nan
        record["decode_s"] = float(ok["decode_s"].mean()) if len(ok) else math.nan
        out.append(record)
    quality = quality_columns(item_names)
    summary = pd.DataFrame(out, columns=GROUP_KEYS + COUNT_COLUMNS + RATE_COLUMNS + quality + TIMING_COLUMNS)
    dataset_names = [n for n in names if METRICS[n].level == "dataset"]
    if dataset_names:
        summary = _join_dataset_metrics(summary, dataset_table, dataset_names)
    for column in COUNT_COLUMNS:
        summary[column] = summary[column].astype("int64")
    summary = summary.sort_values(["dataset", "method", "bpp", "rate_value"], na_position="last", kind="mergesort")
    return summary.reset_index(drop=True)


def _join_dataset_metrics(summary: pd.DataFrame, table: pd.DataFrame | None, names: Sequence[str]) -> pd.DataFrame:
    """The summary with the dataset-level metric columns (and their note) of each rate point."""
    if table is None:
        raise InputError(f"summary: metric(s) {', '.join(names)} are measured per dataset; "
                         "pass their table (dataset_metrics.parquet)")
    columns = quality_columns(names)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"dataset-metrics table: missing column(s) {', '.join(missing)}")
    extra = table[GROUP_KEYS + columns + ["note"]].rename(columns={"note": "dataset_metric_note"})
    merged = summary.merge(extra, on=GROUP_KEYS, how="left")
    order = [c for c in summary.columns if c not in TIMING_COLUMNS] + columns + TIMING_COLUMNS + ["dataset_metric_note"]
    merged["dataset_metric_note"] = merged["dataset_metric_note"].fillna("")
    return merged[order]


def _lower_is_better(metric: str) -> bool:
    column = all_columns().get(metric)
    return column is not None and column.lower_is_better


def _curve(points: pd.DataFrame, metric: str, rate: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite, positive-rate points of one method, ordered by rate. Quality is oriented so that
    higher is better (a lower-is-better metric such as LPIPS or FID is negated): BD-rate is then
    the rate change at equal metric value whichever way the metric points."""
    if metric not in points.columns:  # an external curve that does not report this metric
        return np.zeros(0), np.zeros(0)
    rates = points[rate].to_numpy(dtype="float64")
    quality = points[metric].to_numpy(dtype="float64")
    if _lower_is_better(metric):
        quality = -quality
    keep = np.isfinite(rates) & (rates > 0) & np.isfinite(quality)
    order = np.argsort(rates[keep], kind="mergesort")
    return rates[keep][order], quality[keep][order]


def _curve_problem(rates: np.ndarray, quality: np.ndarray, min_points: int, who: str) -> str | None:
    if len(rates) < min_points:
        return f"{who} has {len(rates)} valid point(s), fewer than the {min_points} needed"
    # bjontegaard interpolates log-rate as a function of quality, so quality must improve strictly
    # with rate; a dip or a plateau would make that function multi-valued.
    if np.any(np.diff(rates) <= 0) or np.any(np.diff(quality) <= 0):
        return f"{who} curve is not strictly monotonic (quality must improve with rate)"
    return None


def _bd_quality(anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                interpolation: str) -> tuple[float, str | None]:
    """Mean oriented-quality difference of test over anchor at matched rate (the BD-PSNR idea applied
    to any metric), over the overlapping log-rate range; (value, note)."""
    import bjontegaard as bd

    (a_rate, a_q), (t_rate, t_q) = anchor, test
    low, high = max(a_rate.min(), t_rate.min()), min(a_rate.max(), t_rate.max())
    if not high > low:
        return math.nan, "no rate overlap for the quality difference at matched bpp"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(bd.bd_psnr(a_rate, a_q, t_rate, t_q, method=interpolation,
                                     require_matching_points=False, min_overlap=0))
    except (ValueError, AssertionError, np.linalg.LinAlgError) as exc:
        return math.nan, f"bjontegaard failed at matched bpp ({' '.join(str(exc).split()) or type(exc).__name__})"
    if not math.isfinite(value):
        return math.nan, "bjontegaard returned a non-finite quality difference"
    joint = math.log(max(a_rate.max(), t_rate.max()) / min(a_rate.min(), t_rate.min()))
    note = None
    if joint > 0 and math.log(high / low) / joint < LOW_OVERLAP:
        note = f"rate overlap only {100 * math.log(high / low) / joint:.0f}% of the joint log-rate range"
    return value, note


def overlap_share(anchor_quality: np.ndarray, test_quality: np.ndarray) -> float:
    """The overlapping quality interval of two curves as a share of their joint range (0 if none)."""
    low, high = max(anchor_quality.min(), test_quality.min()), min(anchor_quality.max(), test_quality.max())
    joint = max(anchor_quality.max(), test_quality.max()) - min(anchor_quality.min(), test_quality.min())
    return float((high - low) / joint) if high > low and joint > 0 else 0.0


def _bd_value(anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              interpolation: str) -> tuple[float, float, float, str | None]:
    """(BD-rate %, overlap low, overlap high, note) for one metric."""
    import bjontegaard as bd

    (a_rate, a_q), (t_rate, t_q) = anchor, test
    low, high = max(a_q.min(), t_q.min()), min(a_q.max(), t_q.max())
    if not high > low:
        return math.nan, math.nan, math.nan, (
            f"no quality overlap (anchor {a_q.min():.4g}..{a_q.max():.4g}, "
            f"method {t_q.min():.4g}..{t_q.max():.4g})"
        )
    joint = max(a_q.max(), t_q.max()) - min(a_q.min(), t_q.min())
    note = None
    if (high - low) / joint < LOW_OVERLAP:
        note = f"quality overlap only {100 * (high - low) / joint:.0f}% of the joint range"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = bd.bd_rate(a_rate, a_q, t_rate, t_q, method=interpolation,
                               require_matching_points=False, min_overlap=0)
    except (ValueError, AssertionError, np.linalg.LinAlgError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return math.nan, low, high, f"bjontegaard failed ({reason})"
    value = float(value)
    if not math.isfinite(value):
        return math.nan, low, high, "bjontegaard returned a non-finite value"
    return value, low, high, note


#: Excluded items named in a BD-rate note; any beyond these are only counted.
NOTE_ITEMS = 5


def _ok_items(rows: pd.DataFrame) -> tuple[set, set, list[str], pd.DataFrame]:
    """Items of one method's rows: (every item seen, the items ok at every rate point that has an ok
    item, the labels of rate points without any ok item, the ok rows). A missing row counts as a
    failure."""
    labels = list(dict.fromkeys(rows["rate_label"].tolist()))
    ok_rows = rows[rows["status"].eq("ok").fillna(False).astype(bool)]
    ok = ok_rows[["rate_label", "item"]].drop_duplicates()
    live = set(ok["rate_label"])
    per_item = ok.groupby("item", sort=False).size()
    return (set(rows["item"]), set(per_item.index[per_item == len(live)]),
            [label for label in labels if label not in live], ok_rows)


def _excluded_note(excluded: list) -> str:
    shown = ", ".join(str(item) for item in excluded[:NOTE_ITEMS])
    more = ", ..." if len(excluded) > NOTE_ITEMS else ""
    return f"{len(excluded)} item(s) excluded after failures: {shown}{more}"


def _metric_cells(points: pd.DataFrame, anchor_points: pd.DataFrame | None, *, is_anchor: bool, anchor: str,
                  metrics: Sequence[str], rate: str, interpolation: str) -> tuple[dict, list[str]]:
    """The bd_rate_/bd_/overlap_ cells of one table row, and the per-metric notes."""
    min_points = INTERPOLATIONS[interpolation]
    cells: dict = {}
    metric_notes: dict[str, list[str]] = {}  # note -> metrics it applies to, first-seen order
    for metric in metrics:
        value, low, high, at_rate = math.nan, math.nan, math.nan, math.nan
        note = None
        thin = False
        if anchor_points is not None:
            test = _curve(points, metric, rate)
            ref = _curve(anchor_points, metric, rate)
            if not is_anchor and len(test[0]) and len(ref[0]):
                thin = (min(len(test[0]), len(ref[0])) < THIN_MIN_POINTS
                        or overlap_share(ref[1], test[1]) < THIN_OVERLAP)
            note = _curve_problem(*ref, min_points, f"anchor {anchor}")
            if note is None and is_anchor:
                value, at_rate, low, high = 0.0, 0.0, float(ref[1].min()), float(ref[1].max())
            elif note is None:
                note = _curve_problem(*test, min_points, "method")
                if note is None:
                    value, low, high, note = _bd_value(ref, test, interpolation)
                    at_rate, rate_note = _bd_quality(ref, test, interpolation)
                    note = "; ".join(n for n in (note, rate_note) if n) or None
        if _lower_is_better(metric):
            # Back from the negated curve to the metric's own units (and sign of difference).
            low, high, at_rate = -high, -low, -at_rate
        cells[f"bd_rate_{metric}"] = value
        cells[f"bd_{metric}"] = at_rate
        cells[f"overlap_low_{metric}"] = low
        cells[f"overlap_high_{metric}"] = high
        cells[f"thin_{metric}"] = bool(thin and math.isfinite(value))
        if note:
            metric_notes.setdefault(note, []).append(metric)
    return cells, [f"{', '.join(names)}: {note}" for note, names in metric_notes.items()]


def _rows_by_item(rows: pd.DataFrame, anchor: str, metric_names: Sequence[str], dataset_table: pd.DataFrame | None,
                  external: pd.DataFrame | None = None):
    """(dataset, method, method points, anchor points or None, n_items, excluded items, notes) per
    table row, from per-item rows restricted to the items ok at every rate point of both curves."""
    row_metrics = [c.name for n in metric_names if METRICS[n].level == "item" for c in METRICS[n].columns]
    missing = [c for c in _ROW_COLUMNS + ["item"] + row_metrics if c not in rows.columns]
    if missing:
        raise InputError(f"metrics table: missing column(s) {', '.join(missing)}")
    if "level" in rows.columns:
        rows = rows[rows["level"].isin(RD_LEVELS) | rows["level"].isna()]
    # Fewer columns to copy when subsetting large tables.
    rows = rows[_ROW_COLUMNS + ["item"] + [c for c in ("frames",) if c in rows.columns] + row_metrics]
    for dataset, part in rows.groupby("dataset", sort=True):
        by_method = {method: _ok_items(group) for method, group in part.groupby("method", sort=True)}
        methods = list(by_method)
        has_anchor = anchor in by_method
        if has_anchor:
            methods = [anchor] + [m for m in methods if m != anchor]
            anchor_seen, anchor_ok, anchor_dead, anchor_rows = by_method[anchor]
        anchor_own = None  # the anchor's curve over all its ok items, for published curves
        for method in methods:
            seen, common, dead, ok_rows = by_method[method]
            notes = []
            if dead:
                notes.append(f"method: rate point(s) {', '.join(map(str, dead))} dropped, no item ok")
            if not has_anchor:
                notes.append(f"anchor {anchor} has no results for dataset {dataset}")
            elif method != anchor:
                seen, common = seen | anchor_seen, common & anchor_ok
                ok_rows = pd.concat([ok_rows, anchor_rows])
                if anchor_dead:
                    notes.append(f"anchor {anchor}: rate point(s) {', '.join(map(str, anchor_dead))} dropped, "
                                 "no item ok")
            excluded = sorted(seen - common, key=str)
            if excluded and not common:
                notes.append("no item is ok at every rate point" + (" of both method and anchor" if has_anchor
                                                                     and method != anchor else ""))
            elif excluded:
                notes.append(_excluded_note(excluded))
            summary = summarize(ok_rows[ok_rows["item"].isin(common)], metrics=metric_names,
                                dataset_table=dataset_table)
            anchor_points = summary[summary["method"] == anchor] if has_anchor else None
            if method == anchor:
                anchor_own = anchor_points
            yield dataset, method, summary[summary["method"] == method], anchor_points, len(common), excluded, notes
        if external is None:
            continue
        # Published curves: their points as given, against the anchor over all its ok items.
        anchor_points = anchor_own
        for method, points in external[external["dataset"] == dataset].groupby("method", sort=True):
            notes = [f"external curve ({points['source'].iloc[0]}): published points, taken as given"]
            if not has_anchor:
                notes.append(f"anchor {anchor} has no results for dataset {dataset}")
            yield dataset, method, points, anchor_points, None, [], notes


def _rows_by_point(summary: pd.DataFrame, anchor: str):
    """The same tuples from a per-rate-point table (no item column): curves taken as they are."""
    if "n_failed" in summary.columns and (summary["n_failed"].fillna(0) > 0).any():
        bad = summary[summary["n_failed"].fillna(0) > 0].iloc[0]
        raise InputError(
            f"BD-rate: the per-rate-point table has failed items ({bad['method']} {bad['rate_label']}); "
            "pass the per-item rows so the BD-rate can keep the items ok at every rate point"
        )
    for dataset, part in summary.groupby("dataset", sort=True):
        methods = sorted(part["method"].unique().tolist())
        anchor_points = part[part["method"] == anchor] if anchor in methods else None
        if anchor_points is not None:
            methods = [anchor] + [m for m in methods if m != anchor]
        for method in methods:
            notes = [] if anchor_points is not None else [f"anchor {anchor} has no results for dataset {dataset}"]
            yield dataset, method, part[part["method"] == method], anchor_points, None, [], notes


def bd_rate_table(
    table: pd.DataFrame,
    anchor: str,
    *,
    metrics: Sequence[str] | None = None,
    interpolation: str = "akima",
    rate: str = "bpp",
    dataset_table: pd.DataFrame | None = None,
    external: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Bjøntegaard delta rate (%) of every method against ``anchor``, per dataset and metric column.

    Negative means fewer bits than the anchor at equal quality; for a lower-is-better metric (LPIPS,
    FID) "equal quality" is an equal metric value, the curve being oriented before integration.
    ``metrics`` names summary columns; by default every RD column (:class:`ulbc.metrics.Column`
    ``rd``) of the metrics the rows measured. ``bd_<column>`` is the companion at matched rate: the
    mean difference of the metric itself (method minus anchor, in the metric's units) over the
    overlapping bpp range; it stays defined where quality ranges barely overlap, as they often do at
    ultra-low rates. Dataset-level metrics (FID, KID) need ``dataset_table``; they are measured
    over every ok item of a rate point, not over the common item set. ``external`` holds published
    curves (:func:`ulbc.compressai_json.read_compressai_json`), BD-rated as given against the anchor's
    ok items, with a note saying so. ``thin_<column>`` is true where the value rests on a curve of
    fewer than :data:`THIN_MIN_POINTS` points or on less than :data:`THIN_OVERLAP` quality overlap:
    the HTML tables grey and mark it. ``table`` is normally the per-item
    rows of a metrics file: for each (dataset, method) the BD-rate is then computed over the items
    that are ok at every rate point of both the method and the anchor (a common item set, so the two
    curves describe the same images); a failed item is left out of both curves rather than erasing
    a rate point. ``n_items`` counts the items used, ``n_excluded`` those left out (failed, or
    missing, at some rate point), and ``note`` names the first :data:`NOTE_ITEMS` of them. A rate
    point at which no item is ok is dropped and named in the note. A per-rate-point table (no
    ``item`` column, e.g. hand-made curves) is used as it is and must hold no failed items.

    Points whose metric is NaN or infinite are dropped for that metric only. Each value is NaN with
    a reason in ``note`` when it cannot be computed. ``overlap_low_*``/``overlap_high_*`` give the
    quality interval the integral runs over. ``rate`` picks the rate column: ``bpp`` is the mean of
    per-item bpp (the default), ``bpp_total`` total bits over total pixels, ``payload_bpp`` only the
    codec's stream.
    """
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"BD interpolation {interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
    by_item = "item" in table.columns
    if by_item:
        names = measured_metrics(table)
        if dataset_table is None:
            names = [n for n in names if METRICS[n].level == "item"]
        available = GROUP_KEYS + RATE_COLUMNS + quality_columns(names)
        metrics = list(metrics) if metrics is not None else quality_columns(names, rd_only=True)
    else:
        names = []
        available = list(table.columns)
        metrics = list(metrics) if metrics is not None else [
            c for c in quality_columns(list(METRICS), rd_only=True) if c in table.columns]
    unknown = [m for m in metrics + [rate] if m not in available]
    if unknown:
        raise ConfigError(f"BD-rate: summary has no column(s) {', '.join(unknown)}")
    present = sorted(table["method"].dropna().unique().tolist())
    if anchor not in present:
        raise ConfigError(
            f"anchor {anchor!r}: no results for this method; methods present: {', '.join(present) or 'none'}"
        )

    out = []
    groups = (_rows_by_item(table, anchor, names, dataset_table, external) if by_item
              else _rows_by_point(table, anchor))
    for dataset, method, points, anchor_points, n_items, excluded, notes in groups:
        cells, metric_notes = _metric_cells(points, anchor_points, is_anchor=method == anchor, anchor=anchor,
                                            metrics=metrics, rate=rate, interpolation=interpolation)
        out.append({"dataset": dataset, "method": method, "anchor": anchor, "interpolation": interpolation,
                    "n_points": int(len(points)),
                    "n_points_anchor": int(len(anchor_points)) if anchor_points is not None else 0,
                    "n_items": n_items, "n_excluded": len(excluded), **cells,
                    "note": "; ".join(notes + metric_notes)})

    columns = (
        ["dataset", "method", "anchor", "interpolation"]
        + [f"bd_rate_{m}" for m in metrics]
        + [f"bd_{m}" for m in metrics]
        + [f"thin_{m}" for m in metrics]
        + ["n_points", "n_points_anchor", "n_items", "n_excluded"]
        + [f"overlap_{side}_{m}" for m in metrics for side in ("low", "high")]
        + ["note"]
    )
    result = pd.DataFrame(out, columns=columns)
    # Integers, with a blank n_items for curves given without their items.
    result["n_items"] = result["n_items"].astype("Int64")
    result["n_excluded"] = result["n_excluded"].astype("int64")
    return result


def save_figure(fig, out_paths: Sequence[str | os.PathLike]) -> None:
    for dest in out_paths:
        fmt = Path(dest).suffix.lower().lstrip(".")
        if fmt not in ("png", "svg", "pdf"):
            raise ConfigError(f"{dest}: plot format must be .png, .svg or .pdf")
        # No creation date in vector files, so reruns give identical outputs.
        meta = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else None)
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=meta, bbox_inches="tight")


#: A panel's rate axis is logarithmic when its lowest rate is under this many bpp (the ultra-low
#: range would be a tangle on a linear axis) or its rates span more than this factor.
LOG_RATE_BELOW = 0.1
LOG_RATE_SPAN = 20.0


def wants_log_rate(rates: np.ndarray) -> bool:
    rates = rates[np.isfinite(rates) & (rates > 0)]
    if not len(rates):
        return False
    return bool(rates.min() < LOG_RATE_BELOW or rates.max() / rates.min() > LOG_RATE_SPAN)


def ok_rd_rows(rows: pd.DataFrame, *, human_only: bool = False) -> pd.DataFrame:
    """The ok image and clip rows that RD figures are drawn from; ``human_only`` leaves out the
    decodes made for machines (methods named ``<method>@<target>``, which have their own tables)."""
    ok = rows[rows["status"].eq("ok").fillna(False).astype(bool)]
    if "level" in ok.columns:
        ok = ok[ok["level"].isin(RD_LEVELS) | ok["level"].isna()]
    if human_only:
        ok = ok[~ok["method"].astype(str).str.contains("@", regex=False)]
    return ok


def method_colours(methods, anchor: str | None = None) -> dict[str, tuple]:
    """One colour per method but the anchor (drawn black), by sorted name, so that a method has the
    same colour in every panel and every figure of a study."""
    from matplotlib import colormaps

    others = sorted(m for m in set(methods) if m != anchor)
    palette = colormaps["tab10" if len(others) <= 10 else "tab20"]
    return {m: palette(i % palette.N) for i, m in enumerate(others)}


SPREAD_QUANTILES = (0.1, 0.9)


def with_item_derived(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each measured item metric's ``per_item`` derived columns (MS-SSIM in dB) worked
    out per row from that row's own values, for the per-item figures; ``rows`` when there are none."""
    added = {}
    for name in measured_metrics(rows):
        cls = METRICS[name]
        wanted = [c.name for c in cls.derived if c.per_item]
        if not wanted or cls.level != "item":
            continue
        metric = cls()
        own = rows[[c.name for c in cls.columns]].astype("float64").to_dict("records")
        values = [metric.derive(record) for record in own]
        for column in wanted:
            added[column] = [v[column] for v in values]
    return rows.assign(**added) if added else rows


def item_spread(rows: pd.DataFrame, metric: str, rate: str = "bpp") -> pd.DataFrame:
    """Per (dataset, method, rate point): the mean ``rate`` and the 10th and 90th percentiles of
    ``metric`` over the ok image and clip rows, for the bars of :func:`plot_rd`. Empty where the
    rows have no such per-item column (dataset-level metrics)."""
    columns = ["dataset", "method", "rate_label", "rate", "low", "high"]
    if metric not in rows.columns or rate not in rows.columns:
        return pd.DataFrame(columns=columns)
    ok = ok_rd_rows(rows)
    values = ok[metric].astype("float64")
    ok = ok.assign(_q=values.where(np.isfinite(values)))
    grouped = ok.groupby(["dataset", "method", "rate_label"], sort=False)
    low, high = SPREAD_QUANTILES
    out = pd.DataFrame({"rate": grouped[rate].mean(), "low": grouped["_q"].quantile(low),
                        "high": grouped["_q"].quantile(high)}).reset_index()
    return out[columns].dropna(subset=["low", "high"])


def plot_rd(
    summary: pd.DataFrame,
    out_paths: Sequence[str | os.PathLike],
    *,
    metric: str = "psnr_rgb",
    anchor: str | None = None,
    log_x: bool | None = None,
    rate: str = "bpp",
    labels: dict[str, str] | None = None,
    spread: pd.DataFrame | None = None,
) -> None:
    """RD curves, one panel per dataset and one line per method; the anchor is black and dashed.
    ``labels`` name the methods in the legend (:func:`method_labels`; default: the method names).
    ``log_x`` None picks a log rate axis per panel where its rates need one (:func:`wants_log_rate`).
    ``spread`` (:func:`item_spread`) draws each rate point's 10th–90th percentile of the metric over
    the items as a faint vertical bar.

    Uses matplotlib's object API with the Agg canvas (no pyplot state), so it runs headless and in
    worker threads. Rate points with failed items are plotted from their ok items and the method's
    legend entry says so.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for column in (metric, rate):
        if column not in summary.columns:
            raise ConfigError(f"RD plot: summary has no column {column!r}")
    datasets = sorted(summary["dataset"].dropna().unique().tolist()) or [None]
    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(5.6 * ncols, 4.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    y_label = column_label(metric)
    x_label = column_label(rate)
    colours = method_colours(summary["method"].dropna().unique().tolist(), anchor)

    for ax, dataset in zip(axes, datasets):
        part = summary[summary["dataset"] == dataset] if dataset is not None else summary.iloc[0:0]
        methods = sorted(part["method"].unique().tolist())
        if anchor in methods:
            methods = [anchor] + [m for m in methods if m != anchor]
        drawn = 0
        panel_log = wants_log_rate(part[rate].to_numpy(dtype="float64")) if log_x is None else log_x
        for method in methods:
            pts = part[part["method"] == method]
            x = pts[rate].to_numpy(dtype="float64")
            y = pts[metric].to_numpy(dtype="float64")
            keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if panel_log else True)
            if not keep.any():
                continue
            order = np.argsort(x[keep], kind="mergesort")
            label = (labels or {}).get(method, method) + (" (anchor)" if method == anchor else "")
            if "n_failed" in pts.columns and int(pts["n_failed"].fillna(0).sum()) > 0:
                label += " (some items failed)"
            external = "source" in pts.columns and pts["source"].fillna("").str.startswith("external").any()
            if method == anchor:
                style = {"color": "black", "linestyle": "--", "zorder": 3}
            else:
                style = {"color": colours[method]}
            if external:
                label += " (external, published)"
                style["linestyle"] = ":"
            ax.plot(x[keep][order], y[keep][order], marker="o", markersize=4, linewidth=1.4, label=label, **style)
            if spread is not None and len(spread):
                bars = spread[(spread["dataset"] == dataset) & (spread["method"] == method)]
                bars = bars[np.isfinite(bars["rate"]) & (bars["rate"] > 0 if panel_log else True)]
                ax.vlines(bars["rate"], bars["low"], bars["high"], color=style["color"], alpha=0.3, linewidth=3)
            drawn += 1
        if drawn:
            if panel_log:
                set_log_rate_axis(ax)
            ax.legend(fontsize="small", loc="best")
            ax.grid(True, which="both", alpha=0.3)
        else:
            ax.text(0.5, 0.5, f"no finite {metric} values", ha="center", va="center", transform=ax.transAxes)
        better = "lower is better" if _lower_is_better(metric) else "higher is better"
        ax.set_title(f"{dataset if dataset is not None else 'no results'}: {y_label} ({better})", fontsize="medium")
        ax.set_xlabel(x_label + (", log scale" if drawn and panel_log else ""))
        ax.set_ylabel(y_label)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    save_figure(fig, out_paths)


#: Items per dataset drawn by :func:`plot_item_rd` (the first ones, by item id).
ITEM_CURVES = 4


def plot_item_rd(rows: pd.DataFrame, out_paths: Sequence[str | os.PathLike], *, metric: str = "psnr_rgb",
                 anchor: str | None = None, rate: str = "bpp", labels: dict[str, str] | None = None,
                 items: int = ITEM_CURVES) -> bool:
    """Per-item RD curves: one row of panels per dataset, one panel for each of its first ``items``
    items (images, or clips), one line per method through that item's ok rows, coloured as in
    :func:`plot_rd`. Shows what a mean over items hides (a method that wins on one photo and loses
    on another). Returns False, writing nothing, where the rows have no per-item ``metric``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in rows.columns or rate not in rows.columns:
        return False
    ok = ok_rd_rows(rows, human_only=True)
    ok = ok[np.isfinite(ok[metric].astype("float64")) & np.isfinite(ok[rate].astype("float64"))]
    if ok.empty:
        return False
    datasets = sorted(ok["dataset"].unique().tolist())
    shown = {d: sorted(ok.loc[ok["dataset"] == d, "item"].unique().tolist())[:items] for d in datasets}
    ncols = max(len(v) for v in shown.values())
    fig = Figure(figsize=(3.6 * ncols, 3.2 * len(datasets)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(datasets), ncols, squeeze=False)
    colours = method_colours(ok["method"].unique().tolist(), anchor)
    better = "lower is better" if _lower_is_better(metric) else "higher is better"
    for r, dataset in enumerate(datasets):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(shown[dataset]):
                ax.set_visible(False)
                continue
            item = shown[dataset][c]
            part = ok[(ok["dataset"] == dataset) & (ok["item"] == item)]
            log_x = wants_log_rate(part[rate].to_numpy(dtype="float64"))
            methods = sorted(part["method"].unique().tolist(), key=lambda m: (m != anchor, m))
            for method in methods:
                pts = part[part["method"] == method].sort_values(rate, kind="mergesort")
                pts = pts[pts[rate] > 0] if log_x else pts
                style = ({"color": "black", "linestyle": "--", "zorder": 3} if method == anchor
                         else {"color": colours[method]})
                ax.plot(pts[rate], pts[metric], marker="o", markersize=3, linewidth=1.1,
                        label=(labels or {}).get(method, method) + (" (anchor)" if method == anchor else ""),
                        **style)
            if log_x:
                set_log_rate_axis(ax)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{dataset}: {item}", fontsize="small")
            ax.set_xlabel(item_label(rate) + (", log scale" if log_x else ""), fontsize="small")
            if c == 0:
                ax.set_ylabel(item_label(metric), fontsize="small")
            ax.tick_params(labelsize="x-small")
        axes[r][0].legend(fontsize="x-small", loc="best")
    fig.suptitle(f"{item_label(metric)}, per item ({better})", fontsize="medium")
    save_figure(fig, out_paths)
    return True


def _html_float(value: float) -> str:
    if value == 0:
        return "0"  # not "-0"
    if not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 100:
        return f"{value:.2f}"
    return f"{value:.4f}" if abs(value) >= 0.01 else f"{value:.4g}"


def _html_bd(value: float) -> str:
    return f"{value:+.2f} %" if math.isfinite(value) else ""


THIN_MARK = "†"
THIN_REASON = (f"a curve of fewer than {THIN_MIN_POINTS} points, or under {100 * THIN_OVERLAP:.0f} % quality "
               "overlap with the anchor; an indication, not a number to quote")
THIN_FOOTNOTE = f"{THIN_MARK} greyed: {THIN_REASON}"


def _html_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return _html_float(float(value))
    return str(value)


def _html_rows(df: pd.DataFrame, labels: dict[str, str] | None) -> tuple[str, bool]:
    """The table of ``df`` as HTML (``thin_<m>`` columns become marks on their BD cells), and
    whether any cell was marked."""
    thin_of = {c: f"thin_{c[len('bd_rate_'):]}" if c.startswith("bd_rate_") else f"thin_{c[len('bd_'):]}"
               for c in df.columns if str(c).startswith("bd_")}
    shown = [c for c in df.columns if not str(c).startswith("thin_")]
    marked = False
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown)
    body = []
    for _, row in df.iterrows():
        cells = []
        for column in shown:
            value = row[column]
            if column == "method" and labels:
                text = labels.get(str(value), str(value))
            elif str(column).startswith("bd_rate_"):
                text = _html_bd(float(value)) if pd.notna(value) else ""
            else:
                text = _html_cell(value)
            thin_column = thin_of.get(column)
            if thin_column in df.columns and bool(row[thin_column]) and text:
                marked = True
                cells.append(f'<td class="thin">{html.escape(text)}{THIN_MARK}</td>')
            else:
                cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (f'<table class="ulbc-table"><thead><tr style="text-align: left;">{head}</tr></thead>\n<tbody>\n'
             + "\n".join(body) + "\n</tbody></table>")
    return table, marked


def write_table(df: pd.DataFrame, out_path: str | os.PathLike, *, notice: str | None = None,
                labels: dict[str, str] | None = None) -> None:
    """Write ``df`` as .csv (full precision, for further analysis) or .html (rounded, for reports).

    The HTML is a small standalone page so Snakemake's ``--report`` can embed it as it is. A
    ``notice`` (e.g. that the results mix code versions) becomes a ``notice`` column of the CSV and
    a highlighted line above the HTML table. In the HTML, ``labels`` replace method names
    (:func:`method_labels`), BD-rates read as signed percentages, and the BD cells of a row whose
    ``thin_<column>`` is true are greyed and marked (the ``thin_`` columns themselves stay in the CSV).
    """
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix == ".csv":
        text = (df.assign(notice=notice) if notice else df).to_csv(index=False)
    elif suffix in (".html", ".htm"):
        table, marked = _html_rows(df, labels)
        footnote = f'<p class="ulbc-footnote">{html.escape(THIN_FOOTNOTE)}</p>\n' if marked else ""
        text = (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n"
            f"<title>{html.escape(out_path.stem)}</title>\n<style>\n"
            ".ulbc-table { border-collapse: collapse; font-family: sans-serif; font-size: 13px; }\n"
            ".ulbc-table th, .ulbc-table td { padding: 3px 8px; border-bottom: 1px solid #ddd; }\n"
            ".ulbc-table td { text-align: right; }\n"
            ".ulbc-table tbody tr:nth-child(even) { background: #f6f6f6; }\n"
            ".ulbc-notice { font-family: sans-serif; font-size: 13px; background: #fff3cd; padding: 6px; }\n"
            ".ulbc-table td.thin { color: #999; }\n"
            ".ulbc-footnote { font-family: sans-serif; font-size: 12px; color: #555; }\n"
            "</style></head><body>\n"
            + (f'<p class="ulbc-notice">{html.escape(notice)}</p>\n' if notice else "")
            + table + "\n" + footnote + "</body></html>\n"
        )
    else:
        raise ConfigError(f"{out_path}: table format must be .csv or .html")
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")


#: Folder of a study's RD plots (one PNG and one SVG per RD column), under its results folder.
PLOTS_DIR = "rd"
ITEM_PLOTS_DIR = "rd_items"  # per-item RD curves of the first items of each dataset


def rd_columns(summary: pd.DataFrame) -> list[str]:
    """The RD columns of a summary, in registry order: what gets a plot and a BD-rate."""
    return [c for c in quality_columns(list(METRICS), rd_only=True) if c in summary.columns]


def study_notes(summary: pd.DataFrame) -> list[str]:
    """What a reader of the tables must know: the rate convention, lossless items, dataset-level notes."""
    notes = ["BD-rates use bpp = the mean of per-item bpp; bpp_total (total bits / total pixels) is in the summary"]
    lossless = summary[summary["n_lossless"] > 0]
    if len(lossless):
        where = ", ".join(f"{r.method} {r.rate_label} ({r.n_lossless})" for r in lossless.itertuples())
        capped = {c.name: c.cap for c in all_columns().values() if c.cap is not None and c.name in summary.columns}
        caps = ", ".join(f"{name} at {cap:g} dB" for name, cap in capped.items())
        notes.append(f"lossless items (PSNR = inf) are averaged with {caps}, so their rate points stay on the "
                     f"curves: {where}")
    if "dataset_metric_note" in summary.columns:
        for r in summary[summary["dataset_metric_note"] != ""].itertuples():
            notes.append(f"{r.dataset} {r.method} {r.rate_label}: {r.dataset_metric_note}")
    return notes


def encoder_notes(frame: pd.DataFrame) -> list[str]:
    """What the encoders say changes the meaning of their rows (``note`` in a row's encode_info:
    a decode without the method's generative model, a decoder not bit-exact across devices), once
    per dataset and method."""
    if "encode_info" not in frame.columns:
        return []
    notes: dict[tuple[str, str], list[str]] = {}
    ok = frame[frame["status"].eq("ok") & frame["encode_info"].fillna("").ne("")]
    for (dataset, method), part in ok.groupby(["dataset", "method"], sort=True):
        for text in part["encode_info"].unique():
            try:
                note = json.loads(text).get("note")
            except (ValueError, AttributeError):
                continue
            if isinstance(note, str) and note and note not in notes.setdefault((dataset, method), []):
                notes[(dataset, method)].append(note)
    return [f"{dataset} {method}: {'; '.join(items)}" for (dataset, method), items in notes.items() if items]


def _size_text(sizes: pd.DataFrame) -> str:
    unique = sizes.drop_duplicates()
    if len(unique) == 1:
        return f"{int(unique.iloc[0, 0])}×{int(unique.iloc[0, 1])}"
    by_area = unique.assign(area=unique.iloc[:, 0] * unique.iloc[:, 1]).sort_values("area", kind="mergesort")
    small, large = by_area.iloc[0], by_area.iloc[-1]
    return f"{len(unique)} sizes, {int(small.iloc[0])}×{int(small.iloc[1])} to {int(large.iloc[0])}×{int(large.iloc[1])}"


def describe_datasets(frame: pd.DataFrame, sources: dict[str, str] | None = None,
                      labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per dataset of a study's rows: what it is (``sources``: the config's description
    of each), how many items (images, or clips), their size, the frames per clip, and which
    methods ran on it (by label). Made from the rows, so it says what was measured."""
    rows = []
    frame = frame[frame["level"].isin(RD_LEVELS)] if "level" in frame.columns else frame
    for dataset, part in frame.groupby("dataset", sort=True):
        human = part[~part["method"].str.contains("@", regex=False)]
        video = "level" in part.columns and bool((part["level"] == "clip").any())
        items = human.drop_duplicates("item")
        frames = sorted({int(f) for f in items["frames"].dropna()}) if video and "frames" in items.columns else []
        methods = sorted(human["method"].unique())
        rows.append({
            "dataset": dataset,
            "source": (sources or {}).get(dataset, ""),
            "kind": "video (clips)" if video else "images",
            "items": int(len(items)),
            "size": _size_text(items[["width", "height"]]) if len(items) else "",
            "frames per clip": ", ".join(map(str, frames)) if video else "",
            "methods": ", ".join((labels or {}).get(m, m) for m in methods),
        })
    return pd.DataFrame(rows, columns=["dataset", "source", "kind", "items", "size", "frames per clip", "methods"])


def metric_definitions(frame: pd.DataFrame, dataset_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per column of the metrics a study measured: what it is, which way is better, whether
    it is BD-rated, and the settings recorded with the results (options, weight files by sha256)."""
    infos: dict[str, set[str]] = {}
    sources = [frame["metric_info"]] if "metric_info" in frame.columns else []
    if dataset_table is not None and "metric_info" in dataset_table.columns:
        sources.append(dataset_table["metric_info"])
    for series in sources:
        for text in series.dropna().unique():
            for name, info in read_metric_info(text).items():
                infos.setdefault(name, set()).add(json.dumps(info, sort_keys=True))
    names = measured_metrics(frame)
    if dataset_table is not None:
        names += [n for n in infos if n in METRICS and METRICS[n].level == "dataset" and n not in names]
    rows = []
    for name in names:
        cls = METRICS[name]
        for column in (*cls.columns, *cls.derived):
            rows.append({"metric": name, "column": column.name, "label": column.label,
                         "level": "dataset" if cls.level == "dataset" else ("summary" if column in cls.derived
                                                                             else "item"),
                         "better": column.direction, "bd_rated": column.rd, "description": cls.description,
                         "settings": " | ".join(sorted(infos.get(name, ())))})
    return pd.DataFrame(rows, columns=["metric", "column", "label", "level", "better", "bd_rated", "description",
                                       "settings"])


#: The fidelity column the task table puts next to the task columns (the paper's Kodak BD-rate).
TASK_TABLE_FIDELITY = "psnr_rgb"


def task_table(bd_table: pd.DataFrame) -> pd.DataFrame:
    """The BD-rate table in the layout of Zhu et al. (ICIP 2024), Table 1: one row per (dataset,
    method), the BD-rate and BD value of each task column (mAP, agreement) of the decode made for
    machines (``<method>@machine`` where the method has one, else its only decode) next to the
    BD-rate of PSNR of the decode made for viewing. ``task_rows`` names the rows the task columns
    come from. Columns come from the metric registry (``Metric.task``) and from what was measured."""
    task_columns = [column.name for cls in METRICS.values() if cls.task for column in cls.columns if column.rd
                    and f"bd_rate_{column.name}" in bd_table.columns]
    fidelity = [TASK_TABLE_FIDELITY] if f"bd_rate_{TASK_TABLE_FIDELITY}" in bd_table.columns else []
    columns = (["dataset", "method", "anchor", "task_rows"]
               + [f"{prefix}{c}" for c in task_columns for prefix in ("bd_rate_", "bd_")]
               + [f"bd_rate_{c}" for c in fidelity] + ["note"])
    if bd_table.empty or not task_columns:
        return pd.DataFrame([], columns=columns)
    by_key = {(row["dataset"], row["method"]): row for _, row in bd_table.iterrows()}
    machine_suffix = target_method("", "machine")
    rows = []
    for (dataset, method), human in by_key.items():
        if method.endswith(machine_suffix):
            continue
        machine = by_key.get((dataset, target_method(method, "machine")))
        task = machine if machine is not None else human
        row = {"dataset": dataset, "method": method, "anchor": human["anchor"], "task_rows": task["method"]}
        row.update({f"{prefix}{c}": task[f"{prefix}{c}"] for c in task_columns for prefix in ("bd_rate_", "bd_")})
        row.update({f"bd_rate_{c}": human[f"bd_rate_{c}"] for c in fidelity})
        notes = [human["note"]] if isinstance(human["note"], str) and human["note"] else []
        if machine is not None and isinstance(machine["note"], str) and machine["note"]:
            notes.append(f"{task['method']}: {machine['note']}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def analyse_study(frame: pd.DataFrame, outdir: str | os.PathLike, *, anchor: str, interpolation: str = "akima",
                  dataset_table: pd.DataFrame | None = None, notice: str | None = None,
                  external: pd.DataFrame | None = None, dataset_sources: dict[str, str] | None = None):
    """Summary, BD-rate table (CSV and HTML), one RD plot per RD column of the measured metrics and
    the cost figures (:mod:`ulbc.costplots`).
    ``external`` published curves join the summary (``source`` says where they come from), the
    plots (dotted) and the BD-rate table. ``datasets.csv``/``.html`` describe each dataset
    (``dataset_sources``: the config's words for where it comes from).

    Returns (summary, BD-rate table, notes); the notes also head the HTML tables."""
    from .costplots import COST_DIR, write_cost_plots
    from .tables import bd_rate_html, summary_html

    out = Path(outdir)
    labels = method_labels(frame)
    summary = summarize(frame, dataset_table=dataset_table)
    notes = study_notes(summary) + encoder_notes(frame)
    if external is not None and len(external):
        clash = sorted(set(external["method"]) & set(summary["method"]))
        if clash:
            raise ConfigError(f"reference results: {', '.join(clash)} is also a method of the study; name it apart")
        summary = pd.concat([summary.assign(source=""), external], ignore_index=True)[
            list(summary.columns) + ["source"]]
        notes.append(f"external curves (published, not measured by this study): {', '.join(sorted(set(external['method'])))}")
    text = "; ".join(([notice] if notice else []) + notes)
    write_table(summary, out / "summary.csv", notice=notice)
    write_bytes_atomic(out / "summary.html", summary_html(summary, labels, rows=frame, notice=text or None).encode())
    # Per-item rows: the BD-rate keeps the items ok at every rate point of method and anchor.
    table = bd_rate_table(frame, anchor, interpolation=interpolation, dataset_table=dataset_table, external=external)
    write_table(table, out / "bdrate.csv", notice=notice)
    write_bytes_atomic(out / "bdrate.html", bd_rate_html(table, labels, notice=text or None).encode())
    tasks = task_table(table)
    write_table(tasks, out / "task_bdrate.csv", notice=notice)
    write_table(tasks, out / "task_bdrate.html", notice="; ".join(
        [text, "task columns from the machine decode (task_rows), PSNR from the decode for viewing"]), labels=labels)
    write_table(metric_definitions(frame, dataset_table), out / "metric_definitions.html")
    datasets = describe_datasets(frame, dataset_sources, labels)
    write_table(datasets, out / "datasets.csv")
    write_table(datasets, out / "datasets.html")
    write_cost_plots(frame, table, out / COST_DIR, labels=labels)
    plots = out / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    item_plots = out / ITEM_PLOTS_DIR
    item_plots.mkdir(parents=True, exist_ok=True)
    item_rows = with_item_derived(frame)
    for column in rd_columns(summary):
        plot_rd(summary, [plots / f"{column}.png", plots / f"{column}.svg"], metric=column, anchor=anchor,
                labels=labels, spread=item_spread(item_rows, column))
        plot_item_rd(item_rows, [item_plots / f"{column}.png"], metric=column, anchor=anchor, labels=labels)
    return summary, table, notes
