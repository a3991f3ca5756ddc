"""The visual comparison (crops of decoded items at matched bpp) and the honest labels of the tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import needs_ffmpeg
from ulbc.aggregate import aggregate_shards, read_metrics
from ulbc.codecs import CODECS, decode_bitstream
from ulbc.manifest import build_clip_manifest, build_manifest, num_shards
from ulbc.pack import PackReader
from ulbc.runner import MethodSpec, encode_shard, evaluate_shard
from ulbc.visual import (ComparisonSettings, build_comparison, crop, detail_box, iter_crops, manifest_paths,
                         nearest_point, pack_path, read_index, read_webp, select_items, webp_bytes)


def test_detail_box_finds_the_textured_window():
    image = np.full((96, 128, 3), 120, np.uint8)
    rng = np.random.default_rng(0)
    image[40:72, 80:112] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    x, y, w, h = detail_box(image, 32)
    assert (w, h) == (32, 32) and abs(x - 80) <= 8 and abs(y - 40) <= 8
    assert detail_box(image[:20, :24], 32) == (0, 0, 24, 20)  # smaller than the crop: all of it


def test_webp_crops_are_lossless():
    rgb = np.random.default_rng(1).integers(0, 255, (17, 23, 3), dtype=np.uint8)
    import io

    with Image.open(io.BytesIO(webp_bytes(rgb))) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), rgb)


def test_nearest_point_is_on_a_log_scale_and_within_a_factor_two():
    points = pd.DataFrame({"bpp": [0.06, 0.15, 1.2], "rate_label": ["a", "b", "c"]})
    assert nearest_point(points, 0.05)["rate_label"] == "a"
    assert nearest_point(points, 0.1)["rate_label"] == "b"  # on a log scale 0.15 is nearer than 0.06
    assert nearest_point(points, 5.0) is None  # 1.2 is more than 2x away
    assert nearest_point(points.iloc[0:0], 0.1) is None
    # With all the columns given, a point fills only the target it is nearest to.
    assert nearest_point(points, 0.1, targets=(0.1, 0.25))["rate_label"] == "b"
    assert nearest_point(points, 0.25, targets=(0.1, 0.25)) is None  # 0.15 belongs to 0.1; 1.2 is too far


def test_extremes_selection_alternates_least_and_most_compressible():
    rows = pd.DataFrame({"item": ["a", "b", "c", "d"] * 2, "method": ["m"] * 8, "rate_label": ["q1"] * 4 + ["q2"] * 4,
                         "bpp": [0.2, 0.1, 0.4, 0.3, 0.4, 0.2, 0.8, 0.6]})
    settings = ComparisonSettings(items=2, select="extremes")
    assert select_items(rows, ["a", "b", "c", "d"], settings) == ["b", "c"]
    assert select_items(rows, ["a", "b", "c", "d"], ComparisonSettings(items=3)) == ["a", "b", "c"]


def test_bad_settings_are_one_line_errors():
    from ulbc.errors import ConfigError

    with pytest.raises(ConfigError, match="target bpp"):
        ComparisonSettings(targets=(0.1, -1.0))
    with pytest.raises(ConfigError, match="select"):
        ComparisonSettings(select="best")


def _image_study(tmp_path, photo, methods, metrics=("psnr", "flip")):
    """A results folder in the workflow's layout (manifests/, bitstreams/, shards/) for 3 images."""
    results = tmp_path / "results"
    root = tmp_path / "data"
    root.mkdir()
    names = []
    for i in range(3):
        name = f"im{i}.png"
        Image.fromarray(np.ascontiguousarray(np.roll(photo, 11 * i, axis=1)[:72, :88])).save(root / name)
        names.append(name)
    image_manifest, clip_manifest = manifest_paths(results, "tiny")
    build_manifest("tiny", root, names, image_manifest, progress=False)
    build_clip_manifest(image_manifest, clip_manifest)
    shards = _run(results, "tiny", image_manifest, methods, metrics, per_job=2)
    return results, shards


def _run(results, dataset, manifest, methods, metrics, per_job):
    shards = []
    for method, codec, rates in methods:
        for rate in rates:
            spec = MethodSpec(method, codec, rate)
            label = spec.build().rate_label(rate)
            for shard in range(num_shards(manifest, per_job)):
                pack = pack_path(results, dataset, method, label, shard)
                log = results / "work" / dataset / method / label / f"{shard:05d}.encode.parquet"
                out = results / "shards" / dataset / method / label / f"{shard:05d}.parquet"
                encode_shard(manifest, shard, per_job, spec, pack, log, progress=False)
                evaluate_shard(manifest, shard, per_job, spec, pack, log, out, metrics=list(metrics), progress=False)
                shards.append(out)
    return shards


