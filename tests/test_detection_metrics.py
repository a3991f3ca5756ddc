"""Detection mAP per rate point: against pycocotools' own COCOeval, pseudo ground truth, the features
file of varying-length sides, and a randomly initialised Mask R-CNN end to end."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math

import numpy as np
import pytest

from conftest import SHARED
from ulbc import weights
from ulbc.errors import ConfigError, InputError
from ulbc.features import FORMAT, FeatureCollector, dataset_metric_table, read_dataset_metrics
from ulbc.metrics import METRICS
from ulbc.metrics.base import FeatureSet, MetricUndefined
from ulbc.metrics.detection import ROW_FIELDS, detection_rows
from ulbc.weights import WeightFile

SHARED_COCO = SHARED / "data" / "coco"
HEIGHT, WIDTH = 96, 128


# -- a small COCO instances file ------------------------------------------------------------------------
def polygon_annotation(ann_id, image_id, category, polygon, height=HEIGHT, width=WIDTH):
    from pycocotools import mask as mask_util

    rle = mask_util.merge(mask_util.frPyObjects([polygon], height, width))
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": [polygon],
            "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0}


def synthetic_coco() -> dict:
    """Four 96x128 images (one without objects), three categories, polygons and one crowd region."""
    images = [{"id": 7, "file_name": "a.jpg"}, {"id": 12, "file_name": "b.jpg"},
              {"id": 30, "file_name": "sub/c.png"}, {"id": 41, "file_name": "d.jpg"}]
    annotations = [
        polygon_annotation(1, 7, 1, [10, 10, 50, 10, 50, 60, 10, 60]),
        polygon_annotation(2, 7, 3, [60, 20, 120, 25, 110, 80, 65, 70]),
        polygon_annotation(3, 7, 1, [70, 5, 90, 5, 90, 30]),
        polygon_annotation(4, 12, 18, [5, 40, 60, 40, 60, 90, 5, 90]),
        polygon_annotation(5, 12, 1, [80, 10, 125, 10, 125, 50, 80, 50]),
        polygon_annotation(6, 30, 3, [20, 20, 100, 20, 100, 70, 20, 70]),
        polygon_annotation(7, 30, 3, [2, 2, 30, 2, 30, 15, 2, 15]),
    ]
    crowd = {"id": 8, "image_id": 12, "category_id": 1, "iscrowd": 1, "area": 300.0, "bbox": [70.0, 60.0, 30.0, 10.0],
             "segmentation": {"size": [HEIGHT, WIDTH], "counts": _crowd_counts()}}
    return {"images": [dict(image, width=WIDTH, height=HEIGHT) for image in images],
            "annotations": annotations + [crowd],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]}


def _crowd_counts() -> list[int]:
    """Uncompressed (column-major) RLE of the 30x10 block at x 70..99, y 60..69."""
    counts, position = [], 0
    for x in range(70, 100):
        start = x * HEIGHT + 60
        counts += [start - position, 10]
        position = start + 10
    return counts + [HEIGHT * WIDTH - position]


@pytest.fixture
def coco_file(tmp_path):
    path = tmp_path / "instances_small.json"
    path.write_text(json.dumps(synthetic_coco()))
    return path


# -- known detections -----------------------------------------------------------------------------------
def fake_detections(annotations_path, seed: int = 0, masks: bool = True) -> dict[int, dict]:
    """Per image id: the ground truth moved a little, some with the wrong category, plus false
    positives, as a detector's raw output (boxes xyxy, scores, labels, binary masks)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations_path))
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, image in gt.imgs.items():
        height, width = image["height"], image["width"]
        boxes, scores, labels, found = [], [], [], []
        for ann in gt.imgToAnns[image_id]:
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            dx, dy = rng.normal(0, max(1.0, 0.06 * w)), rng.normal(0, max(1.0, 0.06 * h))
            boxes.append([x + dx, y + dy, x + dx + w * rng.uniform(0.85, 1.15), y + dy + h * rng.uniform(0.85, 1.15)])
            scores.append(rng.uniform(0.3, 1.0))
            labels.append(ann["category_id"] if rng.uniform() > 0.15 else 1)
            found.append(np.roll(gt.annToMask(ann).astype(bool), (int(round(dy)), int(round(dx))), axis=(0, 1)))
        for _ in range(3):  # false positives
            x, y = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
            w, h = rng.uniform(5, width * 0.3), rng.uniform(5, height * 0.3)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.05, 0.9))
            labels.append(int(rng.choice(sorted(gt.cats))))
            mask = np.zeros((height, width), bool)
            mask[int(y) : int(y + h), int(x) : int(x + w)] = True
            found.append(mask)
        raw = {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
               "labels": np.asarray(labels, np.int64)}
        if masks:
            raw["masks"] = np.asarray(found, bool).reshape(-1, height, width)
        out[image_id] = raw
    return out


