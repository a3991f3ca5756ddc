"""FID and KID over image patches: distribution metrics of one (dataset, method, rate point).

Protocol (HiFiC's FID/256, as MS-ILLM, GLC and NeuralCompression's ``update_patch_fid`` measure it):

* Each image, reference and reconstruction alike, is cut into non-overlapping ``patch_size`` ×
  ``patch_size`` patches on a grid anchored at the top-left corner; a partial patch at the right or
  bottom edge is dropped. A second grid follows on the image cropped by ``patch_size // 2`` at the
  top and left. As in NeuralCompression, the shifted grid is taken only when both sides are at least
  1.5 × ``patch_size``; a 768×512 image at 256 gives 3·2 + 2·1 = 8 patches, an image smaller than one
  patch gives none.
* The uint8 patches go as they are to torch-fidelity's ``FeatureExtractorInceptionV3`` (the
  TensorFlow FID Inception, which resizes to 299×299 itself); its 2048-d pool features of every
  reference patch form the "real" set and those of the reconstruction the "fake" set.
* FID and KID are computed once over the features of all the ok items of a rate point, with
  torch-fidelity's own statistics in float64 — never as a mean of per-item values.

Estimation limits, recorded with the result as options:

* FID needs ``min_patches`` patches per side (default 2048, the feature dimension): with fewer the
  2048×2048 covariance is singular and the value mostly reflects the sample size. Below it the value
  is undefined (NaN, with the reason in the table's note). Small sets (Kodak at ``patch_size`` 64, as
  GLC reports) reach it; lower the option knowingly.
* KID averages the unbiased MMD² (cubic polynomial kernel) over ``subsets`` random subsets of
  ``subset_size`` patches per side, so it needs at least ``subset_size`` patches. The subsets are
  drawn by NumPy from the fixed ``seed``, so the same features always give the same value.
  ``kid_std`` is the spread over the subsets.

Both metrics declare the same :meth:`features_key` for the same weights and patch size, so one
Inception pass over the patches serves both.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .. import weights
from ..errors import InputError
from ..options import Option
from . import register_metric
from .base import Column, Metric, MetricUndefined

#: torch-fidelity's name of the extractor and the layer read: the 2048-d average-pool features.
INCEPTION_NAME = "inception-v3-compat"
FEATURE_LAYER = "2048"
FEATURE_DIM = 2048
#: torch-fidelity's default seed of the KID subsets.
KID_SEED = 2020
_PATCH_SIZE_MIN = 16

_COMMON_OPTIONS = {
    "patch_size": Option(256, "int", low=_PATCH_SIZE_MIN, help="side of the square patches (pixels)"),
    "batch_size": Option(64, "int", low=1, help="patches per Inception forward pass"),
    "weights": Option("inception-v3-fid", "str", help="weights entry of the Inception network (ulbc weights list)"),
}


# -- patches ------------------------------------------------------------------------------------------
def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"patch metrics expect (H, W, 3) uint8 RGB images, got {what}")


def _tiles(image: np.ndarray, patch_size: int) -> np.ndarray:
    """(rows·cols, 3, P, P) from the grid anchored at the top-left corner; partial patches dropped."""
    rows, cols = image.shape[0] // patch_size, image.shape[1] // patch_size
    whole = image[: rows * patch_size, : cols * patch_size]
    blocks = whole.reshape(rows, patch_size, cols, patch_size, 3).transpose(0, 2, 4, 1, 3)
    return blocks.reshape(rows * cols, 3, patch_size, patch_size)


def has_shifted_grid(height: int, width: int, patch_size: int) -> bool:
    """Whether the half-patch-shifted grid is taken: both sides at least 1.5 patches (NeuralCompression's rule)."""
    return 2 * height >= 3 * patch_size and 2 * width >= 3 * patch_size


def patch_count(height: int, width: int, patch_size: int) -> int:
    """Patches that :func:`patch_grid` cuts from an image of this size."""
    count = (height // patch_size) * (width // patch_size)
    if has_shifted_grid(height, width, patch_size):
        shift = patch_size // 2
        count += ((height - shift) // patch_size) * ((width - shift) // patch_size)
    return count


def patch_grid(image: np.ndarray, patch_size: int) -> np.ndarray:
    """The patches of one (H, W, 3) uint8 image as a contiguous uint8 array (n, 3, P, P): the
    top-left grid, then the grid shifted by P // 2 in both directions (see the module docstring)."""
    _check_image(image)
    if patch_size < 1:
        raise InputError(f"patch size must be positive, got {patch_size}")
    parts = [_tiles(image, patch_size)]
    if has_shifted_grid(image.shape[0], image.shape[1], patch_size):
        shift = patch_size // 2
        parts.append(_tiles(image[shift:, shift:], patch_size))
    return np.ascontiguousarray(np.concatenate(parts))


# -- the feature network ---------------------------------------------------------------------------------
def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_inception(path: str | Path, device: str = "cpu"):
    """torch-fidelity's FID InceptionV3 with the state dict at ``path``, on ``device``, in eval
    mode; InputError (one line naming the file) when the file is not that network's state dict."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    # Read once without unpickling code first: torch-fidelity itself loads with weights_only=False.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text here suggests weights_only=False, which does not apply
        raise InputError(f"{path}: not a PyTorch state dict of the FID InceptionV3 (no torch.save file of plain "
                         "tensors)") from None
    except Exception as exc:  # torch reports unreadable files through many exception types
        raise InputError(f"{path}: not a PyTorch state dict of the FID InceptionV3 ({_one_line(exc)})") from None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: not a PyTorch state dict of the FID InceptionV3 (expected a mapping of tensors)")
    del state
    try:
        network = FeatureExtractorInceptionV3(INCEPTION_NAME, [FEATURE_LAYER], feature_extractor_weights_path=str(path))
    except (RuntimeError, KeyError, ValueError) as exc:  # load_state_dict: missing / unexpected keys, shapes
        raise InputError(f"{path}: not torch-fidelity's InceptionV3 layout ({_one_line(exc)})") from None
    return network.to(device).eval()


class _PatchFeatures(Metric):
    """Inception features of the patch pairs of one item, shared by FID and KID."""

    level = "dataset"
    uses_gpu = True

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device=device, **options)
        weights.get_weight_file(self.options["weights"])  # an unknown name fails here, not at the first item
        self._network = None

    def weight_names(self) -> tuple[str, ...]:
        return (self.options["weights"],)

    def info(self) -> dict[str, Any]:
        import torch_fidelity

        return {**super().info(), "torch_fidelity": torch_fidelity.__version__}

    def features_key(self) -> str:
        return f"inception-v3-{FEATURE_LAYER}/{self.options['weights']}/patches-{self.options['patch_size']}"

    def _inception(self):
        if self._network is None:
            self._network = load_inception(weights.require(self.options["weights"]), self.device)
        return self._network

    def _embed(self, patches: np.ndarray) -> np.ndarray:
        import torch

        network = self._inception()
        size = self.options["batch_size"]
        out = []
        with torch.no_grad():
            for start in range(0, len(patches), size):
                batch = torch.from_numpy(patches[start : start + size]).to(self.device)
                out.append(network(batch)[0].to("cpu", torch.float32).numpy())
        return np.concatenate(out)

    def features(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        if reference.shape != reconstruction.shape:
            raise InputError(f"reference {reference.shape} and reconstruction {reconstruction.shape} differ in shape")
        size = self.options["patch_size"]
        real, fake = patch_grid(reference, size), patch_grid(reconstruction, size)
        if len(real) == 0:
            empty = np.zeros((0, FEATURE_DIM), np.float32)
            return {"real": empty, "fake": empty.copy()}
        # One pass over both sides: the batches stay full for items with few patches.
        both = self._embed(np.concatenate([real, fake]))
        return {"real": both[: len(real)], "fake": both[len(real) :]}

    def _sides(self, features: dict[str, np.ndarray]):
        """(real, fake) as float64 torch tensors, and the patch count per side."""
        import torch

        missing = [side for side in ("real", "fake") if side not in features]
        if missing:
            raise InputError(f"metric {self.name!r}: no {' or '.join(missing)} features")
        real, fake = (np.asarray(features[side]) for side in ("real", "fake"))
        if len(real) != len(fake):
            raise InputError(f"metric {self.name!r}: {len(real)} real but {len(fake)} fake patch features")
        count = len(real)
        if count and (real.ndim != 2 or real.shape != fake.shape):
            raise InputError(f"metric {self.name!r}: feature arrays of shapes {real.shape} and {fake.shape}, "
                             "expected two equal [patches, features]")
        return torch.from_numpy(real.astype(np.float64)), torch.from_numpy(fake.astype(np.float64)), count


@register_metric
class FID(_PatchFeatures):
    name = "fid"
    description = ("Fréchet Inception Distance over patch_size patches (two grids per image, HiFiC's FID/256), "
                   "per rate point")
    columns = (
        Column("fid", "FID over patches (per rate point)", direction="lower"),
        # More patches give a steadier estimate.
        Column("fid_patches", "patches per side behind FID", direction="higher", rd=False, dtype="int64"),
    )
    option_specs = {
        **_COMMON_OPTIONS,
        "min_patches": Option(FEATURE_DIM, "int", low=2,
                              help="fewest patches per side for a value (below 2048 the covariance is singular)"),
    }

    def from_features(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

        real, fake, count = self._sides(features)
        needed = self.options["min_patches"]
        if count < needed:
            raise MetricUndefined(f"FID from {count} patches: at least {needed} needed (option min_patches)")
        value = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake),
                                         verbose=False)[KEY_METRIC_FID]
        return {"fid": float(value), "fid_patches": count}


@register_metric
class KID(_PatchFeatures):
    name = "kid"
    description = ("Kernel Inception Distance (unbiased MMD², cubic kernel) over patch_size patches, mean and "
                   "spread over random subsets, per rate point")
    columns = (
        Column("kid", "KID over patches, mean over subsets (per rate point)", direction="lower"),
        Column("kid_std", "KID, standard deviation over subsets", direction="lower", rd=False),
        Column("kid_patches", "patches per side behind KID", direction="higher", rd=False, dtype="int64"),
    )
    option_specs = {
        **_COMMON_OPTIONS,
        "subset_size": Option(1000, "int", low=2, help="patches per side in each KID subset"),
        "subsets": Option(100, "int", low=1, help="number of random subsets averaged"),
        "seed": Option(KID_SEED, "int", low=0, high=2**32 - 1, help="seed of the subset draws (NumPy RandomState)"),
    }

    def from_features(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

        real, fake, count = self._sides(features)
        needed = self.options["subset_size"]
        if count < needed:
            raise MetricUndefined(f"KID from {count} patches: at least {needed} needed (option subset_size)")
        # The kernel is spelled out so that a change of torch-fidelity's defaults cannot change the value.
        result = kid_features_to_metric(real, fake, kid_subsets=self.options["subsets"], kid_subset_size=needed,
                                        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                        kid_kernel_poly_coef0=1, rng_seed=self.options["seed"], verbose=False)
        return {"kid": float(result[KEY_METRIC_KID_MEAN]), "kid_std": float(result[KEY_METRIC_KID_STD]),
                "kid_patches": count}
