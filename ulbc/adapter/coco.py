"""A COCO-format training set (an images folder and an ``instances_*.json``) as torchvision
detection samples.

Each sample is an image (3, H, W) float32 in [0, 1] and a target: ``boxes`` (N, 4) xyxy float32
pixels, ``labels`` (N,) int64 COCO category ids (torchvision's 91-class space, 0 being the
background) and, when asked for, ``masks`` (N, H, W) uint8 decoded from polygons or RLE by
pycocotools. Crowd annotations and degenerate boxes are left out, and so are images left without
an annotation, as torchvision's detection reference does.

Augmentation (``crop``): the image is scaled so that its shorter side is ``crop`` times a factor
drawn from ``scale_range``, a ``crop`` × ``crop`` window is cut at a random place and flipped
left-right with probability 1/2; boxes are shifted, clipped to the window and dropped below one
pixel. Which images a step reads and how they are augmented depend only on (seed, step), so a
resumed run reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: Category ids torchvision's COCO detectors can predict (1..90; 0 is the background).
MAX_CATEGORY_ID = 90


@dataclass(frozen=True)
class Annotation:
    category_id: int
    box: tuple[float, float, float, float]  # x, y, width, height as COCO stores it
    segmentation: Any


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    width: int
    height: int
    annotations: tuple[Annotation, ...]


def _require(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise InputError(f"{path}: not a COCO instances file ({problem})")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def read_instances(images_dir: str | os.PathLike, annotations_file: str | os.PathLike) -> list[ImageRecord]:
    """The images of a COCO instances file that have at least one usable annotation, in id order."""
    images_dir, annotations_file = Path(images_dir), Path(annotations_file)
    if not annotations_file.is_file():
        raise InputError(f"{annotations_file}: no such file (COCO annotations)")
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such folder (COCO images)")
    try:
        content = json.loads(annotations_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{annotations_file}: cannot be read as JSON ({reason})") from None
    path = annotations_file
    _require(isinstance(content, dict), path, "expected a JSON object")
    _require(isinstance(content.get("images"), list), path, "no 'images' list")
    _require(isinstance(content.get("annotations"), list), path, "no 'annotations' list")
    images: dict[int, dict] = {}
    for index, image in enumerate(content["images"]):
        ok = (isinstance(image, dict) and isinstance(image.get("id"), int) and isinstance(image.get("file_name"), str)
              and all(isinstance(image.get(k), int) and image[k] > 0 for k in ("width", "height")))
        _require(ok, path, f"images[{index}] needs an integer id, a file_name and positive width and height")
        _require(image["id"] not in images, path, f"image id {image['id']} appears twice")
        name = Path(image["file_name"])
        _require(not name.is_absolute() and ".." not in name.parts, path,
                 f"images[{index}] file_name {image['file_name']!r} leaves the images folder")
        images[image["id"]] = image
    kept: dict[int, list[Annotation]] = {}
    for index, ann in enumerate(content["annotations"]):
        _require(isinstance(ann, dict) and ann.get("image_id") in images, path,
                 f"annotations[{index}] names no listed image")
        if ann.get("iscrowd", 0):
            continue
        box = ann.get("bbox")
        _require(isinstance(box, list) and len(box) == 4 and all(map(_number, box)), path,
                 f"annotations[{index}] bbox must be 4 numbers [x, y, width, height]")
        category = ann.get("category_id")
        _require(isinstance(category, int) and 1 <= category <= MAX_CATEGORY_ID, path,
                 f"annotations[{index}] category_id {category!r} is outside COCO's 1..{MAX_CATEGORY_ID}")
        if box[2] <= 0 or box[3] <= 0:
            continue
        kept.setdefault(ann["image_id"], []).append(
            Annotation(category, tuple(float(v) for v in box), ann.get("segmentation")))
    records = [ImageRecord(images_dir / images[i]["file_name"], images[i]["width"], images[i]["height"],
                           tuple(kept[i])) for i in sorted(kept)]
    if not records:
        raise InputError(f"{annotations_file}: no image has a usable (non-crowd, non-empty) annotation")
    return records


def decode_mask(segmentation: Any, height: int, width: int, where: str):
    """(H, W) uint8 mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    from pycocotools import mask as coco_mask

    try:
        if isinstance(segmentation, list):  # polygons: merged into one region
            if not segmentation or not all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
                raise ValueError("polygons need at least 3 points each")
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        else:
            raise ValueError("expected polygons or an RLE mapping")
        mask = coco_mask.decode(rle)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare exceptions for bad input
        raise InputError(f"{where}: unusable segmentation ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if mask.shape != (height, width):
        raise InputError(f"{where}: segmentation of size {mask.shape}, the image is {height}x{width}")
    return mask


class CocoDetectionSet:
    """Samples of a COCO instances file: ``sample(index, rng)``; ``batch(seed, step, size)``."""

    def __init__(self, images_dir: str | os.PathLike, annotations_file: str | os.PathLike, *,
                 crop: int | None = None, scale_range: tuple[float, float] = (1.0, 2.0), flip: bool = True,
                 masks: bool = True) -> None:
        if crop is not None and crop < 8:
            raise InputError(f"{annotations_file}: crop must be at least 8 pixels, got {crop}")
        low, high = scale_range
        if not 0 < low <= high:
            raise InputError(f"{annotations_file}: scale range must satisfy 0 < low <= high, got {scale_range}")
        self.annotations_file = Path(annotations_file)
        self.records = read_instances(images_dir, annotations_file)
        self.crop, self.scale_range, self.flip, self.masks = crop, (float(low), float(high)), flip, masks

    def __len__(self) -> int:
        return len(self.records)

    def indices(self, seed: int, step: int, batch_size: int) -> list[int]:
        """The images of one step: epochs of seeded permutations, read in order."""
        count = len(self.records)
        chosen = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, offset = divmod(position, count)
            chosen.append(int(np.random.default_rng([seed, epoch]).permutation(count)[offset]))
        return chosen

    def batch(self, seed: int, step: int, batch_size: int) -> tuple[list, list[dict]]:
        images, targets = [], []
        for slot, index in enumerate(self.indices(seed, step, batch_size)):
            image, target = self.sample(index, np.random.default_rng([seed, step, slot, 1]))
            images.append(image)
            targets.append(target)
        return images, targets

    def sample(self, index: int, rng: np.random.Generator) -> tuple[Any, dict]:
        import torch
        import torch.nn.functional as F

        from ..imageio import load_rgb

        record = self.records[index]
        pixels = load_rgb(record.path)
        if pixels.shape[:2] != (record.height, record.width):
            raise InputError(f"{record.path}: is {pixels.shape[1]}x{pixels.shape[0]}, {self.annotations_file} says "
                             f"{record.width}x{record.height}")
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div(255)
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a.box for a in record.annotations)],
                             dtype=torch.float32)
        labels = torch.tensor([a.category_id for a in record.annotations], dtype=torch.int64)
        masks = None
        if self.masks:
            where = f"{self.annotations_file} ({record.path.name})"
            masks = torch.from_numpy(np.stack([decode_mask(a.segmentation, record.height, record.width, where)
                                               for a in record.annotations]))
        if self.crop is not None:
            image, boxes, masks = self._crop(image, boxes, masks, rng, F)
        if self.flip and rng.random() < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            masks = masks.flip(-1) if masks is not None else None
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        target = {"boxes": boxes[keep].contiguous(), "labels": labels[keep]}
        if masks is not None:
            target["masks"] = masks[keep].contiguous()
        return image.contiguous(), target

    def _crop(self, image, boxes, masks, rng, F):
        import torch

        height, width = image.shape[-2:]
        low, high = self.scale_range
        scale = self.crop / min(height, width) * float(rng.uniform(low, high))
        size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        image = image.clamp(0, 1)
        if masks is not None:
            masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0].to(torch.uint8)
        top = int(rng.integers(0, size[0] - self.crop + 1))
        left = int(rng.integers(0, size[1] - self.crop + 1))
        sy, sx = size[0] / height, size[1] / width
        boxes = boxes * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = boxes.clamp(min=0, max=self.crop)
        image = image[:, top : top + self.crop, left : left + self.crop]
        if masks is not None:
            masks = masks[:, top : top + self.crop, left : left + self.crop]
        return image, boxes, masks