def direct_stats(annotations_path, detections: dict[int, dict], image_ids, iou_type: str) -> np.ndarray:
    """pycocotools' evaluation of the detections, written out here in COCO results format."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id in image_ids:
        raw = detections[image_id]
        for index, (box, score, label) in enumerate(zip(raw["boxes"].astype(np.float64), raw["scores"], raw["labels"])):
            entry = {"image_id": image_id, "category_id": int(label), "score": float(score)}
            if iou_type == "bbox":
                entry["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            else:
                entry["segmentation"] = mask_util.encode(np.asfortranarray(raw["masks"][index].astype(np.uint8)))
            results.append(entry)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations_path))
        evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def uniform_image(value: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """An image whose pixels say which fake output the detector returns for it."""
    return np.full((height, width, 3), value, np.uint8)


def with_fake_detector(metric, outputs: dict[int, dict]):
    """Replaces the metric's detector: an image filled with value k gets ``outputs[k]``."""
    metric.detect = lambda images: [outputs[int(image[0, 0, 0])] for image in images]
    return metric


def annotated_items(annotations_path, detections, image_ids, item_of, **options):
    metric = METRICS["detection"](annotations=str(annotations_path), **options)
    coco = json.loads(annotations_path.read_text())
    images = {image["id"]: image for image in coco["images"]}
    codes = {image_id: code for code, image_id in enumerate(image_ids)}
    with_fake_detector(metric, {codes[i]: detections[i] for i in image_ids})
    entries = []
    for image_id in image_ids:
        image = images[image_id]
        picture = uniform_image(codes[image_id], image["height"], image["width"])
        item = item_of(image["file_name"])
        entries.append((item, metric.item_features(item, picture, picture)))
    return metric, FeatureSet.from_items(entries)


def assert_equal_to_cocoeval(values, annotations_path, detections, image_ids):
    box = direct_stats(annotations_path, detections, image_ids, "bbox")
    segm = direct_stats(annotations_path, detections, image_ids, "segm")
    assert 0 < box[0] < 1 and 0 < segm[0] < 1  # the detections are neither perfect nor useless
    assert values["map_bbox"] == pytest.approx(100 * box[0], abs=1e-12, rel=0)
    assert values["map50_bbox"] == pytest.approx(100 * box[1], abs=1e-12, rel=0)
    assert values["map_segm"] == pytest.approx(100 * segm[0], abs=1e-12, rel=0)
    assert values["map50_segm"] == pytest.approx(100 * segm[1], abs=1e-12, rel=0)
    assert values["det_images"] == len(image_ids)


def stem_item(file_name: str) -> str:
    """The manifest key of a file: its relative path without the extension."""
    return "val/" + file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@pytest.mark.parametrize("image_ids", [[7, 12, 30, 41], [7, 41], [30]])
