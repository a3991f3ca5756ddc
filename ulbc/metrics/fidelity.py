"""Pixel-fidelity metrics on 8-bit RGB: PSNR (with its MSE) and MS-SSIM."""

from __future__ import annotations

import math

import numpy as np

from . import register_metric

#: pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs more than (11 - 1) * 2**4 = 160
#: pixels on the shorter side; below that the metric is undefined and reported as NaN.
MS_SSIM_MIN_SIDE = 161


@register_metric("psnr")
def psnr_rgb(reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """PSNR over all RGB samples, peak 255. Identical images give +inf (MSE 0)."""
    diff = reference.astype(np.float64) - reconstruction.astype(np.float64)
    mse = float(np.mean(diff * diff))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    return {"mse_rgb": mse, "psnr_rgb": psnr}


@register_metric("ms-ssim")
def ms_ssim_rgb(reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """MS-SSIM (pytorch-msssim defaults, data range 255) averaged over R, G and B."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return {"ms_ssim_rgb": math.nan}
    import torch
    from pytorch_msssim import ms_ssim

    def to_tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0).to(torch.float64)

    with torch.no_grad():
        value = ms_ssim(to_tensor(reference), to_tensor(reconstruction), data_range=255.0, size_average=True)
    return {"ms_ssim_rgb": float(value)}
