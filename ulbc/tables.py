"""Readable views of a study's tables: BD-rates per dataset (text for the terminal, HTML for the
report) and the summary grouped by dataset and method with stated units.

The CSV files keep every column at full precision; these views choose, order and format. They
read only the tables :mod:`ulbc.rd` makes, so their content follows the metric registry.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from .metrics import all_columns
from .rd import THIN_FOOTNOTE, THIN_MARK, THIN_REASON, column_label

BD_RATE_MEANING = ("BD-rate: bits against the anchor at equal quality, in %; negative = fewer bits (better).")
BD_DELTA_MEANING = ("Δ: the method's metric minus the anchor's at equal bpp, in the metric's units "
                    "(for a lower-is-better metric, negative is better).")
MISSING = "n/a"


@dataclass
class BdRow:
    method: str
    label: str
    cells: dict[str, tuple[float, float, bool]]  # metric -> (BD-rate %, Δ at equal bpp, thin)
    points: str
    items: str
    notes: list[int] = field(default_factory=list)  # 1-based indices into BdSection.notes


@dataclass
class BdSection:
    """The BD-rates of one dataset: every method but the anchor, best first."""

    dataset: str
    anchor: str
    anchor_label: str
    interpolation: str
    metrics: list[str]
    rows: list[BdRow]
    notes: list[str]
    anchor_notes: list[str]


def _bd_metrics(table: pd.DataFrame) -> list[str]:
    return [c[len("bd_rate_"):] for c in table.columns if str(c).startswith("bd_rate_")]


def _int_text(value) -> str:
    return "" if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def bd_sections(table: pd.DataFrame, labels: dict[str, str] | None = None) -> list[BdSection]:
    """:func:`ulbc.rd.bd_rate_table` regrouped for reading: one section per dataset, rows sorted by
    the first metric's BD-rate (best first, values that could not be computed last), the anchor's own
    row left out (its notes kept), each distinct note numbered once per section."""
    labels = labels or {}
    metrics = _bd_metrics(table)
    sections = []
    for dataset, part in table.groupby("dataset", sort=True):
        anchor = str(part["anchor"].iloc[0])
        interpolation = str(part["interpolation"].iloc[0]) if "interpolation" in part.columns else ""
        notes: list[str] = []
        anchor_notes: list[str] = []
        rows = []
        for _, record in part.iterrows():
            note_text = str(record.get("note") or "")
            parts = [n.strip() for n in note_text.split("; ") if n.strip()]
            if record["method"] == anchor:
                anchor_notes += parts
                continue
            cells = {m: (float(record[f"bd_rate_{m}"]), float(record.get(f"bd_{m}", math.nan)),
                         bool(record.get(f"thin_{m}", False))) for m in metrics}
            excluded = int(record.get("n_excluded", 0) or 0)
            items = _int_text(record.get("n_items"))
            rows.append(BdRow(method=str(record["method"]), label=labels.get(record["method"], str(record["method"])),
                              cells=cells, points=f"{int(record['n_points'])}/{int(record['n_points_anchor'])}",
                              items=items + (f" (-{excluded})" if excluded else ""),
                              notes=list(dict.fromkeys(parts))))  # the texts until numbered below
        rows.sort(key=lambda row: _order(row, metrics[0] if metrics else None))
        for row in rows:  # numbered in the order they are read; one shared by several metrics is cited once
            texts, row.notes = row.notes, []
            for note in texts:
                if note not in notes:
                    notes.append(note)
                row.notes.append(notes.index(note) + 1)
        sections.append(BdSection(dataset=str(dataset), anchor=anchor, anchor_label=labels.get(anchor, anchor),
                                  interpolation=interpolation, metrics=metrics, rows=rows, notes=notes,
                                  anchor_notes=list(dict.fromkeys(anchor_notes))))
    return sections


def _order(row: BdRow, metric: str | None) -> tuple:
    """Best first by ``metric``'s BD-rate; values that could not be computed last, by label."""
    value = row.cells[metric][0] if metric else math.nan
    return (math.isnan(value), 0.0 if math.isnan(value) else value, row.label)


def bd_text(value: float) -> str:
    return f"{value:+.2f}%" if math.isfinite(value) else MISSING