def test_map_against_annotations_equals_cocoeval(coco_file, image_ids):
    detections = fake_detections(coco_file, seed=len(image_ids))
    metric, features = annotated_items(coco_file, detections, image_ids, stem_item)
    assert features.items == tuple(stem_item(i["file_name"]) for i in synthetic_coco()["images"]
                                   if i["id"] in image_ids)
    values = metric.from_features(features)
    assert_equal_to_cocoeval(values, coco_file, detections, image_ids)
    # A subset is evaluated on its images only: all four images give another value.
    if len(image_ids) < 4:
        everything = direct_stats(coco_file, detections, [7, 12, 30, 41], "bbox")[0]
        assert values["map_bbox"] != pytest.approx(100 * everything, abs=1e-9)


@pytest.mark.skipif(not (SHARED_COCO / "annotations" / "instances_val2017_subset.json").is_file(),
                    reason="needs the shared COCO val2017 subset")
@pytest.mark.parametrize("count", [10, 4])
def test_map_against_the_real_coco_subset_equals_cocoeval(count):
    path = SHARED_COCO / "annotations" / "instances_val2017_subset.json"
    detections = fake_detections(path, seed=count)
    image_ids = sorted(detections)[:count]
    metric, features = annotated_items(path, detections, image_ids, lambda name: f"val2017/{name[:-4]}")
    assert_equal_to_cocoeval(metric.from_features(features), path, detections, image_ids)


def test_items_are_matched_to_annotated_images_by_base_name(coco_file):
    metric = with_fake_detector(METRICS["detection"](annotations=str(coco_file)),
                                {0: fake_detections(coco_file)[7]})
    picture = uniform_image(0)
    for item in ("val/a", "a", "deep/dir/a.jpg"):
        assert metric.item_features(item, picture, picture)["size"].tolist() == [[HEIGHT, WIDTH]]
    with pytest.raises(InputError) as err:
        metric.item_features("val2017/zebra", picture, picture)
    message = str(err.value)
    assert "\n" not in message and "val2017/zebra" in message and str(coco_file) in message
    with pytest.raises(InputError, match=r"item 'val/a' is 64x96 pixels, but .* gives a.jpg as 128x96"):
        metric.item_features("val/a", uniform_image(0, 96, 64), uniform_image(0, 96, 64))
    # The same image twice (a clip's frames, a repeated shard) would count its objects twice.
    features = FeatureSet.from_items([("val/a", metric.features(picture, picture))] * 2)
    with pytest.raises(InputError, match="'val/a' is evaluated more than once"):
        metric.from_features(features)


def test_annotations_without_objects_or_segmentations(coco_file, tmp_path):
    detections = fake_detections(coco_file)
    metric, features = annotated_items(coco_file, detections, [41], stem_item)
    with pytest.raises(MetricUndefined, match=r"no ground-truth object in the 1 image\(s\)"):
        metric.from_features(features)
    # Boxes only: the mask columns are NaN, the box ones as pycocotools computes them.
    boxes_only = synthetic_coco()
    for ann in boxes_only["annotations"]:
        del ann["segmentation"]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes_only))
    metric, features = annotated_items(path, detections, [7, 12], stem_item)
    values = metric.from_features(features)
    assert math.isnan(values["map_segm"]) and math.isnan(values["map50_segm"])
    assert values["map_bbox"] == pytest.approx(100 * direct_stats(path, detections, [7, 12], "bbox")[0], abs=1e-12)


# -- pseudo ground truth ----------------------------------------------------------------------------------
def pseudo_item(reference: dict, reconstruction: dict, model: str = "maskrcnn_resnet50_fpn", **options):
    metric = with_fake_detector(METRICS["detection"](model=model, **options), {0: reconstruction, 1: reference})
    return metric, metric.features(uniform_image(1), uniform_image(0))


def moved(raw: dict, dx: int) -> dict:
    out = dict(raw, boxes=raw["boxes"] + np.float32([dx, 0, dx, 0]))
    if "masks" in raw:
        out["masks"] = np.roll(raw["masks"], dx, axis=2)
    return out


