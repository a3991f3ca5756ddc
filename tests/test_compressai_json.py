"""CompressAI result files: ulbc's export is read by CompressAI's own plot; published curves join the
RD plots and BD-rate tables as external curves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED
from ulbc.cli import main
from ulbc.compressai_json import export_compressai_json, read_compressai_json
from ulbc.errors import ConfigError, InputError
from ulbc.rd import bd_rate_table, summarize
from ulbc.schema import METRIC_ROW_SCHEMA

from test_rd import ANCHOR_BPP, ANCHOR_PSNR, curve_rows, frame

PUBLISHED = SHARED / "data" / "reference_results" / "compressai" / "kodak"


@pytest.fixture
def study_rows():
    rows = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR) + curve_rows("better", [0.8 * b for b in ANCHOR_BPP],
                                                                     ANCHOR_PSNR)
    return frame(rows)


def published_curve(tmp_path, scale=0.5, name="paper-codec"):
    """A CompressAI-layout file: the anchor's curve at ``scale`` times its bits."""
    ms_ssim = [1 - 10 ** (-p / 20) for p in ANCHOR_PSNR]
    record = {"name": name, "description": "Inference (ans)",
              "results": {"psnr-rgb": ANCHOR_PSNR, "ms-ssim-rgb": ms_ssim, "bpp": [scale * b for b in ANCHOR_BPP],
                          "encoding_time": [0.1] * 4, "decoding_time": [0.1] * 4}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def test_export_is_read_by_compressais_own_plot(study_rows, tmp_path):
    files = export_compressai_json(summarize(study_rows), tmp_path / "json")
    assert sorted(p.relative_to(tmp_path / "json").as_posix() for p in files) == ["kodak/better.json",
                                                                                 "kodak/jpeg.json"]
    record = json.loads(files[0].read_text())
    assert record["name"] == "better" and record["description"].startswith("ulbc ")
    results = record["results"]
    assert results["bpp"] == pytest.approx([0.8 * b for b in ANCHOR_BPP])
    assert results["psnr-rgb"] == pytest.approx(ANCHOR_PSNR)
    assert {"ms-ssim-rgb", "encoding_time", "decoding_time", "psnr-of-mean-mse"} <= set(results)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    for metric in ("psnr", "ms-ssim"):
        out = tmp_path / f"{metric}.png"
        proc = subprocess.run([sys.executable, "-m", "compressai.utils.plot", "-f", *map(str, files), "-m", metric,
                               "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert out.stat().st_size > 1000


def test_a_round_trip_keeps_the_points(study_rows, tmp_path):
    summary = summarize(study_rows)
    path = export_compressai_json(summary, tmp_path)[1]
    back = read_compressai_json(path, "kodak")
    mine = summary[summary["method"] == "jpeg"]
    assert back["method"].unique().tolist() == ["jpeg"] and (back["codec"] == "external").all()
    for column in ("bpp", "psnr_rgb", "ms_ssim_rgb", "ms_ssim_db", "encode_s"):
        assert back[column].tolist() == pytest.approx(mine[column].tolist()), column


def test_an_external_curve_is_bd_rated_against_the_anchor(study_rows, tmp_path):
    external = read_compressai_json(published_curve(tmp_path), "kodak")
    table = bd_rate_table(study_rows, "jpeg", external=external).set_index("method")
    assert table.loc["paper-codec", "bd_rate_psnr_rgb"] == pytest.approx(-50.0, abs=0.5)
    assert table.loc["paper-codec", "bd_rate_ms_ssim_db"] == pytest.approx(-50.0, abs=0.5)
    assert "external curve (external: paper-codec.json)" in table.loc["paper-codec", "note"]
    assert pd.isna(table.loc["paper-codec", "n_items"])
    # It reports no PSNR of the mean MSE: NaN with a reason, the other columns unaffected.
    assert pd.isna(table.loc["paper-codec", "bd_rate_psnr_of_mean_mse"])
    assert table.loc["better", "bd_rate_psnr_rgb"] == pytest.approx(-20.0, abs=0.5)


def test_analyse_draws_and_tables_reference_results(study_rows, tmp_path):
    metrics = tmp_path / "metrics.parquet"
    pq.write_table(pa.Table.from_pandas(study_rows, schema=METRIC_ROW_SCHEMA, preserve_index=False), metrics)
    references = {"paper": {"dataset": "kodak", "file": str(published_curve(tmp_path))}}
    main(["analyse", str(metrics), "--anchor", "jpeg", "--outdir", str(tmp_path / "out"),
          "--reference-results", json.dumps(references)])
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.loc[summary["method"] == "paper", "source"].tolist() == ["external: paper-codec.json"] * 4
    bd = pd.read_csv(tmp_path / "out" / "bdrate.csv").set_index("method")
    assert bd.loc["paper", "bd_rate_psnr_rgb"] == pytest.approx(-50.0, abs=0.5)
    assert "external curves (published" in (tmp_path / "out" / "summary.html").read_text()
    assert (tmp_path / "out" / "rd" / "psnr_rgb.png").stat().st_size > 1000
    clash = {"jpeg": references["paper"]}
    with pytest.raises(ConfigError, match="also a method of the study"):
        from ulbc.rd import analyse_study
        from ulbc.config import read_reference_results

        analyse_study(study_rows, tmp_path / "again", anchor="jpeg", external=read_reference_results(clash))


@pytest.mark.parametrize("content, problem", [
    ("not json", "not a JSON file"),
    ('{"results": {"psnr-rgb": [30]}}', "no results.bpp"),
    ('{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30]}}', "differ in length"),
    ('{"results": {"bpp": [0.1, "x"]}}', "must be a list of numbers"),
    ('{"results": {"bpp": []}}', "is empty"),
])
def test_bad_reference_files_are_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem):
        read_compressai_json(path, "kodak")


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="needs ../shared/data/reference_results (CompressAI's files)")
def test_compressais_published_kodak_files_read_as_curves():
    curve = read_compressai_json(PUBLISHED / "compressai-bmshj2018-hyperprior_mse_cpu.json", "kodak")
    assert curve["method"].iloc[0] == "bmshj2018-hyperprior" and len(curve) == 8
    assert curve["bpp"].is_monotonic_increasing and curve["psnr_rgb"].is_monotonic_increasing
    assert curve["bpp"].iloc[0] == pytest.approx(0.1313, abs=1e-4)


@pytest.mark.slow
def test_a_study_config_brings_reference_results_into_its_tables(tmp_path, photo):
    from test_workflow import snakemake, write_study

    curve = published_curve(tmp_path)
    bad = write_study(tmp_path, photo, reference_results={"paper": {"dataset": "nope", "file": str(curve)}})
    proc = snakemake(tmp_path, bad, "-n", check=False)
    assert proc.returncode != 0 and "reference_results.paper: dataset 'nope'" in proc.stdout + proc.stderr
    config = write_study(tmp_path, photo, reference_results={"paper": {"dataset": "tiny", "file": str(curve)}})
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"
    bd = pd.read_csv(out / "bdrate.csv").set_index("method")
    assert "paper" in bd.index and "external curve" in bd.loc["paper", "note"]
    exported = tmp_path / "exported"
    main(["export", "compressai-json", str(out / "metrics.parquet"), "-o", str(exported)])
    assert sorted(p.name for p in (exported / "tiny").iterdir()) == ["jpeg.json", "webp.json"]
