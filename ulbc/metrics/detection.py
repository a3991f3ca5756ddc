"""Detection and instance-segmentation mAP of a torchvision COCO detector on the decoded images, per rate point.

The machine-vision metric of "Learned image compression for both humans and machines via dynamic
adaptation" (ICIP 2024): COCO mAP@[.5:.95] of Mask R-CNN, box and mask, on the reconstructions.

* The detector (option ``model``, any of :func:`ulbc.tasknets.detectors.architectures`) is built
  offline and given the weights entry ``weights`` (empty: the architecture's COCO file
  ``torchvision-<model>-coco``) through the weights manager. It runs in eval mode without gradients
  on the uint8 RGB image scaled to float [0, 1]; ``score_threshold`` is its box score threshold
  (``box_score_thresh`` of the R-CNNs, ``score_thresh`` of the others), ``detections_per_image``
  its most detections per image (COCOeval counts the 100 best) and ``min_size`` / ``max_size`` its
  own resize (SSD models have a fixed input size and ignore the two).
* Detections are kept in COCO results form: boxes ``[x, y, width, height]`` in the pixels of the
  original image, torchvision's labels as COCO category ids (its 91-class space is COCO's), and the
  masks binarised at 0.5 at full resolution and run-length encoded by ``pycocotools.mask.encode``.
* Ground truth. With ``annotations`` (a COCO instances JSON) an item is the annotated image whose
  ``file_name`` has the item's base name (with or without its extension): the manifest key
  ``val2017/000000000139`` is ``000000000139.jpg``. Without, the ground truth is the same model's
  detections on the reference image scoring above ``gt_score``, with their binarised masks and
  ``iscrowd`` 0 (pseudo ground truth, as CompressAI-Vision and MPEG VCM practice); a reference
  detection whose binarised mask is empty cannot be matched by any mask and is left out of the mask
  ground truth only.
* pycocotools' ``COCOeval`` (iouType ``bbox`` and ``segm``) runs over the images of the rate
  point only (``params.imgIds``): an image without ground truth objects still counts (its
  detections are false positives). ``map_*`` is ``stats[0]`` (AP@[.5:.95], at most 100 detections
  per image), ``map50_*`` is ``stats[1]`` (AP@.5), both in percent as papers report them (37.9).
* Undefined values: a rate point without a single non-crowd ground-truth object has no mAP (NaN in
  every column, the reason in the table's note). A box-only model (Faster R-CNN, RetinaNet, FCOS,
  SSD) has NaN ``map_segm`` and ``map50_segm``, as have annotations without segmentations; a
  value COCOeval cannot average (``-1``: no ground truth in any category it evaluates) is NaN.

Features per item (sides of :class:`~ulbc.metrics.base.FeatureSet`): ``size`` (one row
``[height, width]``), ``reconstruction`` and, for pseudo ground truth, ``reference`` (one row per
detection: :data:`ROW_FIELDS`, float64) and ``<side>_rle`` (the concatenated RLE ``counts``
bytes of that side's masks, ``rle_bytes`` each).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import math
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .. import weights
from ..errors import ConfigError, InputError
from ..options import Option
from ..tasknets import detectors
from . import register_metric
from .base import Column, FeatureSet, Metric, MetricUndefined, as_feature_set

#: The columns of a detection row; ``rle_bytes`` is the length of its mask's RLE counts (0: no mask).
ROW_FIELDS = ("x", "y", "width", "height", "score", "label", "rle_bytes")
SIZE = "size"
RECONSTRUCTION = "reconstruction"
REFERENCE = "reference"
#: torchvision's COCO category ids (1..90, the gaps included): the categories of a pseudo ground truth.
PSEUDO_CATEGORIES = tuple(range(1, detectors.COCO_NUM_CLASSES))
#: Architectures whose input size is fixed (no min_size / max_size).
_FIXED_SIZE = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")
_MASK_THRESHOLD = 0.5


def rle_side(side: str) -> str:
    return f"{side}_rle"


# -- detections as rows -----------------------------------------------------------------------------------
def detection_rows(boxes_xyxy: Any, scores: Any, labels: Any, masks: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Detections as stored: the (n, 7) float64 rows of :data:`ROW_FIELDS` (boxes converted from
    corners to ``[x, y, width, height]``) and the uint8 bytes of the masks' RLE counts, one after the
    other. ``masks``: (n, H, W) binary masks at the image's resolution, or None for a box-only model."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    count = len(boxes)
    rows = np.zeros((count, len(ROW_FIELDS)), np.float64)
    rows[:, 0:2] = boxes[:, 0:2]
    rows[:, 2:4] = boxes[:, 2:4] - boxes[:, 0:2]
    rows[:, 4] = np.asarray(scores, dtype=np.float64).reshape(-1)
    rows[:, 5] = np.asarray(labels, dtype=np.int64).reshape(-1)
    if masks is None or count == 0:
        return rows, np.zeros(0, np.uint8)
    from pycocotools import mask as mask_util

    binary = np.asarray(masks).astype(bool).astype(np.uint8)
    if binary.ndim != 3 or len(binary) != count:
        raise InputError(f"detection masks of shape {binary.shape} for {count} boxes, expected (n, height, width)")
    encoded = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    counts = [rle["counts"] for rle in encoded]
    rows[:, 6] = [len(c) for c in counts]
    return rows, np.frombuffer(b"".join(counts), dtype=np.uint8).copy()


def _rles(rows: np.ndarray, rle: np.ndarray, size: tuple[int, int], what: str) -> list[dict | None]:
    """The RLE mask of each row (None where it has none), checked against the stored bytes."""
    lengths = rows[:, 6]
    if np.any(lengths < 0) or np.any(lengths != np.round(lengths)) or int(lengths.sum()) != len(rle):
        raise InputError(f"{what}: mask lengths sum to {lengths.sum():g} bytes, {len(rle)} stored")
    out: list[dict | None] = []
    data, start = rle.tobytes(), 0
    for length in lengths.astype(np.int64):
        out.append({"size": [int(size[0]), int(size[1])], "counts": data[start : start + length]} if length else None)
        start += length
    return out


# -- ground truth and evaluation ---------------------------------------------------------------------------
def _quiet():
    """pycocotools prints its progress and summary tables: kept out of ulbc's output."""
    return contextlib.redirect_stdout(io.StringIO())


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _load_annotations(path: Path) -> dict:
    """A COCO instances JSON, checked for the fields the evaluation reads; InputError naming the file."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable COCO annotations JSON ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list)
                                               for k in ("images", "annotations", "categories")):
        raise InputError(f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')")
    needs = {"images": ("id", "file_name", "width", "height"), "categories": ("id",),
             "annotations": ("id", "image_id", "category_id", "bbox", "area")}
    for part, fields in needs.items():
        for index, entry in enumerate(record[part]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise InputError(f"{path}: {part}[{index}] has no {', '.join(missing)}")
    known = {image["id"] for image in record["images"]}
    stray = [a["image_id"] for a in record["annotations"] if a["image_id"] not in known]
    if stray:
        raise InputError(f"{path}: {len(stray)} annotation(s) of images it does not list (image id {stray[0]})")
    return record


class _Annotations:
    """A COCO instances file and the index of its images by file base name."""

    def __init__(self, path: Path):
        self.path = path
        self.dataset = _load_annotations(path)
        self.coco = _coco(self.dataset)
        self.by_name: dict[str, set] = {}
        for image in self.dataset["images"]:
            name = PurePosixPath(str(image["file_name"]).replace("\\", "/"))
            for key in {name.name, name.stem}:
                self.by_name.setdefault(key, set()).add(image["id"])
        self.has_segmentation = all("segmentation" in a for a in self.dataset["annotations"])

    def image_of(self, item: str, size: tuple[int, int] | None = None) -> dict:
        """The annotated image of ``item`` (matched by base name); with ``size`` (height, width) the
        annotation must give the same size, as boxes are compared in the original image's pixels."""
        base = PurePosixPath(item).name
        found = sorted(self.by_name.get(base, ()))
        if not found:
            raise InputError(f"item {item!r}: {self.path} has no image with file name {base!r} (or {base}.*)")
        if len(found) > 1:
            raise InputError(f"item {item!r}: {self.path} has {len(found)} images named {base!r} (ids {found[:3]})")
        image = self.coco.imgs[found[0]]
        if size is not None and (int(image["height"]), int(image["width"])) != tuple(map(int, size)):
            raise InputError(f"item {item!r} is {size[1]}x{size[0]} pixels, but {self.path} gives "
                             f"{image['file_name']} as {image['width']}x{image['height']}")
        return image


