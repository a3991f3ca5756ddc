"""torchvision's COCO detection models (Mask R-CNN, Faster R-CNN, RetinaNet, FCOS, SSD), built
without a download and loaded from the weights manager.

The network is built with ``weights=None, weights_backbone=None`` and 91 classes (torchvision's
COCO category ids, background 0), then given a state dict in torchvision's published layout: the
registered COCO file of the architecture (``torchvision-<arch>-coco``) or any other weights entry
(a fine-tuned model, the random file of a test). Keys and shapes must match exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import weights
from ..errors import ConfigError
from ..statedict import check_layout, one_line, read_tensors

#: torchvision's label space of its COCO models: ids 1..90 with gaps, 0 is the background.
COCO_NUM_CLASSES = 91
#: Constructor arguments a study may set (image sizes of the model's own resize, output limits).
TUNABLE = ("min_size", "max_size", "box_score_thresh", "box_detections_per_img", "score_thresh",
           "detections_per_img")


def architectures() -> tuple[str, ...]:
    """Detection architectures with a registered COCO weights entry."""
    return tuple(weights.TORCHVISION_DETECTION_FILES)


def default_weights(architecture: str) -> str:
    return weights.torchvision_detection_weights(architecture)


#: Architectures whose published weights were trained with a frozen-BatchNorm backbone: torchvision
#: builds them so only when given weights, so an untrained build must be converted to match.
_FROZEN_BACKBONE_NORM = frozenset({
    "maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"})


def _freeze_norms(module) -> None:
    """Replace every BatchNorm2d below ``module`` by torchvision's FrozenBatchNorm2d (its default eps,
    as torchvision's trained construction passes it), recursively."""
    import torch
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_norms(child)


def build_detector(architecture: str, **overrides: Any):
    """The untrained torchvision network of ``architecture`` with COCO's 91 classes, in the
    structure torchvision gives it when it loads the published weights."""
    import torchvision

    if architecture not in architectures():
        raise ConfigError(f"unknown detection architecture {architecture!r}; known: {', '.join(architectures())}")
    unknown = sorted(set(overrides) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"detector {architecture}: unknown setting(s) {unknown}; known: {', '.join(TUNABLE)}")
    try:
        model = torchvision.models.get_model(architecture, weights=None, weights_backbone=None,
                                             num_classes=COCO_NUM_CLASSES, **overrides)
    except TypeError as exc:  # a setting this architecture does not take (score_thresh on Mask R-CNN)
        raise ConfigError(f"detector {architecture}: {one_line(exc)}") from None
    if architecture in _FROZEN_BACKBONE_NORM:
        _freeze_norms(model.backbone.body)
    return model


def read_state_dict(path: Path, what: str) -> dict:
    """The plain-tensor state dict at ``path`` (torchvision's training checkpoints nest it under
    ``model``); InputError (one line naming the file) otherwise."""
    return read_tensors(path, what, unwrap="model")


def load_state(module, path: Path, what: str) -> None:
    """Load the state dict at ``path`` into ``module``: the same keys and shapes, or one-line InputError."""
    state = read_state_dict(path, what)
    check_layout(path, what, state, module.state_dict())
    module.load_state_dict(state)


def load_detector(architecture: str, weights_name: str | None = None, *, device: str = "cpu", **overrides: Any):
    """The detector in eval mode on ``device``, its parameters frozen, with the weights of
    ``weights_name`` (default: the architecture's registered COCO file)."""
    name = weights_name or default_weights(architecture)
    weights.get_weight_file(name)
    model = build_detector(architecture, **overrides)
    load_state(model, weights.require(name), f"a torchvision {architecture} state dict")
    model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def has_masks(model) -> bool:
    """Whether the model predicts instance masks (Mask R-CNN)."""
    heads = getattr(model, "roi_heads", None)
    return heads is not None and getattr(heads, "mask_predictor", None) is not None
