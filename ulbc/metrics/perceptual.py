"""Learned perceptual distances on 8-bit RGB images: LPIPS and DISTS, through their reference packages.

Both run an ImageNet classification backbone from torchvision, whose weights come from ulbc's
weights manager (``ulbc weights list``), never from a download: the reference networks are built
with an untrained backbone and the ``features.N.*`` tensors of the torchvision state dict are then
copied into it. The small learned heads ship inside the packages' wheels and are recorded by sha256.

* ``lpips``: LPIPS v0.1 (Zhang et al. 2018) of the ``lpips`` package, backbone AlexNet, VGG16 or
  SqueezeNet 1.1 with its linear heads ``lpips/weights/v0.1/<net>.pth``. Input: RGB scaled to
  [-1, 1] (``x / 127.5 - 1``), as the package and GLC feed it. An image side shorter than the
  backbone's minimum (:data:`LPIPS_MIN_SIDE`) leaves a pooling layer without output; the value is
  then NaN.
* ``dists``: DISTS (Ding et al. 2020) of the ``DISTS_pytorch`` package, VGG16 backbone, its
  alpha/beta weights ``DISTS_pytorch/weights.pt``. Input: RGB scaled to [0, 1] (``x / 255``); the
  network applies the ImageNet normalisation itself.

Both are lower-is-better distances (0 for identical images). The networks run in float32 on the
metric's device (``cpu`` or ``cuda[:n]``), in eval mode and without gradients.
"""

from __future__ import annotations

import functools
import hashlib
import math
import types
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from .. import weights
from ..statedict import check_layout, read_tensors, shape_text
from ..errors import InputError, ToolMissingError
from ..options import Option
from . import register_metric
from .base import Column, Metric

#: LPIPS ``net`` -> (torchvision architecture, its default weights entry).
LPIPS_BACKBONES = {
    "alex": ("alexnet", "torchvision-alexnet"),
    "vgg": ("vgg16", "torchvision-vgg16"),
    "squeeze": ("squeezenet1_1", "torchvision-squeezenet1_1"),
}
#: The shortest image side each LPIPS backbone takes: below it one of its pooling layers would have
#: no output sample (measured on the lpips 0.1.4 networks; each side counts on its own).
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16, "squeeze": 17}
LPIPS_VERSION = "0.1"
DISTS_WEIGHTS = "torchvision-vgg16"