def _empty_results(gt):
    """What ``COCO.loadRes`` makes of no detections (it fails on an empty list)."""
    return _coco({"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": []})


def coco_stats(gt, results: list[dict], image_ids: list[int], iou_type: str) -> np.ndarray:
    """COCOeval's 12 summary numbers (fractions; -1 where undefined) of ``results`` against ``gt``
    on the images ``image_ids`` only."""
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        found = gt.loadRes(results) if results else _empty_results(gt)
        evaluation = COCOeval(gt, found, iou_type)
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats, dtype=np.float64)


def _percent(value: float) -> float:
    return float(value) * 100.0 if value >= 0 else math.nan


@functools.lru_cache(maxsize=None)
def predicts_masks(architecture: str) -> bool:
    """Whether the architecture has a mask head (built on the meta device: no memory, no weights)."""
    import torch

    with torch.device("meta"):
        return detectors.has_masks(detectors.build_detector(architecture))


@register_metric
class Detection(Metric):
    name = "detection"
    task = True
    description = ("COCO mAP (box and mask, percent) of a torchvision detector on the reconstructions, against "
                   "COCO annotations or the detections on the references, per rate point")
    level = "dataset"
    uses_gpu = True
    paired_features = False
    columns = (
        Column("map_bbox", "box mAP@[.5:.95] (%, per rate point)"),
        Column("map50_bbox", "box AP@.5 (%, per rate point)"),
        Column("map_segm", "mask mAP@[.5:.95] (%, per rate point)"),
        Column("map50_segm", "mask AP@.5 (%, per rate point)"),
        Column("det_images", "images behind the detection mAP", rd=False, dtype="int64"),
    )
    option_specs = {
        "model": Option("maskrcnn_resnet50_fpn", "choice", choices=detectors.architectures(),
                        help="torchvision detection architecture"),
        "weights": Option("", "str", help="weights entry of the detector (empty: torchvision-<model>-coco)"),
        "annotations": Option("", "str", help="COCO instances JSON of the dataset (empty: pseudo ground truth "
                                              "from the detections on the reference)"),
        "gt_score": Option(0.5, "float", low=0.0, high=1.0,
                           help="pseudo ground truth: reference detections scoring above this"),
        "score_threshold": Option(0.05, "float", low=0.0, high=1.0, help="the detector's box score threshold"),
        "detections_per_image": Option(100, "int", low=1, high=100,
                                       help="the detector's most detections per image (COCOeval counts 100)"),
        "min_size": Option(800, "int", low=1, help="the detector's resize: shorter side (not SSD)"),
        "max_size": Option(1333, "int", low=1, help="the detector's resize: longest side at most (not SSD)"),
    }

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device=device, **options)
        if self.options["min_size"] > self.options["max_size"]:
            raise ConfigError(f"metric 'detection': min_size {self.options['min_size']} is above max_size "
                              f"{self.options['max_size']}")
        self.weights_name = self.options["weights"] or detectors.default_weights(self.options["model"])
        weights.get_weight_file(self.weights_name)  # an unknown name fails here, not at the first item
        path = self.options["annotations"]
        if path and not Path(path).is_file():
            raise ConfigError(f"metric 'detection': annotations {path} is not a file")
        self._network = None
        self._annotations: _Annotations | None = None

    # -- what it needs ---------------------------------------------------------------------------
    def weight_names(self) -> tuple[str, ...]:
        return (self.weights_name,)

    def info(self) -> dict[str, Any]:
        import torchvision

        record = {**super().info(), "torchvision": torchvision.__version__,
                  "pycocotools": metadata.version("pycocotools")}
        if self.options["annotations"]:
            record["annotations_sha256"] = hashlib.sha256(Path(self.options["annotations"]).read_bytes()).hexdigest()
        return record

    def features_key(self) -> str:
        settings = {k: v for k, v in self.options.items() if k not in ("weights", "annotations")}
        ground_truth = "annotations" if self.options["annotations"] else "pseudo"
        return f"detection/{self.weights_name}/{ground_truth}/{json.dumps(settings, sort_keys=True)}"

    @property
    def masks(self) -> bool:
        return predicts_masks(self.options["model"])

    def annotations(self) -> _Annotations:
        if self._annotations is None:
            self._annotations = _Annotations(Path(self.options["annotations"]))
        return self._annotations

    # -- the detector ------------------------------------------------------------------------------
    def _detector(self):
        if self._network is None:
            model = self.options["model"]
            prefix = "box_" if "rcnn" in model else ""  # the R-CNNs prefix their box-head settings
            settings = {f"{prefix}score_thresh": self.options["score_threshold"],
                        f"{prefix}detections_per_img": self.options["detections_per_image"]}
            if model not in _FIXED_SIZE:
                settings.update(min_size=self.options["min_size"], max_size=self.options["max_size"])
            self._network = detectors.load_detector(model, self.weights_name, device=self.device, **settings)
        return self._network

    def detect(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The detector's raw output (boxes xyxy, scores, labels, masks (n, H, W) binarised at 0.5)
        of each (H, W, 3) uint8 image, on the CPU as NumPy arrays."""
        import torch

        for image in images:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise InputError(f"detection expects (H, W, 3) uint8 RGB images, got {what}")
        network = self._detector()
        batch = [torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float().div_(255)
                 for image in images]
        with torch.no_grad():
            outputs = network(batch)
        out = []
        for output in outputs:
            found = {key: output[key].cpu().numpy() for key in ("boxes", "scores", "labels")}
            if "masks" in output:
                found["masks"] = (output["masks"][:, 0] > _MASK_THRESHOLD).cpu().numpy()
            out.append(found)
        return out

    def _stored(self, found: dict[str, np.ndarray], side: str, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if keep is not None:
            found = {key: value[keep] for key, value in found.items()}
        rows, rle = detection_rows(found["boxes"], found["scores"], found["labels"], found.get("masks"))
        return {side: rows, rle_side(side): rle}

    def features(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        if reference.shape != reconstruction.shape:
            raise InputError(f"reference {reference.shape} and reconstruction {reconstruction.shape} differ in shape")
        pseudo = not self.options["annotations"]
        found = self.detect([reconstruction, reference] if pseudo else [reconstruction])
        out = {SIZE: np.asarray([reconstruction.shape[:2]], np.int64), **self._stored(found[0], RECONSTRUCTION)}
        if pseudo:
            out.update(self._stored(found[1], REFERENCE, found[1]["scores"] > self.options["gt_score"]))
        return out

    def item_features(self, item: str, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        if self.options["annotations"]:  # an unmatched item fails before the detector runs
            self.annotations().image_of(item, reconstruction.shape[:2])
        return self.features(reference, reconstruction)

    # -- the values ----------------------------------------------------------------------------------
    def _sides(self, features: FeatureSet) -> list[str]:
        sides = [SIZE, RECONSTRUCTION, rle_side(RECONSTRUCTION)]
        if not self.options["annotations"]:
            sides += [REFERENCE, rle_side(REFERENCE)]
        missing = [side for side in sides if side not in features]
        if missing:
            raise InputError(f"metric 'detection': no {', '.join(missing)} features")
        if np.any(features.counts(SIZE) != 1) or features[SIZE].shape[1:] != (2,):
            raise InputError("metric 'detection': every item needs one [height, width] size row")
        for side in sides[1::2]:
            if features[side].shape[1:] != (len(ROW_FIELDS),) or features[side].dtype != np.float64:
                raise InputError(f"metric 'detection': {side} rows are {features[side].dtype} "
                                 f"{features[side].shape[1:]}, expected float64 ({len(ROW_FIELDS)},)")
        return sides

    def _entries(self, features: FeatureSet, side: str, index: int) -> list[tuple[list[float], float, int, Any]]:
        """(box xywh, score, category id, RLE mask or None) of each detection of item ``index`` on ``side``."""
        rows = features.rows(side, index)
        size = tuple(features.rows(SIZE, index)[0])
        rles = _rles(rows, features.rows(rle_side(side), index), size,
                     f"metric 'detection': item {features.items[index]!r}, {side}")
        return [([float(v) for v in row[:4]], float(row[4]), int(row[5]), rle) for row, rle in zip(rows, rles)]

    def _results(self, features: FeatureSet, ids: list[int]) -> tuple[list[dict], list[dict]]:
        """The reconstructions' detections in COCO results format: for bbox, and for segm (no bbox,
        so that loadRes takes the area and box from the mask, as torchvision's COCO evaluation does)."""
        boxes, segments = [], []
        for index, image_id in enumerate(ids):
            for bbox, score, category, rle in self._entries(features, RECONSTRUCTION, index):
                common = {"image_id": image_id, "category_id": category, "score": score}
                boxes.append(dict(common, bbox=bbox))
                if rle is not None:
                    segments.append(dict(common, segmentation=rle))
        return boxes, segments

    def _pseudo_ground_truth(self, features: FeatureSet):
        """COCO ground truths (boxes; masks) from the reference detections; image ids 1..n in item order.
        COCOeval takes id 0 for "unmatched", so object ids start at 1 too."""
        from pycocotools import mask as mask_util

        images = [{"id": index + 1, "height": int(h), "width": int(w), "file_name": item}
                  for index, (item, (h, w)) in enumerate(zip(features.items, features[SIZE]))]
        categories = [{"id": c, "name": str(c)} for c in PSEUDO_CATEGORIES]
        boxes, segments = [], []
        for index in range(len(features.items)):
            for bbox, _, category, rle in self._entries(features, REFERENCE, index):
                # One object, one area: its mask's where it has one, as in COCO's own annotations.
                area = float(mask_util.area(rle)) if rle is not None else bbox[2] * bbox[3]
                entry = {"image_id": index + 1, "category_id": category, "bbox": bbox, "area": area, "iscrowd": 0}
                boxes.append(dict(entry, id=len(boxes) + 1))
                if rle is not None and area > 0:
                    segments.append(dict(entry, id=len(segments) + 1, segmentation=rle))
        box_gt = _coco({"images": images, "categories": categories, "annotations": boxes})
        mask_gt = _coco({"images": images, "categories": categories, "annotations": segments}) if self.masks else None
        return box_gt, mask_gt, [image["id"] for image in images]

    def _annotated_ground_truth(self, features: FeatureSet):
        annotations = self.annotations()
        ids = [annotations.image_of(item, tuple(size))["id"] for item, size in zip(features.items, features[SIZE])]
        if len(set(ids)) != len(ids):
            twice = next(item for item, image in zip(features.items, ids) if ids.count(image) > 1)
            raise InputError(f"item {twice!r} is evaluated more than once against {annotations.path} "
                             "(the same image in several shards, or a clip's frames)")
        mask_gt = annotations.coco if self.masks and annotations.has_segmentation else None
        return annotations.coco, mask_gt, ids

    def from_features(self, features: FeatureSet) -> dict[str, Any]:
        features = as_feature_set(features)
        self._sides(features)
        if self.options["annotations"]:
            box_gt, mask_gt, ids = self._annotated_ground_truth(features)
            source = f"{self.options['annotations']}"
        else:
            box_gt, mask_gt, ids = self._pseudo_ground_truth(features)
            source = f"reference detections above gt_score {self.options['gt_score']}"
        chosen = set(ids)
        objects = sum(1 for a in box_gt.dataset["annotations"] if a["image_id"] in chosen and not a.get("iscrowd"))
        if objects == 0:
            raise MetricUndefined(f"no ground-truth object in the {len(ids)} image(s) ({source})")
        boxes, segments = self._results(features, ids)
        box_stats = coco_stats(box_gt, boxes, ids, "bbox")
        values = {"map_bbox": _percent(box_stats[0]), "map50_bbox": _percent(box_stats[1]),
                  "map_segm": math.nan, "map50_segm": math.nan, "det_images": len(ids)}
        if mask_gt is not None:
            mask_stats = coco_stats(mask_gt, segments, ids, "segm")
            values.update(map_segm=_percent(mask_stats[0]), map50_segm=_percent(mask_stats[1]))
        return values