def _check_crops_are_the_decoded_pixels(outdir, index):
    decoded = list(iter_crops(index, "decoded"))
    assert decoded
    for record in decoded:
        with PackReader(record["pack"]) as pack:
            _, image = decode_bitstream(pack.read(record["entry"]))
        if image.ndim == 4:
            image = image[record["frame_in_bitstream"]]
        assert np.array_equal(read_webp(outdir / record["file"]), crop(image, record["box"])), record["file"]


def test_comparison_crops_equal_the_decoded_pixels_of_the_named_bitstreams(tmp_path, photo):
    methods = [("jpeg", "jpeg", [5, 30, 90]), ("webp", "webp", [10, 60])]
    results, shards = _image_study(tmp_path, photo, methods)
    aggregate_shards(shards, results / "metrics.parquet", engine="pyarrow")
    frame = read_metrics(results / "metrics.parquet")
    settings = ComparisonSettings(items=2, targets=(0.3, 1.0, 3.0), crop=48)
    outdir = results / "comparison"
    index = build_comparison(frame, results, outdir, items_per_job=2, settings=settings, anchor="webp",
                             labels={"jpeg": "jpeg (4:2:0)"})
    assert read_index(outdir / "index.json") == json.loads((outdir / "index.json").read_text())
    assert index["datasets"]["tiny"]["items"] == ["im0", "im1"]
    assert index["datasets"]["tiny"]["methods"] == ["webp", "jpeg"]  # the anchor first
    _check_crops_are_the_decoded_pixels(outdir, index)
    # Every decoded crop is, of its item's rate points nearer its target than any other target, the
    # nearest, and within a factor 2 of it.
    targets = np.log(settings.targets)
    for record in iter_crops(index, "decoded"):
        rows = frame[(frame["item"] == record["item"]) & (frame["method"] == record["method"])]
        logs = np.log(rows["bpp"].to_numpy())
        home = np.asarray(settings.targets)[np.abs(logs[:, None] - targets[None, :]).argmin(axis=1)]
        mine = rows[home == record["target_bpp"]]
        nearest = mine.loc[(np.log(mine["bpp"]) - np.log(record["target_bpp"])).abs().idxmin()]
        assert record["rate_label"] == nearest["rate_label"] and record["bpp"] == nearest["bpp"]
        assert 0.5 <= record["bpp"] / record["target_bpp"] <= 2.0
    cells = {(r["item"], r["method"], r["rate_label"]) for r in iter_crops(index, "decoded")}
    assert len(cells) == len(list(iter_crops(index, "decoded")))  # no file in two columns
    # The originals are the items' own pixels; FLIP (a study metric) gives one map per decoded crop.
    for record in iter_crops(index, "original"):
        source = np.asarray(Image.open(tmp_path / "data" / f"{record['item']}.png").convert("RGB"))
        assert np.array_equal(read_webp(outdir / record["file"]), crop(source, record["box"]))
    maps = list(iter_crops(index, "flip_map"))
    assert len(maps) == len(list(iter_crops(index, "decoded")))
    assert read_webp(outdir / maps[0]["file"]).shape == (48, 48, 3)
    page = (outdir / "tiny.html").read_text()
    assert page.count("data:image/webp;base64,") == len(index["crops"])
    assert "jpeg (4:2:0)" in page and "FLIP error map" in page
    # Written whole: a second build replaces the folder, and a failing build leaves the old one.
    (outdir / "stray.txt").write_text("x")
    build_comparison(frame, results, outdir, items_per_job=2, settings=settings)
    assert not (outdir / "stray.txt").exists()
    from ulbc.errors import InputError

    missing = pack_path(results, "tiny", "jpeg", "quality30", 0)
    missing.rename(missing.with_suffix(".moved"))
    with pytest.raises(InputError, match="no such pack file"):
        build_comparison(frame, results, outdir, items_per_job=2, settings=settings)
    assert (outdir / "index.json").is_file() and not list(results.glob(".comparison.*"))


def test_without_flip_no_error_maps_and_zero_items_no_crops(tmp_path, photo):
    results, shards = _image_study(tmp_path, photo, [("jpeg", "jpeg", [10, 50])], metrics=("psnr",))
    aggregate_shards(shards, results / "metrics.parquet", engine="pyarrow")
    frame = read_metrics(results / "metrics.parquet")
    index = build_comparison(frame, results, results / "c", items_per_job=2,
                             settings=ComparisonSettings(items=1, targets=(1.0,), crop=32))
    assert not list(iter_crops(index, "flip_map")) and list(iter_crops(index, "decoded"))
    index = build_comparison(frame, results, results / "c", items_per_job=2, settings=ComparisonSettings(items=0))
    assert index["crops"] == [] and "visual.items" in (results / "c" / "tiny.html").read_text()