def delta_text(value: float) -> str:
    if not math.isfinite(value):
        return MISSING
    if value == 0:
        return "0"
    return f"{value:+.2f}" if abs(value) >= 1 else f"{value:+.4f}"


# Columns of the text table: BD-rate (with a thin mark) and Δ per metric.
_RATE_W, _DELTA_W, _GAP = 10, 9, 2


def bd_rate_text(table: pd.DataFrame, labels: dict[str, str] | None = None, *, width: int = 100) -> str:
    """The BD-rate table as plain text no wider than ``width`` (metrics that do not fit go to a
    further block of the same rows), one block per dataset, notes as numbered footnotes."""
    out: list[str] = []
    wrap = textwrap.TextWrapper(width=width, subsequent_indent="    ", break_on_hyphens=False)
    for section in bd_sections(table, labels):
        out.append(f"{section.dataset}: BD against {section.anchor_label}"
                   + (f", {section.interpolation} interpolation" if section.interpolation else ""))
        if not section.rows:
            out.append("  (no method besides the anchor)")
        tail_w = len("points") + 1 + max([len("items")] + [len(r.items) for r in section.rows]) + 1 + len("notes")
        label_w = min(max([len("method")] + [len(r.label) for r in section.rows]), max(12, width // 3))
        per_metric = _RATE_W + _DELTA_W + _GAP
        fit = max(1, (width - label_w - tail_w - 2) // per_metric)
        chunks = [section.metrics[i:i + fit] for i in range(0, len(section.metrics), fit)] or [[]]
        items_w = tail_w - len("points") - len("notes") - 2
        for chunk in chunks if section.rows else []:
            head1 = f"{'':<{label_w}}  " + "".join(
                f"{textwrap.shorten(m, per_metric - _GAP, placeholder='~'):<{per_metric}}" for m in chunk)
            head2 = f"{'method':<{label_w}}  " + "".join(
                f"{'BD-rate':>{_RATE_W}}{'Δ':>{_DELTA_W}}{'':{_GAP}}" for _ in chunk)
            head2 += f"{'points':>6} {'items':>{items_w}} notes"
            out += [head1.rstrip(), head2.rstrip()]
            for row in section.rows:
                label = row.label if len(row.label) <= label_w else row.label[:label_w - 1] + "~"
                line = f"{label:<{label_w}}  "
                for metric in chunk:
                    rate, delta, thin = row.cells[metric]
                    rate_cell = bd_text(rate) + (THIN_MARK if thin and math.isfinite(rate) else " ")
                    line += f"{rate_cell:>{_RATE_W}}{delta_text(delta):>{_DELTA_W}}{'':{_GAP}}"
                line += f"{row.points:>6} {row.items:>{items_w}} " + ",".join(map(str, row.notes))
                out.append(line.rstrip())
            out.append("")
        for number, note in enumerate(section.notes, 1):
            out += wrap.wrap(f"[{number}] {note}")
        for note in section.anchor_notes:
            out += wrap.wrap(f"anchor: {note}")
        if out[-1]:
            out.append("")
    legend = [BD_RATE_MEANING, BD_DELTA_MEANING,
              "points: rate points of the method / of the anchor; items: items on both curves (-left out).",
              f"{THIN_MARK} thin: {THIN_REASON}."]
    for line in legend:
        out += textwrap.wrap(line, width=width)
    return "\n".join(out).rstrip() + "\n"


_CSS = (
    "body { font-family: sans-serif; font-size: 13px; }\n"
    "h2 { font-size: 16px; margin: 18px 0 4px; }\n"
    ".ulbc-table { border-collapse: collapse; font-size: 13px; }\n"
    ".ulbc-table th, .ulbc-table td { padding: 3px 8px; border-bottom: 1px solid #ddd; }\n"
    ".ulbc-table th { text-align: center; }\n"
    ".ulbc-table td { text-align: right; white-space: nowrap; }\n"
    ".ulbc-table td.name { text-align: left; }\n"
    ".ulbc-table tbody tr:nth-child(even) { background: #f6f6f6; }\n"
    ".ulbc-table td.thin { color: #999; }\n"
    ".ulbc-table tr.group td { text-align: left; font-weight: bold; background: #e8eef7; }\n"
    ".ulbc-notice { background: #fff3cd; padding: 6px; }\n"
    ".ulbc-caption, .ulbc-footnote { font-size: 12px; color: #444; max-width: 1100px; }\n"
)


def html_page(title: str, body: str, notice: str | None = None) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}</style></head><body>\n"
            f"<h1 style=\"font-size: 18px\">{html.escape(title)}</h1>\n"
            + (f'<p class="ulbc-notice">{html.escape(notice)}</p>\n' if notice else "")
            + body + "</body></html>\n")


def bd_rate_html(table: pd.DataFrame, labels: dict[str, str] | None = None, *, notice: str | None = None) -> str:
    """The BD-rate table as a report page: one table per dataset, sorted, "%" on every BD-rate, Δ at
    equal bpp beside it, thin values greyed and marked, notes as numbered footnotes."""
    sections = bd_sections(table, labels)
    body = []
    any_thin = False
    for section in sections:
        body.append(f"<h2>{html.escape(section.dataset)}</h2>\n<p class=\"ulbc-caption\">Against "
                    f"<b>{html.escape(section.anchor_label)}</b>"
                    + (f", {html.escape(section.interpolation)} interpolation" if section.interpolation else "")
                    + ". Sorted by the first BD-rate, best first.</p>")
        if not section.rows:
            body.append("<p>No method besides the anchor.</p>")
            continue
        head1 = '<th rowspan="2">method</th>' + "".join(
            f'<th colspan="2">{html.escape(column_label(m))}</th>' for m in section.metrics)
        head1 += '<th rowspan="2">points</th><th rowspan="2">items</th><th rowspan="2">notes</th>'
        head2 = "".join("<th>BD-rate</th><th>Δ</th>" for _ in section.metrics)
        lines = []
        for row in section.rows:
            cells = [f'<td class="name">{html.escape(row.label)}</td>']
            for metric in section.metrics:
                rate, delta, thin = row.cells[metric]
                thin = thin and math.isfinite(rate)
                any_thin |= thin
                css = ' class="thin"' if thin else ""
                cells.append(f"<td{css}>{html.escape(bd_text(rate))}{THIN_MARK if thin else ''}</td>"
                             f"<td{css}>{html.escape(delta_text(delta))}</td>")
            refs = ", ".join(f"[{n}]" for n in row.notes)
            cells.append(f"<td>{html.escape(row.points)}</td><td>{html.escape(row.items)}</td>"
                         f'<td class="name">{refs}</td>')
            lines.append("<tr>" + "".join(cells) + "</tr>")
        body.append(f'<table class="ulbc-table"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>\n<tbody>\n'
                    + "\n".join(lines) + "\n</tbody></table>")
        notes = [f"<li>{html.escape(n)}</li>" for n in section.notes]
        if notes:
            body.append('<ol class="ulbc-footnote">' + "".join(notes) + "</ol>")
        if section.anchor_notes:
            body.append('<p class="ulbc-footnote">Anchor: ' + html.escape("; ".join(section.anchor_notes)) + "</p>")
    legend = [BD_RATE_MEANING, BD_DELTA_MEANING,
              ("points: rate points of the method / of the anchor; items: items on both curves "
               "(in brackets, items left out because they failed or were missing at some rate point).")]
    if any_thin:
        legend.append(THIN_FOOTNOTE)
    body.append("".join(f'<p class="ulbc-footnote">{html.escape(line)}</p>' for line in legend))
    anchors = sorted({s.anchor_label for s in sections})
    title = f"BD-rate against {', '.join(anchors)}" if anchors else "BD-rate"
    return html_page(title, "\n".join(body) + "\n", notice)


# -- summary -------------------------------------------------------------------------------------------
def _value_text(value, decimals: int) -> str:
    if value is None or value is pd.NA:
        return ""
    value = float(value)
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{decimals}f}"