def test_pseudo_ground_truth_from_the_reference(coco_file):
    detections = fake_detections(coco_file)
    reference = dict(detections[7], scores=np.float32([0.9, 0.8, 0.95, 0.7, 0.3, 0.2]))
    metric, same = pseudo_item(reference, reference)
    # gt_score 0.5 keeps four reference detections; the reconstruction keeps all six.
    assert len(same["reference"]) == 4 and len(same["reconstruction"]) == 6
    assert same["reference"].shape[1] == len(ROW_FIELDS)
    values = metric.from_features(FeatureSet.from_items([("a", same)]))
    # The two low-scoring extra detections rank below every match: nothing is lost.
    assert values == {"map_bbox": 100.0, "map50_bbox": 100.0, "map_segm": 100.0, "map50_segm": 100.0,
                      "det_images": 1}
    # One reconstruction box moved: the box mAP drops, AP@.5 less than AP@[.5:.95].
    shifted = dict(reference, boxes=reference["boxes"].copy())
    shifted["boxes"][0] += np.float32([6, 0, 6, 0])
    _, worse = pseudo_item(reference, shifted)
    lower = metric.from_features(FeatureSet.from_items([("a", same), ("b", worse)]))
    assert lower["map_bbox"] < 100 and lower["map50_bbox"] <= 100 and lower["map50_bbox"] >= lower["map_bbox"]
    assert lower["map_segm"] == 100.0  # the masks did not move
    _, all_moved = pseudo_item(reference, moved(reference, 9))
    everything_moved = metric.from_features(FeatureSet.from_items([("a", all_moved)]))
    assert everything_moved["map_segm"] < 100 and everything_moved["map_bbox"] < lower["map_bbox"]
    # A stricter gt_score keeps fewer objects.
    strict, kept = pseudo_item(reference, reference, gt_score=0.85)
    assert len(kept["reference"]) == 2
    assert strict.from_features(FeatureSet.from_items([("a", kept)]))["map_bbox"] == 100.0


def test_pseudo_ground_truth_edge_cases(coco_file):
    detections = fake_detections(coco_file)
    reference = dict(detections[7], scores=np.float32([0.1, 0.2, 0.3, 0.4, 0.3, 0.2]))
    metric, nothing = pseudo_item(reference, reference)
    assert len(nothing["reference"]) == 0
    with pytest.raises(MetricUndefined, match="no ground-truth object in the 1 image.*above gt_score 0.5"):
        metric.from_features(FeatureSet.from_items([("a", nothing)]))
    # An image without reference objects still counts: its detections are false positives, here
    # ranked above every true one.
    confident = dict(reference, scores=np.float32([0.9] * 6))
    _, good = pseudo_item(confident, confident)
    _, spurious = pseudo_item(reference, dict(reference, scores=np.float32([0.95] * 6)))
    assert metric.from_features(FeatureSet.from_items([("a", good), ("b", nothing)]))["map_bbox"] == 100.0
    both = metric.from_features(FeatureSet.from_items([("a", good), ("b", spurious)]))
    assert both["det_images"] == 2 and both["map_bbox"] < 100
    # No detections on the reconstruction: mAP 0, not undefined.
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64), "masks": np.zeros((0, HEIGHT, WIDTH), bool)}
    _, blind = pseudo_item(confident, empty)
    assert metric.from_features(FeatureSet.from_items([("a", blind)]))["map_bbox"] == 0.0
    # A box-only detector: no mask columns.
    boxes = {key: value for key, value in confident.items() if key != "masks"}
    faster, box_item = pseudo_item(boxes, moved(boxes, 2), model="fasterrcnn_mobilenet_v3_large_320_fpn")
    assert len(box_item["reconstruction_rle"]) == 0
    values = faster.from_features(FeatureSet.from_items([("a", box_item)]))
    assert 0 < values["map_bbox"] < 100 and math.isnan(values["map_segm"]) and math.isnan(values["map50_segm"])