@functools.lru_cache(maxsize=None)
def _package_file_sha256(path: str) -> str:
    """sha256 of a file shipped inside an installed package (it does not change while we run)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_backbone(path: Path, architecture: str, stages) -> None:
    """Copy the ``features.N.*`` tensors of the torchvision ``architecture`` state dict at ``path``
    into ``stages``, a module whose children (slices, stages) hold torchvision's ``features[N]``
    layers under their index ``N``. The file's ``features`` keys must be exactly the ones these
    layers have, of the same shapes; other keys (the classifier) are not used and not read."""
    import torch

    what = f"a torchvision {architecture} state dict"
    state = read_tensors(path, what)
    targets = {f"features.{name}": param for _, stage in stages.named_children()
               for name, param in stage.named_parameters()}
    present = {key: value for key, value in state.items() if key.startswith("features.")}
    check_layout(path, what, present, targets)
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(present[key])


class _PerceptualNetwork(Metric):
    """An item metric computed by one network, built on first use and kept for the instance."""

    level = "item"
    uses_gpu = True

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device=device, **options)
        weights.get_weight_file(self.weight_names()[0])  # an unknown entry fails here, not at the first item
        self._network = None

    def weight_names(self) -> tuple[str, ...]:
        return (self.options["weights"],)

    def _build(self):
        raise NotImplementedError

    def network(self):
        if self._network is None:
            self._network = self._build().to(self.device).eval()
        return self._network

    def _tensor(self, image: np.ndarray):
        """(H, W, 3) uint8 -> (1, 3, H, W) float32 on the device, values 0..255."""
        import torch

        planar = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
        return planar.to(device=self.device, dtype=torch.float32)


@register_metric
class LPIPS(_PerceptualNetwork):
    name = "lpips"
    description = "LPIPS v0.1 (lpips package; AlexNet, VGG16 or SqueezeNet backbone; input in [-1, 1])"
    columns = (Column("lpips", "LPIPS, mean over items", direction="lower"),)
    option_specs = {
        "net": Option("alex", "choice", choices=tuple(LPIPS_BACKBONES), help="backbone network"),
        "weights": Option("default", "str",
                          help="weights entry of the backbone, a torchvision state dict of that architecture "
                               "(default: torchvision's ImageNet weights for net)"),
    }

    @property
    def architecture(self) -> str:
        return LPIPS_BACKBONES[self.options["net"]][0]

    def weight_names(self) -> tuple[str, ...]:
        chosen = self.options["weights"]
        return (LPIPS_BACKBONES[self.options["net"]][1] if chosen == "default" else chosen,)

    def linear_layers(self) -> Path:
        """The v0.1 linear heads of ``net``, as shipped in the lpips wheel."""
        import lpips

        return Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{self.options['net']}.pth"

    def info(self) -> dict[str, Any]:
        heads = self.linear_layers()
        return {**super().info(), "lpips": metadata.version("lpips"),
                "lpips_linear_layers": {"file": f"lpips/{heads.parent.parent.name}/{heads.parent.name}/{heads.name}",
                                        "sha256": _package_file_sha256(str(heads))}}

    def _build(self):
        import lpips

        heads = self.linear_layers()
        if not heads.is_file():
            raise ToolMissingError(f"{heads}: the lpips package's v{LPIPS_VERSION} linear layers are missing; "
                             "reinstall lpips")
        backbone = weights.require(self.weight_names()[0])
        with warnings.catch_warnings():
            # lpips passes torchvision the legacy pretrained=False argument, which only warns.
            warnings.simplefilter("ignore", UserWarning)
            network = lpips.LPIPS(net=self.options["net"], version=LPIPS_VERSION, pretrained=True, pnet_rand=True,
                                  model_path=str(heads), verbose=False)
        load_backbone(backbone, self.architecture, network.net)
        return network

    def compute(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        import torch

        if min(reference.shape[:2]) < LPIPS_MIN_SIDE[self.options["net"]]:
            return {"lpips": math.nan}
        network = self.network()
        with torch.no_grad():
            value = network(self._tensor(reference) / 127.5 - 1.0, self._tensor(reconstruction) / 127.5 - 1.0)
        return {"lpips": float(value.reshape(()).item())}


def _untrained_vgg16(**_ignored: Any):
    """torchvision's VGG16 with random weights: stands in for DISTS_pytorch's vgg16(pretrained=True)."""
    from torchvision.models import vgg16

    return vgg16(weights=None)


@register_metric
class DISTS(_PerceptualNetwork):
    name = "dists"
    description = "DISTS (DISTS_pytorch; VGG16 backbone; input in [0, 1])"
    columns = (Column("dists", "DISTS, mean over items", direction="lower"),)
    option_specs = {
        "weights": Option(DISTS_WEIGHTS, "str", help="weights entry of the VGG16 backbone (a torchvision state dict)"),
    }

    @staticmethod
    def alpha_beta() -> Path:
        """DISTS' learned alpha/beta weights. DISTS_pytorch reads its copy under ``sys.prefix`` (a
        data file of the wheel); the identical copy inside the package is found wherever it is installed."""
        from DISTS_pytorch import DISTS_pt

        return Path(DISTS_pt.__file__).parent / "weights.pt"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "dists_pytorch": metadata.version("DISTS_pytorch"),
                "dists_alpha_beta": {"file": "DISTS_pytorch/weights.pt",
                                     "sha256": _package_file_sha256(str(self.alpha_beta()))}}

    def _build(self):
        import torch
        from DISTS_pytorch import DISTS_pt

        backbone = weights.require(self.options["weights"])
        # Its constructor asks torchvision for the ImageNet VGG16 (a download): it gets an untrained one.
        with mock.patch.object(DISTS_pt, "models", types.SimpleNamespace(vgg16=_untrained_vgg16)):
            network = DISTS_pt.DISTS(load_weights=False)
        load_backbone(backbone, "vgg16", network)
        path = self.alpha_beta()
        state = read_tensors(path, "DISTS' alpha/beta weights")
        with torch.no_grad():
            for key in ("alpha", "beta"):
                target = getattr(network, key)
                if key not in state or state[key].shape != target.shape:
                    found = shape_text(state[key]) if key in state else "absent"
                    raise InputError(f"{path}: not DISTS' alpha/beta weights ({key} is {found}, "
                                     f"expected {shape_text(target)})")
                target.copy_(state[key])
        return network

    def compute(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        import torch

        network = self.network()
        with torch.no_grad():
            value = network(self._tensor(reference) / 255.0, self._tensor(reconstruction) / 255.0)
        return {"dists": float(value.reshape(()).item())}