def _decimals(values: pd.Series) -> int:
    """One number of decimals per column, so that its values line up: enough for three significant
    digits of its typical magnitude."""
    finite = values.astype("float64").abs()
    finite = finite[finite.notna() & (finite != float("inf")) & (finite > 0)]
    if finite.empty:
        return 2
    magnitude = math.floor(math.log10(float(finite.median())))
    return int(min(6, max(0, 2 - magnitude)))


def summary_html(summary: pd.DataFrame, labels: dict[str, str] | None = None, *, rows: pd.DataFrame | None = None,
                 metrics: Sequence[str] | None = None, notice: str | None = None) -> str:
    """The summary as a report page: a table per dataset, a row group per method (its label, and the
    devices it ran on from ``rows``), one line per rate point; every column's numbers to the same
    decimals; times in seconds per item (per clip for a video dataset), the mean over ok items."""
    labels = labels or {}
    columns = all_columns()
    metric_columns = [c for c in (metrics if metrics is not None else summary.columns)
                      if c in columns and c in summary.columns and summary[c].notna().any()]
    rate_columns = [c for c in ("bpp", "bpp_total", "payload_bpp") if c in summary.columns]
    estimates = [c for c in summary.columns if str(c).startswith("bpp_") and c not in rate_columns
                 and summary[c].notna().any()]
    devices: dict[tuple[str, str], str] = {}
    clips: set[str] = set()
    if rows is not None and len(rows):
        if "device" in rows.columns:
            for (dataset, method), part in rows.groupby(["dataset", "method"], sort=False):
                devices[(dataset, method)] = ", ".join(sorted({str(d) for d in part["device"].dropna() if d}))
        if "level" in rows.columns:
            clips = set(rows.loc[rows["level"] == "clip", "dataset"])
    body = []
    shown = rate_columns + estimates + metric_columns
    decimals = {c: _decimals(summary[c]) for c in shown}
    for dataset, part in summary.groupby("dataset", sort=True):
        unit = "clip" if dataset in clips else "item"
        body.append(f"<h2>{html.escape(str(dataset))}</h2>")
        heads = (["rate point"] + [html.escape(c) for c in shown]
                 + ["items", "failed", f"encode (s per {unit})", f"decode (s per {unit})"])
        head = "".join(f"<th>{h}</th>" for h in heads)
        lines = []
        for method, group in part.groupby("method", sort=False):
            device = devices.get((dataset, method), "")
            label = labels.get(method, str(method))
            source = ""
            if "source" in group.columns and group["source"].fillna("").astype(str).str.len().gt(0).any():
                source = f" — published: {group['source'].iloc[0]}"
            lines.append(f'<tr class="group"><td colspan="{len(heads)}">{html.escape(label)}'
                         + (f" <span style=\"font-weight: normal\">on {html.escape(device)}</span>" if device else "")
                         + html.escape(source) + "</td></tr>")
            for _, record in group.iterrows():
                rate_point = f"{record.get('rate_label', '')}"
                cells = [f'<td class="name">{html.escape(str(rate_point))}</td>']
                cells += [f"<td>{_value_text(record[c], decimals[c])}</td>" for c in shown]
                cells += [f"<td>{_int_text(record.get('n_items'))}</td>",
                          f"<td>{_int_text(record.get('n_failed')) if record.get('n_failed') else ''}</td>",
                          f"<td>{_value_text(record.get('encode_s'), 3)}</td>",
                          f"<td>{_value_text(record.get('decode_s'), 3)}</td>"]
                lines.append("<tr>" + "".join(cells) + "</tr>")
        body.append(f'<table class="ulbc-table"><thead><tr>{head}</tr></thead>\n<tbody>\n'
                    + "\n".join(lines) + "\n</tbody></table>")
    legend = [("Means over the ok items of each rate point. bpp: mean of per-item bits per pixel (what the "
               "BD-rates use); bpp_total: total bits over total pixels; payload_bpp: the codec's stream only."),
              ("Times: wall-clock seconds per item (per clip for a video dataset) on the device named beside "
               "the method, as measured by the shard jobs.")]
    legend += [f"{c}: {columns[c].label}" + (" (lower is better)" if columns[c].lower_is_better else "")
               for c in metric_columns]
    body.append("".join(f'<p class="ulbc-footnote">{html.escape(line)}</p>' for line in legend))
    return html_page("Summary per rate point", "\n".join(body) + "\n", notice)
