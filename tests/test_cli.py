"""The single-file commands, in fresh processes like a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image


def ulbc(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ulbc", *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_encode_decode_eval_round_trip(tmp_path, photo_large):
    src = tmp_path / "in.png"
    Image.fromarray(photo_large).save(src)
    enc = json.loads(ulbc("encode", src, tmp_path / "a.ulb", "--codec", "webp", "--rate", 60).stdout)
    assert enc["bytes"] == (tmp_path / "a.ulb").stat().st_size
    assert enc["bpp"] == pytest.approx(8 * enc["bytes"] / photo_large.shape[0] / photo_large.shape[1])
    dec = json.loads(ulbc("decode", tmp_path / "a.ulb", tmp_path / "a.png").stdout)
    assert (dec["width"], dec["height"], dec["codec"]) == (256, 192, "webp")
    ev = json.loads(ulbc("eval", src, tmp_path / "a.ulb").stdout)
    ev_png = json.loads(ulbc("eval", src, tmp_path / "a.png").stdout)
    assert ev["psnr_rgb"] == pytest.approx(ev_png["psnr_rgb"]) and 25 < ev["psnr_rgb"] < 50
    assert 0.8 < ev["ms_ssim_rgb"] <= 1.0
    assert ev["bpp"] == pytest.approx(enc["bpp"])


def test_errors_are_one_line_with_status_2(tmp_path):
    bad = tmp_path / "broken.ulb"
    bad.write_bytes(b"UB\x01\x01garbage")
    proc = ulbc("decode", bad, tmp_path / "o.png", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "broken.ulb" in proc.stderr
    assert not (tmp_path / "o.png").exists()
    proc = ulbc("encode", tmp_path / "missing.png", tmp_path / "x.ulb", "--codec", "jpeg", check=False)
    assert proc.returncode == 2 and "missing.png: no such file" in proc.stderr
    assert not (tmp_path / "x.ulb").exists()
    proc = ulbc("encode", tmp_path / "missing.png", tmp_path / "x.ulb", "--codec", "zzz", check=False)
    assert proc.returncode == 2 and "unknown codec 'zzz'" in proc.stderr


def test_codecs_listing():
    rows = json.loads(ulbc("codecs", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["jpeg"]["available"] and by_name["jpeg"]["gpu"] is False
    assert by_name["hevc-intra"]["rate_param"] == "qp"
    assert "hevc-intra" in ulbc("codecs").stdout


def test_extract_from_pack(tmp_path, photo):
    from ulbc.codecs import get_codec
    from ulbc.pack import write_pack

    data = get_codec("jpeg").encode(photo, 50)
    write_pack(tmp_path / "p.zip", [("a/b.ulb", data)])
    assert ulbc("extract", tmp_path / "p.zip").stdout.split() == ["a/b.ulb"]
    ulbc("extract", tmp_path / "p.zip", "a/b", "-o", tmp_path / "one.ulb")
    assert (tmp_path / "one.ulb").read_bytes() == data
    proc = ulbc("extract", tmp_path / "p.zip", "zz", check=False)
    assert proc.returncode == 2 and "no entry 'zz.ulb'" in proc.stderr


def test_decode_threads_option(tmp_path, photo):
    """--threads caps the reference decoder's torch threads; the compiled decoder (the default) does not
    load torch; the pixels depend on neither (exact decoders)."""
    from conftest import QUICK_OPTIONS
    from ulbc.codecs import get_codec

    options = {**QUICK_OPTIONS["coolchic"], "iterations": 40, "final_iterations": 10}
    (tmp_path / "a.ulb").write_bytes(get_codec("coolchic", **options).encode(photo[:16, :24].copy(), 4e-3))
    one = json.loads(ulbc("decode", tmp_path / "a.ulb", tmp_path / "one.png", "--threads", 1, "--decoder",
                          "reference").stdout)
    two = json.loads(ulbc("decode", tmp_path / "a.ulb", tmp_path / "two.png", "--threads", 2, "--decoder",
                          "reference").stdout)
    assert (one["torch_threads"], two["torch_threads"]) == (1, 2)
    fast = json.loads(ulbc("decode", tmp_path / "a.ulb", tmp_path / "fast.png", "--threads", 2).stdout)
    assert "torch_threads" not in fast
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes() == (tmp_path / "fast.png").read_bytes()
    proc = ulbc("decode", tmp_path / "a.ulb", tmp_path / "x.png", "--threads", 0, check=False)
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr and "Traceback" not in proc.stderr


def test_every_option_has_help_and_stages_are_listed_apart():
    import argparse

    from ulbc.cli import WORKFLOW_STAGES, build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    walk(subparser, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "ulbc")
    assert not missing, missing
    text = ulbc("--help").stdout
    user, stages = text.split("workflow stages")
    assert "  encode " in user and "  bdrate " in user and "encode-shard" not in user
    assert all(f"  {stage} " in stages for stage in WORKFLOW_STAGES)
    assert max(len(line) for line in text.splitlines()) <= 100


def test_metric_and_codec_listings_are_readable():
    from ulbc.metrics import METRICS

    text = ulbc("metrics", "-v").stdout
    assert max(len(line) for line in text.splitlines()) <= 100
    # Every column named is a column of the tables, with its direction and whether it is BD-rated.
    for cls in METRICS.values():
        for column in (*cls.columns, *cls.derived):
            assert f"{column.name}  " in text and column.label in " ".join(text.split())
    assert "mean over the ok items of a rate point" in text
    codecs = ulbc("codecs", "-v").stdout
    assert max(len(line) for line in codecs.splitlines()) <= 100
    assert "options (default: accepted values; meaning):" in codecs
    assert ulbc("codecs").stdout.splitlines()[0].startswith("codec")
