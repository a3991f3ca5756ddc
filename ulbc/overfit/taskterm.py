"""A machine-task term in the per-image loss of the overfitted codecs.

The loss of each image becomes ``MSE + λ · bits / pixels + λ_m · D(x̂, x)``, with ``D`` a distance
between a frozen ImageNet classifier's outputs on the decoded image x̂ and on the original x: the
latent representation is optimised at encode time under a rate-performance constraint, as in
"Learned image compression for both humans and machines via dynamic adaptation" (ICIP 2024), but
per image and without training a network. The decoder is unchanged: the file is an ordinary
coolchic / lottery file, and any decoder of the format reads it.

Distances (``D``):

* ``kl``: KL(softmax(logits(x)) ‖ softmax(logits(x̂))) in nats — what the classification-agreement
  metric's ``logit_kl`` measures, and the term that moves the top-1 class back;
* ``features``: the mean squared difference of the penultimate (pooled) features, divided by the
  mean square of the original's features, so that λ_m means the same for any network.

The classifier runs in float32 in eval mode with frozen parameters; the originals' outputs are
computed once. Models of one batch stay independent: the network has no batch statistics in eval
mode, so each image's term depends on its own decoded image only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DISTANCES = ("kl", "features")


@dataclass(frozen=True)
class TaskSpec:
    """What the task term is: which classifier (a name of ``ulbc.tasknets.classifiers``), its
    weights entry ("" for the classifier's default), the distance and its weight λ_m."""

    model: str
    weights: str
    distance: str
    weight: float

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"task distance must be one of {DISTANCES}, got {self.distance!r}")
        if not self.weight > 0:
            raise ValueError(f"the task term's weight must be positive, got {self.weight!r}")

    def build(self, device: torch.device) -> "TaskTerm":
        from ..tasknets.classifiers import load_classifier

        return TaskTerm(load_classifier(self.model, self.weights or None, device=str(device)), self.distance,
                        self.weight)

    def info(self) -> dict[str, Any]:
        return {"model": self.model, "weights": self.weights or "default", "distance": self.distance,
                "lambda_m": self.weight}


def _planar(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1], the overfitted models' layout -> (B, 3, H, W)."""
    return images.permute(0, 3, 1, 2)


class TaskTerm:
    """λ_m · D between the classifier's outputs on decoded images and on their originals."""

    def __init__(self, classifier, distance: str, weight: float) -> None:
        self.classifier, self.distance, self.weight = classifier, distance, float(weight)

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        x = _planar(images.clamp(0, 1))
        if self.distance == "kl":
            return torch.log_softmax(self.classifier(x).float(), dim=1)
        return self.classifier.features(x).float().flatten(1)

    @torch.no_grad()
    def reference(self, originals: torch.Tensor) -> torch.Tensor:
        return self.outputs(originals)

    def distance_to(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """D per image (B,), differentiable with respect to ``images``."""
        out = self.outputs(images)
        if self.distance == "kl":
            return (reference.exp() * (reference - out)).sum(dim=1)
        scale = reference.square().mean(dim=1).clamp_min(1e-12)
        return (out - reference).square().mean(dim=1) / scale

    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.weight * self.distance_to(images, reference)
