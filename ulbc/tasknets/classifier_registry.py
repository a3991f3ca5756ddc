"""The registry of ImageNet classifiers (names, default weights, preprocessing), without torch:
the metric registry reads it at import, and a job that never runs a classifier should not pay for
importing torch. The networks themselves are in :mod:`ulbc.tasknets.classifiers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: TensorFlow Lite's image normalisation, (v - 127) / 128 on 0..255, expressed on [0, 1].
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class ClassifierSpec:
    """One registered classifier: how to build the untrained network, which weights entry it
    loads by default, what a state dict of it is called in errors, and its preprocessing
    (shorter side resized to ``resize_size`` bilinearly with antialiasing, centre crop
    ``crop_size``, then ``(x - mean) / std`` per channel on [0, 1] values)."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    #: (network, normalised batch) -> (N, D) pooled features, the input of the last linear layer.
    pooled_features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    weights: str
    layout: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_size: int = 256
    crop_size: int = 224


def _mobilenet_v2() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None)


def _mobilenet_v2_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch

    # torchvision's MobileNetV2.forward up to its classifier.
    return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(network.features(x), 1), 1)


def _efficientnet_lite0() -> nn.Module:
    from .efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0()


def _efficientnet_lite0_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network.features(x)


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "mobilenet_v2": ClassifierSpec(
        name="mobilenet_v2", description="torchvision MobileNetV2, ImageNet-1k IMAGENET1K_V1",
        build=_mobilenet_v2, pooled_features=_mobilenet_v2_features, weights="torchvision-mobilenet_v2",
        layout="a torchvision mobilenet_v2 state dict", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "efficientnet_lite0": ClassifierSpec(
        name="efficientnet_lite0", description="EfficientNet-Lite0, ImageNet-1k, converted from TensorFlow",
        build=_efficientnet_lite0, pooled_features=_efficientnet_lite0_features, weights="efficientnet-lite0",
        layout="an EfficientNet-Lite0 state dict in efficientnet_pytorch's layout", mean=TF_LITE_MEAN,
        std=TF_LITE_STD),
}


def classifier_spec(name: str) -> ClassifierSpec:
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ConfigError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}") from None
