"""What a method costs beside its RD curve: encode and decode time against rate, where the bits of
an overfitted codec go (latents, network, mask), and decoder MACs per pixel against BD-rate.

Each figure is drawn only where the rows hold its data (the bitstream statistics columns of
:data:`ulbc.schema.BITSTREAM_STAT_COLUMNS` are filled by the codecs that have them).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .rd import (
    method_colours,
    ok_rd_rows,
    save_figure,
    set_log_rate_axis,
    wants_log_rate,
)

COST_DIR = "cost"
SPLIT_PARTS = (("bits_latent", "latents"), ("bits_nn", "network"), ("bits_mask", "mask"))


def _figure(n_panels: int, width: float = 5.6, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(max(n_panels, 1), 3)
    nrows = math.ceil(max(n_panels, 1) / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def per_point_costs(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, rate point) over the ok items: mean bpp, mean encode and decode seconds,
    the bits per pixel of each part of the file where the codec reports them, mean MACs per pixel."""
    ok = ok_rd_rows(rows, human_only=True)
    frames = ok["frames"].fillna(1).astype("float64") if "frames" in ok.columns else 1.0
    pixels = ok["width"].astype("float64") * ok["height"].astype("float64") * frames
    work = ok.assign(_pixels=pixels)
    for column, _ in SPLIT_PARTS:
        work[f"{column}_bpp"] = work[column].astype("float64") / work["_pixels"] if column in work.columns else np.nan
    if "macs_per_pixel" not in work.columns:
        work["macs_per_pixel"] = np.nan
    grouped = work.groupby(["dataset", "method", "rate_label"], sort=False)
    means = grouped[["bpp", "encode_s", "decode_s", "macs_per_pixel"] + [f"{c}_bpp" for c, _ in SPLIT_PARTS]].mean()
    return means.reset_index()


def plot_time_vs_rate(costs: pd.DataFrame, out_paths, *, labels: dict[str, str]) -> None:
    datasets = sorted(costs["dataset"].unique())
    fig, axes = _figure(len(datasets))
    colours = method_colours(costs["method"].unique())
    for ax, dataset in zip(axes, datasets):
        part = costs[costs["dataset"] == dataset]
        for method, pts in part.groupby("method", sort=True):
            pts = pts.sort_values("bpp")
            label = labels.get(method, method)
            for column, style, kind in (("encode_s", "-", "encode"), ("decode_s", "--", "decode")):
                keep = pts[column].astype("float64") > 0
                ax.plot(pts["bpp"][keep], pts[column][keep], linestyle=style, marker="o" if kind == "encode" else "s",
                        markersize=3.5, color=colours[method], label=f"{label}, {kind}")
        if wants_log_rate(part["bpp"].to_numpy(dtype="float64")):
            set_log_rate_axis(ax)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{dataset}: encode (solid) and decode (dashed) time", fontsize="medium")
        ax.set_xlabel("bits per pixel (bpp), mean over items")
        ax.set_ylabel("seconds per item, mean (log scale)")
        ax.legend(fontsize="x-small", loc="best", ncol=2)
    save_figure(fig, out_paths)


def plot_rate_split(costs: pd.DataFrame, out_paths, *, labels: dict[str, str]) -> bool:
    """Stacked bars of the bits per pixel in each part of the file, per rate point of the methods
    that report them; False (nothing written) when none does."""
    parts = [(f"{c}_bpp", name) for c, name in SPLIT_PARTS]
    split = costs[costs[[c for c, _ in parts]].notna().any(axis=1)]
    if split.empty:
        return False
    datasets = sorted(split["dataset"].unique())
    fig, axes = _figure(len(datasets), width=6.4)
    shades = {"latents": "#4c72b0", "network": "#dd8452", "mask": "#55a868"}
    for ax, dataset in zip(axes, datasets):
        part = split[split["dataset"] == dataset].sort_values(["method", "bpp"])
        names = [f"{labels.get(m, m)}\n{r}" for m, r in zip(part["method"], part["rate_label"])]
        x = np.arange(len(part))
        bottom = np.zeros(len(part))
        for column, name in parts:
            values = part[column].fillna(0.0).to_numpy(dtype="float64")
            if values.any():
                ax.bar(x, values, bottom=bottom, color=shades[name], label=name)
                bottom += values
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize="x-small")
        ax.set_ylabel("bits per pixel, mean over items")
        ax.set_title(f"{dataset}: where the bits go", fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    save_figure(fig, out_paths)
    return True


def plot_macs_vs_bdrate(costs: pd.DataFrame, bd_table: pd.DataFrame, out_paths, *, labels: dict[str, str],
                        metric: str | None = None) -> bool:
    """Decoder MACs per pixel (mean over the rate points) against BD-rate, one point per method that
    reports MACs; False (nothing written) when none does or no BD-rate was computed."""
    columns = [c for c in bd_table.columns if str(c).startswith("bd_rate_")]
    if metric is None:
        metric = next((c for c in columns if c == "bd_rate_psnr_rgb"), columns[0] if columns else None)
    macs = costs.groupby(["dataset", "method"])["macs_per_pixel"].mean().dropna()
    if metric is None or macs.empty:
        return False
    merged = bd_table.set_index(["dataset", "method"])[[metric]].join(macs, how="inner").dropna()
    if merged.empty:
        return False
    datasets = sorted(merged.index.get_level_values(0).unique())
    fig, axes = _figure(len(datasets))
    for ax, dataset in zip(axes, datasets):
        part = merged.loc[dataset]
        ax.scatter(part["macs_per_pixel"], part[metric], color="#4c72b0")
        for method, point in part.iterrows():
            ax.annotate(labels.get(method, method), (point["macs_per_pixel"], point[metric]), fontsize="x-small",
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("decoder MACs per pixel (log scale)")
        ax.set_ylabel(f"BD-rate, {metric[len('bd_rate_'):]} (%; negative = fewer bits)")
        ax.set_title(f"{dataset}: decoding cost against BD-rate", fontsize="medium")
    save_figure(fig, out_paths)
    return True


def write_cost_plots(rows: pd.DataFrame, bd_table: pd.DataFrame, outdir: str | os.PathLike, *,
                     labels: dict[str, str]) -> list[Path]:
    """The figures of this module under ``outdir`` (PNG and SVG each); returns the PNGs written."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    costs = per_point_costs(rows)
    written = []
    if len(costs):
        plot_time_vs_rate(costs, [out / "time_vs_rate.png", out / "time_vs_rate.svg"], labels=labels)
        written.append(out / "time_vs_rate.png")
    if len(costs) and plot_rate_split(costs, [out / "rate_split.png", out / "rate_split.svg"], labels=labels):
        written.append(out / "rate_split.png")
    if len(costs) and plot_macs_vs_bdrate(costs, bd_table, [out / "macs_vs_bdrate.png", out / "macs_vs_bdrate.svg"],
                                          labels=labels):
        written.append(out / "macs_vs_bdrate.png")
    return written