def test_detection_rows_keep_coco_results_form():
    from pycocotools import mask as mask_util

    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:8, 3:9] = True
    rows, rle = detection_rows([[3, 2, 9, 8], [0.5, 1.25, 30, 20]], [0.9, 0.25], [18, 90], masks)
    assert rows.dtype == np.float64 and rows.shape == (2, len(ROW_FIELDS))
    assert rows[:, :6].tolist() == [[3, 2, 6, 6, 0.9, 18], [0.5, 1.25, 29.5, 18.75, 0.25, 90]]
    first = mask_util.encode(np.asfortranarray(masks[0].astype(np.uint8)))["counts"]
    assert rle.tobytes()[: int(rows[0, 6])] == first and int(rows[:, 6].sum()) == len(rle)
    assert detection_rows(np.zeros((0, 4)), [], [])[0].shape == (0, len(ROW_FIELDS))


def test_options():
    metric = METRICS["detection"]()
    assert metric.level == "dataset" and metric.uses_gpu and not metric.paired_features
    assert metric.weight_names() == ("torchvision-maskrcnn_resnet50_fpn-coco",)
    assert METRICS["detection"](model="fcos_resnet50_fpn").weight_names() == ("torchvision-fcos_resnet50_fpn-coco",)
    assert {c.name: (c.rd, c.dtype) for c in metric.columns} == {
        "map_bbox": (True, "float64"), "map50_bbox": (True, "float64"), "map_segm": (True, "float64"),
        "map50_segm": (True, "float64"), "det_images": (False, "int64")}
    assert all(c.direction == "higher" for c in metric.columns)
    with pytest.raises(ConfigError, match="option model must be one of"):
        METRICS["detection"](model="yolo")
    with pytest.raises(ConfigError, match="unknown weights 'nope'"):
        METRICS["detection"](weights="nope")
    with pytest.raises(ConfigError, match="annotations /nonexistent.json is not a file"):
        METRICS["detection"](annotations="/nonexistent.json")
    with pytest.raises(ConfigError, match="min_size 900 is above max_size 800"):
        METRICS["detection"](min_size=900, max_size=800)
    assert METRICS["detection"](gt_score=0.7).features_key() != metric.features_key()


def test_schema_has_the_columns():
    from ulbc.schema import DATASET_METRIC_SCHEMA

    for name in ("map_bbox", "map50_bbox", "map_segm", "map50_segm", "det_images"):
        assert name in DATASET_METRIC_SCHEMA.names


# -- the features file ----------------------------------------------------------------------------------------
META = {"dataset": "coco", "method": "m", "codec": "c", "rate_label": "q1", "rate_value": 1.0, "code_digest": "d"}


def write_shard(path, metric, items, rate_label="q1"):
    collector = FeatureCollector([metric])
    for item, reference, reconstruction in items:
        collector.add(item, reference, reconstruction)
    info = json.dumps({metric.name: {"options": metric.options}})
    collector.write(path, dict(META, rate_label=rate_label, metric_info=info))
    return path


def test_shards_join_into_the_same_values(coco_file, tmp_path):
    detections = fake_detections(coco_file, seed=3)
    image_ids = [7, 12, 30, 41]
    metric, direct = annotated_items(coco_file, detections, image_ids, stem_item)
    by_code = {code: detections[i] for code, i in enumerate(image_ids)}
    names = {image["id"]: stem_item(image["file_name"]) for image in synthetic_coco()["images"]}
    shards = []
    for index, part in enumerate(([0, 1], [2, 3])):
        shard_metric = with_fake_detector(METRICS["detection"](annotations=str(coco_file)), by_code)
        shards.append(write_shard(tmp_path / f"s{index}.npz", shard_metric,
                                  [(names[image_ids[c]], uniform_image(c), uniform_image(c)) for c in part]))
    assert dataset_metric_table(shards, tmp_path / "dataset.parquet") == 1
    row = read_dataset_metrics(tmp_path / "dataset.parquet").iloc[0]
    expected = metric.from_features(direct)
    for column, value in expected.items():
        assert row[column] == value
    assert row["n_items"] == 4 and row["note"] == ""