@needs_ffmpeg
def test_clip_strips_from_a_video_codec_and_from_frame_by_frame_coding(tmp_path):
    if "x264" not in CODECS or CODECS["x264"].availability():
        pytest.skip("x264 not available")
    results = tmp_path / "results"
    root = tmp_path / "frames"
    (root / "walk").mkdir(parents=True)
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    for i in range(5):
        Image.fromarray(np.roll(base, 3 * i, axis=1)).save(root / "walk" / f"{i:06d}.png")
    image_manifest, clip_manifest = manifest_paths(results, "v")
    build_manifest("v", root, [f"walk/{i:06d}.png" for i in range(5)], image_manifest, video=True, progress=False)
    build_clip_manifest(image_manifest, clip_manifest)
    shards = _run(results, "v", image_manifest, [("jpeg", "jpeg", [20, 80])], ("psnr",), per_job=2)
    shards += _run(results, "v", clip_manifest, [("x264", "x264", [45, 27])], ("psnr",), per_job=2)
    aggregate_shards(shards, results / "metrics.parquet", engine="pyarrow")
    frame = read_metrics(results / "metrics.parquet")
    settings = ComparisonSettings(items=1, targets=tuple(sorted(frame.loc[frame["level"] == "clip", "bpp"])),
                                  crop=24, frames=3)
    outdir = results / "comparison"
    index = build_comparison(frame, results, outdir, items_per_job=2, settings=settings)
    assert index["datasets"]["v"] == {"items": ["walk"], "video": True, "methods": ["jpeg", "x264"]}
    decoded = list(iter_crops(index, "decoded"))
    assert {r["frame"] for r in decoded} == {0, 2, 4}
    assert {r["method"] for r in decoded} == {"jpeg", "x264"}
    # jpeg's frames come from one bitstream per frame, x264's from one clip bitstream.
    assert {r["entry"] for r in decoded if r["method"] == "x264"} == {"walk.ulb"}
    assert {r["entry"] for r in decoded if r["method"] == "jpeg"} == {"walk/000000.ulb", "walk/000002.ulb",
                                                                        "walk/000004.ulb"}
    _check_crops_are_the_decoded_pixels(outdir, index)
    assert "frames 0, 2, 4 of 5" in (outdir / "v.html").read_text()


def test_labels_say_demo_budgets_chroma_and_lower_bounds():
    from ulbc.rd import method_labels

    def row(method, codec, **options):
        return {"method": method, "codec": codec, "codec_options": json.dumps({**CODECS[codec].option_defaults,
                                                                                **options})}

    rows = pd.DataFrame([row("lottery", "lottery", iterations=100), row("cc", "coolchic", iterations=20000),
                         row("x265", "x265"), row("hevc-intra", "hevc-intra"), row("jpeg", "jpeg"),
                         row("misc", "misc"), row("mine", "webp")])
    labels = method_labels(rows)
    assert labels["lottery"] == "lottery (100 it, demo)"
    assert labels["cc"] == "cc (20000 it)"
    assert labels["x265"] == "x265 (inter, 4:2:0)"
    assert labels["hevc-intra"] == "hevc-intra (intra, 4:4:4)"
    assert labels["jpeg"] == "jpeg (4:2:0)"
    assert labels["misc"] == "misc (upscale, lower bound)"
    assert labels["mine"] == "mine (4:2:0)"
    assert method_labels(pd.DataFrame([{"method": "x", "codec": "unregistered", "codec_options": "{}"}])) == {"x": "x"}


def test_thin_bd_rates_are_flagged_and_greyed(tmp_path):
    from ulbc.rd import bd_rate_table, write_table

    def curve(method, bpps, psnrs):
        return [{"dataset": "d", "method": method, "codec": method, "rate_label": f"r{i}", "rate_value": float(i),
                 "bpp": b, "psnr_rgb": p} for i, (b, p) in enumerate(zip(bpps, psnrs))]

    anchor = curve("a", [0.1, 0.2, 0.4, 0.8], [28, 30, 32, 34])
    full = curve("good", [0.09, 0.18, 0.36, 0.7], [28.2, 30.1, 32.3, 34.1])
    three = curve("three", [0.09, 0.18, 0.36], [28.2, 30.1, 32.3])
    apart = curve("apart", [0.3, 0.5, 0.7, 1.0], [32.5, 33.5, 34.5, 36])
    table = bd_rate_table(pd.DataFrame(anchor + full + three + apart), "a", metrics=["psnr_rgb"]).set_index("method")
    assert not table.loc["good", "thin_psnr_rgb"] and not table.loc["a", "thin_psnr_rgb"]
    assert table.loc["three", "thin_psnr_rgb"]  # 3 points
    assert table.loc["apart", "thin_psnr_rgb"]  # overlap 32.5..34 of 28..36
    write_table(table.reset_index(), tmp_path / "bd.html", labels={"three": "three (demo)"})
    text = (tmp_path / "bd.html").read_text()
    assert text.count('class="thin"') == 4 and "†" in text and "three (demo)" in text
    assert "thin_psnr_rgb" not in text and " %" in text
