"""torchvision's COCO detection models (Mask R-CNN, Faster R-CNN, RetinaNet, FCOS, SSD), built
without a download and loaded from the weights manager.

The network is built with ``weights=None, weights_backbone=None`` and 91 classes (torchvision's
COCO category ids, background 0), then given a state dict in torchvision's published layout: the
registered COCO file of the architecture (``torchvision-<arch>-coco``) or any other weights entry
(a fine-tuned model, the random file of a test). Keys and shapes must match exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .. import weights
from ..errors import ConfigError, InputError

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


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise ConfigError(f"detector {architecture}: {_one_line(exc)}") from None
    if architecture in _FROZEN_BACKBONE_NORM:
        _freeze_norms(model.backbone.body)
    return model


def read_state_dict(path: Path, what: str) -> dict:
    """The plain-tensor state dict at ``path``; InputError (one line naming the file) otherwise."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: not {what} (not a torch.save file of plain tensors)") from None
    except Exception as exc:  # torch reports unreadable files through many exception types
        raise InputError(f"{path}: not {what} ({_one_line(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision's training checkpoints
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: not {what} (expected a mapping of names to tensors)")
    return state


def load_state(module, path: Path, what: str) -> None:
    """Load the state dict at ``path`` into ``module``: the same keys and shapes, or one-line InputError."""
    state = read_state_dict(path, what)
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    extra = [key for key in state if key not in own]
    if missing or extra:
        parts = ([f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")]
                 if missing else []) + (
                [f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")] if extra else [])
        raise InputError(f"{path}: not {what} ({'; '.join(parts)})")
    for key, value in own.items():
        if state[key].shape != value.shape:
            shape = "x".join(map(str, state[key].shape)) or "scalar"
            raise InputError(f"{path}: not {what} ({key} is {shape}, expected {'x'.join(map(str, value.shape))})")
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