def test_collector_keeps_paired_sides_paired():
    fid = METRICS["fid"](patch_size=16)
    fid.features = lambda reference, reconstruction: {"real": np.zeros((3, 4), np.float32),
                                                      "fake": np.zeros((2, 4), np.float32)}
    with pytest.raises(InputError, match="feature arrays of item 'x' differ in length"):
        FeatureCollector([fid]).add("x", uniform_image(0), uniform_image(0))


def test_fid_features_round_trip_through_the_file(tmp_path):
    fid = METRICS["fid"](patch_size=16, min_patches=2)
    rng = np.random.default_rng(0)
    parts = [{"real": rng.normal(size=(n, 8)).astype(np.float32), "fake": rng.normal(size=(n, 8)).astype(np.float32)}
             for n in (5, 0, 7)]
    produced = iter(parts)
    fid.features = lambda reference, reconstruction: next(produced)
    path = write_shard(tmp_path / "fid.npz", fid, [(f"i{k}", uniform_image(0), uniform_image(0)) for k in range(3)])
    dataset_metric_table([path], tmp_path / "d.parquet")
    row = read_dataset_metrics(tmp_path / "d.parquet").iloc[0]
    joined = {side: np.concatenate([p[side] for p in parts]) for side in ("real", "fake")}
    assert row["fid"] == METRICS["fid"](patch_size=16, min_patches=2).from_features(joined)["fid"]
    assert row["fid_patches"] == 12


