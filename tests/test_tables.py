"""Readable views of the study tables: BD-rates per dataset (terminal text and report HTML) and the
grouped summary page."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from test_rd import ANCHOR_BPP, ANCHOR_PSNR, curve_rows, frame

from ulbc.rd import bd_rate_table, method_labels, summarize
from ulbc.schema import METRIC_ROW_SCHEMA
from ulbc.tables import bd_rate_html, bd_rate_text, bd_sections, summary_html


def study_rows() -> list[dict]:
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    rows += curve_rows("worse", [1.25 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    rows += curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    rows += curve_rows("three", [0.8 * b for b in ANCHOR_BPP[:3]], ANCHOR_PSNR[:3])  # a thin curve
    rows += curve_rows("far", ANCHOR_BPP, [p + 40 for p in ANCHOR_PSNR])  # no overlap: n/a with a note
    rows += curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR, dataset="clic")
    rows += curve_rows("better", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR, dataset="clic")
    return rows


def test_sections_are_per_dataset_sorted_without_the_anchor_row():
    table = bd_rate_table(frame(study_rows()), "jpeg")
    sections = bd_sections(table, {"three": "three (demo)"})
    assert [s.dataset for s in sections] == ["clic", "kodak"]
    kodak = sections[1]
    assert [r.method for r in kodak.rows] == ["better", "three", "worse", "far"]  # best first, n/a last
    assert kodak.rows[1].label == "three (demo)" and kodak.anchor == "jpeg"
    first = kodak.metrics[0]
    assert kodak.rows[1].cells[first][2] and not kodak.rows[0].cells[first][2]  # thin flag carried
    # "far" has a note, numbered once and referred to by number.
    far = kodak.rows[-1]
    assert far.notes and all("no quality overlap" in kodak.notes[n - 1] for n in far.notes[:1])
    # A note that several metrics share is one footnote, cited once by the row.
    shared = table.copy()
    shared.loc[shared["method"] == "far", "note"] = "rate overlap only 6%; psnr: no overlap; rate overlap only 6%"
    row = next(r for r in bd_sections(shared, {})[1].rows if r.method == "far")
    assert len(row.notes) == len(set(row.notes)) == 2
    # Footnotes are numbered in reading order: the first cited number of each row only grows.
    firsts = [r.notes[0] for r in kodak.rows if r.notes]
    assert firsts == sorted(firsts) and firsts[0] == 1


def test_text_fits_the_width_and_states_units_and_sign():
    rows = study_rows()
    table = bd_rate_table(frame(rows), "jpeg")
    for width in (100, 72):
        text = bd_rate_text(table, {"three": "three (demo)"}, width=width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        assert "negative = fewer bits" in " ".join(text.split()) and "%" in text and "†" in text
        assert re.search(r"^kodak: BD against jpeg, akima interpolation$", text, re.M)
    text = bd_rate_text(table, width=100)
    kodak = text[text.index("kodak:"):]
    # Every metric is shown (in blocks when they do not fit), the anchor is not a row, notes are footnotes.
    for metric in table.columns[table.columns.str.startswith("bd_rate_")]:
        assert metric[len("bd_rate_"):][:12] in text
    lines = [line for line in kodak.splitlines() if line.startswith(("better", "worse", "three", "far", "jpeg "))]
    assert not any(line.startswith("jpeg ") for line in lines)
    assert lines[0].startswith("better") and "-20.00%" in lines[0]
    assert re.search(r"^\[\d+\] .*no quality overlap", kodak, re.M)
    # Narrow terminals get more blocks of the same rows, never longer lines.
    narrow = bd_rate_text(table, width=60)
    assert narrow.count("\nbetter") > text.count("\nbetter")


def test_html_page_per_dataset_with_footnotes_and_thin_marks():
    table = bd_rate_table(frame(study_rows()), "jpeg")
    page = bd_rate_html(table, {"three": "three (demo)"}, notice="a notice")
    assert page.count("<h2>") == 2 and "<title>BD-rate against jpeg</title>" in page
    assert "a notice" in page and "negative = fewer bits" in page
    kodak = page[page.index("<h2>kodak</h2>"):]
    assert kodak.index("better") < kodak.index("three (demo)") < kodak.index("worse") < kodak.index(">far<")
    assert "-20.00%" in kodak and "†" in kodak and 'class="thin"' in kodak
    assert re.search(r"<ol class=\"ulbc-footnote\">(<li>[^<]*</li>)*<li>[^<]*no quality overlap", kodak)
    assert "thin_" not in page and "interpolation</th>" not in page  # no repeated anchor/interpolation column


def test_summary_page_groups_by_dataset_and_method_with_units():
    rows = study_rows()
    rows += [dict(r, device="cuda:0") for r in curve_rows("gpu", ANCHOR_BPP, ANCHOR_PSNR)]
    data = frame(rows)
    page = summary_html(summarize(data), method_labels(data), rows=data)
    assert page.count("<h2>") == 2 and "s per item" in page
    assert re.search(r'class="group"><td colspan="\d+">gpu <span[^>]*>on cuda:0</span>', page)
    assert re.search(r'class="group"><td colspan="\d+">jpeg[^<]* <span[^>]*>on cpu</span>', page)
    # One number of decimals per column: the bpp cells of a column all have the same shape.
    bpps = re.findall(r'<td class="name">r\d</td><td>([0-9.]+)</td>', page)
    assert bpps and len({len(b.split(".")[1]) if "." in b else 0 for b in bpps}) == 1


def test_cli_bdrate_prints_the_readable_table(tmp_path):
    path = tmp_path / "metrics.parquet"
    pq.write_table(pa.Table.from_pylist(study_rows(), schema=METRIC_ROW_SCHEMA), path)
    out = tmp_path / "bd.csv"
    proc = subprocess.run([sys.executable, "-m", "ulbc", "bdrate", str(path), "--anchor", "jpeg", "--out", str(out),
                           "--width", "80"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    assert "negative = fewer bits" in proc.stdout and "-20.00%" in proc.stdout
    assert set(pd.read_csv(out)["method"]) == {"jpeg", "worse", "better", "three", "far"}
    helped = subprocess.run([sys.executable, "-m", "ulbc", "bdrate", "--help"], capture_output=True, text=True)
    assert "--interpolation" in helped.stdout and "Bjøntegaard" in helped.stdout
