"""Pixel-fidelity metrics on 8-bit images: PSNR and MS-SSIM on RGB, and on luma / YCbCr.

The Y'CbCr metrics convert both images with the matrix given by the ``matrix`` option (BT.709 by
default, as CompressAI and the DCVC family do; BT.601 as JPEG does) at the ``range`` given (full:
Y' in [0, 255]; limited: [16, 235], chroma [16, 240]), in float64, at 4:4:4 (no chroma
subsampling, no rounding), and measure against a peak of 255. Both choices are options, so they
are recorded with every row (``metric_info``).
"""

from __future__ import annotations

import math

import numpy as np

from ..options import Option
from . import register_metric
from .base import Column, Metric

#: pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs more than (11 - 1) * 2**4 = 160
#: pixels on the shorter side; below that the metric is undefined and reported as NaN.
MS_SSIM_MIN_SIDE = 161
_PEAK = 255.0
#: Averaging cap for the PSNR of lossless items (MSE 0): they stay on the curve at this value.
PSNR_CAP_DB = 100.0

#: (Kr, Kb) luma coefficients.
MATRICES = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}
_COLOUR_OPTIONS = {
    "matrix": Option("bt709", "choice", choices=tuple(MATRICES), help="RGB to Y'CbCr matrix"),
    "range": Option("full", "choice", choices=("full", "limited"),
                    help="full: Y' 0..255; limited (studio swing): Y' 16..235, Cb/Cr 16..240"),
}


def _psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(_PEAK**2 / mse)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def rgb_to_ycbcr(image: np.ndarray, matrix: str = "bt709", value_range: str = "full") -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float64 Y'CbCr in 8-bit code values (not rounded)."""
    kr, kb = MATRICES[matrix]
    rgb = image.astype(np.float64) / 255.0
    y = kr * rgb[..., 0] + (1.0 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb = (rgb[..., 2] - y) / (2.0 * (1.0 - kb))
    cr = (rgb[..., 0] - y) / (2.0 * (1.0 - kr))
    if value_range == "full":
        planes = (255.0 * y, 255.0 * cb + 128.0, 255.0 * cr + 128.0)
    else:
        planes = (16.0 + 219.0 * y, 128.0 + 224.0 * cb, 128.0 + 224.0 * cr)
    return np.stack(planes, axis=-1)


def _ms_ssim(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim defaults, data range 255) of (H, W, C) arrays, averaged over channels."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim

    def to_tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0).to(torch.float64)

    with torch.no_grad():
        value = ms_ssim(to_tensor(reference), to_tensor(reconstruction), data_range=_PEAK, size_average=True)
    return float(value)


def _db(value: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-10.0 * np.log10(1.0 - np.float64(value)))


@register_metric
class PSNR(Metric):
    name = "psnr"
    description = "PSNR over all RGB samples, peak 255 (with the MSE it comes from)"
    columns = (
        Column("mse_rgb", "MSE, RGB (mean over items)", direction="lower", rd=False),
        Column("psnr_rgb", "PSNR, RGB, mean over items (dB)", cap=PSNR_CAP_DB),
    )
    derived = (Column("psnr_of_mean_mse", "PSNR of the mean RGB MSE (dB)"),)

    def compute(self, reference, reconstruction):
        mse = _mse(reference, reconstruction)
        return {"mse_rgb": mse, "psnr_rgb": _psnr(mse)}

    def derive(self, means):
        mse = means["mse_rgb"]
        return {"psnr_of_mean_mse": _psnr(mse) if math.isfinite(mse) else math.nan}


@register_metric
class MSSSIM(Metric):
    name = "ms-ssim"
    description = "MS-SSIM (pytorch-msssim, 5 scales, data range 255) averaged over R, G and B"
    columns = (Column("ms_ssim_rgb", "MS-SSIM, RGB (mean over items)", rd=False),)
    derived = (Column("ms_ssim_db", "MS-SSIM (dB) = -10·log10(1 - MS-SSIM)", per_item=True),)

    def compute(self, reference, reconstruction):
        return {"ms_ssim_rgb": _ms_ssim(reference, reconstruction)}

    def derive(self, means):
        return {"ms_ssim_db": _db(means["ms_ssim_rgb"])}


class _YCbCrMetric(Metric):
    """A metric on both images converted to Y'CbCr with the configured matrix and range."""

    option_specs = _COLOUR_OPTIONS

    def _ycbcr(self, reference: np.ndarray, reconstruction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        matrix, value_range = self.options["matrix"], self.options["range"]
        return rgb_to_ycbcr(reference, matrix, value_range), rgb_to_ycbcr(reconstruction, matrix, value_range)


@register_metric
class PSNRY(_YCbCrMetric):
    name = "psnr-y"
    description = "PSNR of luma Y' (matrix and range as configured), peak 255"
    columns = (Column("psnr_y", "PSNR, Y', mean over items (dB)", cap=PSNR_CAP_DB),)

    def compute(self, reference, reconstruction):
        ref, rec = self._ycbcr(reference, reconstruction)
        return {"psnr_y": _psnr(_mse(ref[..., 0], rec[..., 0]))}


@register_metric
class PSNRYUV(_YCbCrMetric):
    name = "psnr-yuv"
    description = "(6·PSNR-Y + PSNR-Cb + PSNR-Cr) / 8, the video-coding weighting, with its components"
    columns = (
        Column("psnr_yuv", "PSNR-YUV (6Y+U+V)/8, mean over items (dB)", cap=PSNR_CAP_DB),
        Column("psnr_u", "PSNR, Cb, mean over items (dB)", rd=False, cap=PSNR_CAP_DB),
        Column("psnr_v", "PSNR, Cr, mean over items (dB)", rd=False, cap=PSNR_CAP_DB),
    )

    def compute(self, reference, reconstruction):
        ref, rec = self._ycbcr(reference, reconstruction)
        y, u, v = (_psnr(_mse(ref[..., c], rec[..., c])) for c in range(3))
        # A lossless plane (inf) makes the weighted sum inf: the item is lossless in that plane.
        return {"psnr_yuv": (6.0 * y + u + v) / 8.0, "psnr_u": u, "psnr_v": v}


@register_metric
class MSSSIMY(_YCbCrMetric):
    name = "ms-ssim-y"
    description = "MS-SSIM of luma Y' (matrix and range as configured), data range 255"
    columns = (Column("ms_ssim_y", "MS-SSIM, Y' (mean over items)", rd=False),)
    derived = (Column("ms_ssim_y_db", "MS-SSIM Y' (dB) = -10·log10(1 - MS-SSIM)", per_item=True),)

    def compute(self, reference, reconstruction):
        ref, rec = self._ycbcr(reference, reconstruction)
        return {"ms_ssim_y": _ms_ssim(ref[..., :1], rec[..., :1])}

    def derive(self, means):
        return {"ms_ssim_y_db": _db(means["ms_ssim_y"])}