def rewrite(path, change):
    """The features file at ``path`` with its metadata or arrays changed by ``change(meta, arrays)``."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    change(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def first_count(meta):
    return next(iter(meta["parts"][0]["items"][0][1].values()))


@pytest.mark.parametrize("label, change, message", [
    ("count-too-high", lambda m, a: first_count(m).update(reconstruction=first_count(m)["reconstruction"] + 1),
     r"side 'reconstruction' holds \d+ rows, its items list \d+"),
    ("negative", lambda m, a: first_count(m).update(size=-1), "malformed row counts"),
    ("text", lambda m, a: first_count(m).update(size="1"), "malformed row counts"),
    ("side-missing", lambda m, a: first_count(m).pop("reference"), "malformed row counts"),
    ("array-missing", lambda m, a: a.pop("p0_f0_reference_rle"), "features .*/reference_rle are listed but not stored"),
    ("array-short", lambda m, a: a.update(p0_f0_reference=a["p0_f0_reference"][:-1]),
     r"side 'reference' holds \d+ rows, its items list \d+"),
    ("rle-lengths", lambda m, a: a["p0_f0_reference"].__setitem__((0, 6), a["p0_f0_reference"][0, 6] + 1),
     "mask lengths sum to"),
    ("items", lambda m, a: m["parts"][0].update(items={"a": 1}), "malformed items list"),
    ("old-format", lambda m, a: m.update(format="ulbc-features-1"), "older ulbc, not ulbc-features-3; rerun"),
])
def test_damaged_features_files_are_one_line_errors(coco_file, tmp_path, label, change, message):
    detections = fake_detections(coco_file)
    reference = dict(detections[7], scores=np.float32([0.9] * 6))
    metric = with_fake_detector(METRICS["detection"](), {0: reference, 1: moved(reference, 3)})
    path = write_shard(tmp_path / f"{label}.npz", metric,
                       [("a", uniform_image(0), uniform_image(1)), ("b", uniform_image(1), uniform_image(0))])
    dataset_metric_table([path], tmp_path / "ok.parquet")  # intact, it reads
    rewrite(path, change)
    with pytest.raises(InputError, match=message) as err:
        dataset_metric_table([path], tmp_path / "out.parquet")
    assert "\n" not in str(err.value)
    if label != "rle-lengths":  # found while decoding the masks, named by item
        assert str(path) in str(err.value)
    assert FORMAT == "ulbc-features-3"


# -- a random Mask R-CNN end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_maskrcnn(tmp_path_factory):
    """A randomly initialised Mask R-CNN state dict registered as a weights entry in its own cache."""
    import torch

    from ulbc.tasknets import detectors

    folder = tmp_path_factory.mktemp("maskrcnn")
    torch.manual_seed(0)
    path = folder / "random-maskrcnn.pth"
    torch.save(detectors.build_detector("maskrcnn_resnet50_fpn").state_dict(), path)
    name = "test-detection-random-maskrcnn"
    with pytest.MonkeyPatch.context() as patch:
        for var in ("ULBC_WEIGHTS_MIRROR", "ULBC_WEIGHTS_REGISTRY", "http_proxy", "https_proxy"):
            patch.delenv(var, raising=False)
        patch.setenv("ULBC_WEIGHTS", str(folder / "cache"))
        patch.setenv("TORCH_HOME", str(folder / "torch"))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        weights.register_weights(WeightFile(name=name, file_name=f"{name}.pth", urls=(), sha256=digest, size=None,
                                            licence="test", used_by=("detection",), description="random Mask R-CNN"))
        try:
            weights.import_file(path, name)
            yield name
        finally:
            weights.unregister_weights(name)


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-40, 41, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def test_random_maskrcnn_end_to_end(random_maskrcnn, photo, coco_file, tmp_path):
    # Random weights score 0.2 to 0.4 on the photo; at most ten detections keep the mask head cheap.
    small = dict(weights=random_maskrcnn, score_threshold=0.3, gt_score=0.3, min_size=96, max_size=128,
                 detections_per_image=10)
    pseudo = METRICS["detection"](**small)
    assert pseudo.info()["weights"] == {random_maskrcnn: weights.file_sha256(random_maskrcnn)}
    same = write_shard(tmp_path / "same.npz", pseudo, [("i0", photo, photo.copy())], rate_label="lossless")
    found = np.load(same)
    assert found["p0_f0_reconstruction"].shape == (10, len(ROW_FIELDS))
    assert np.array_equal(found["p0_f0_reconstruction"], found["p0_f0_reference"])
    assert found["p0_f0_size"].tolist() == [[HEIGHT, WIDTH]]
    lossy = write_shard(tmp_path / "noisy.npz", pseudo, [("i0", photo, noisy(photo, 0))], rate_label="noisy")
    annotated = METRICS["detection"](annotations=str(coco_file), **small)
    labelled = write_shard(tmp_path / "coco.npz", annotated,
                           [("val/a", photo, noisy(photo, 5)), ("val/b", photo, photo)], rate_label="coco")
    with np.load(labelled) as data:
        assert "p0_f0_reference" not in data.files  # annotations: the detector does not run on the reference
        assert [item for item, _ in json.loads(data["meta"].tobytes().decode())["parts"][0]["items"]] == ["val/a", "val/b"]
    with pytest.raises(InputError, match="has no image with file name 'zebra'"):
        annotated.item_features("val/zebra", photo, photo)
    assert dataset_metric_table([same, lossy, labelled], tmp_path / "d.parquet") == 3
    table = read_dataset_metrics(tmp_path / "d.parquet").set_index("rate_label")
    columns = ["map_bbox", "map50_bbox", "map_segm", "map50_segm"]
    for label, count in (("lossless", 1), ("noisy", 1), ("coco", 2)):
        values = table.loc[label, columns].astype(float)
        assert values.between(0, 100).all(), (label, values.to_dict())
        assert table.loc[label, "det_images"] == count and table.loc[label, "note"] == ""
    assert table.loc["lossless", "map_bbox"] == 100.0
    assert table.loc["noisy", "map_bbox"] < 100.0
