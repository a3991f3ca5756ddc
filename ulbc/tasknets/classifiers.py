"""ImageNet-1k classifiers run on decoded images, with their own preprocessing, differentiable end to end.

Registered in :data:`CLASSIFIERS`:

* ``mobilenet_v2``: torchvision's ``mobilenet_v2()`` with the IMAGENET1K_V1 weights
  (``torchvision-mobilenet_v2``, 71.9 % top-1). Preprocessing is exactly what
  ``MobileNet_V2_Weights.IMAGENET1K_V1.transforms()`` does to a float tensor: shorter side resized
  to 256 (bilinear, antialiased), centre crop 224, ImageNet mean (0.485, 0.456, 0.406) / std
  (0.229, 0.224, 0.225).
* ``efficientnet_lite0``: :class:`~ulbc.tasknets.efficientnet_lite.EfficientNetLite0` with the
  converted TensorFlow weights (``efficientnet-lite0``). Same resize and crop; normalisation
  mean 127/255, std 128/255 on [0, 1] input, i.e. ``(v - 127) / 128`` on 0..255, the values
  TensorFlow's ``efficientnet_lite_builder`` trained the Lite models with (MEAN_RGB / STDDEV_RGB).
  Measured with the real file on the 24 Kodak photos (kodim01..24), same resize and crop, against
  MobileNetV2 with its own preprocessing (its mean top-1 softmax probability there: 0.57):

  ===================  ===========================  ===============  ========================
  normalisation        top-1 = MobileNetV2's top-1  mean top-1 prob  stem BN: batch / running
                                                                     variance (median)
  ===================  ===========================  ===============  ========================
  mean 127 / std 128   15 of 24                     0.41             0.61
  ImageNet mean / std  13 of 24                     0.45             3.04
  ===================  ===========================  ===============  ========================

  Both give sensible predictions (padlock, valley, beacon, warplane, macaw, ... on the same
  photos), so the predictions alone hardly decide. The BatchNorm statistics do: with 127 / 128 the
  inputs of the BN layers have the spread they had in training (median |log(batch variance /
  running variance)| over the 49 BN layers 0.17, against 0.30 with the ImageNet constants, whose
  2.2x larger input scale gives the stem BN three times its trained variance).

Every model is built untrained and given a state dict from ulbc's weights manager (the registered
file of the model or any other entry in its layout); keys and shapes must match exactly, else a
one-line InputError names the file. :class:`ImageNetClassifier` keeps the network in eval mode with
frozen parameters; gradients still flow to its input, so a codec's encoder can be optimised
through it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import weights
from ..errors import InputError
from .classifier_registry import (  # noqa: F401 (re-exported: the registry lives without torch)
    CLASSIFIERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    ClassifierSpec,
    classifier_spec,
)
from .detectors import load_state


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in the label order of both models (torchvision's list)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


class ImageNetClassifier(nn.Module):
    """A frozen ImageNet classifier with its preprocessing.

    Input: a float tensor (N, 3, H, W) of RGB values in [0, 1], any size. :meth:`preprocess`,
    :meth:`forward` (the (N, 1000) logits) and :meth:`features` (the pooled features the last
    linear layer reads) are differentiable with respect to it. The network stays in eval mode even
    when a module holding this one is switched to training: BatchNorm must keep its ImageNet
    statistics, whatever the optimisation around it does.
    """

    def __init__(self, spec: ClassifierSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ImageNetClassifier":
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (shorter side), centre crop and normalise, as torchvision's ImageClassification
        transform does to a float tensor."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            what = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise InputError(f"classifier {self.spec.name}: expected a float tensor (N, 3, H, W) in [0, 1], got {what}")
        x = x.to(self.mean.dtype)
        x = TF.resize(x, [self.spec.resize_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        x = TF.center_crop(x, [self.spec.crop_size])
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.pooled_features(self.network, self.preprocess(x))


def load_classifier(name: str, weights_name: str | None = None, *, device: str = "cpu") -> ImageNetClassifier:
    """The classifier ``name`` of :data:`CLASSIFIERS` with the weights of ``weights_name`` (default:
    the model's registered entry), frozen and in eval mode on ``device``."""
    spec = classifier_spec(name)
    entry = weights_name or spec.weights
    weights.get_weight_file(entry)  # an unknown name: ConfigError before anything is built
    network = spec.build()
    load_state(network, weights.require(entry), spec.layout)
    return ImageNetClassifier(spec, network).to(device)
