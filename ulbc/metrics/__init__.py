"""Metric registry: name -> function(reference, reconstruction) -> {column: value}.

Each metric takes two (H, W, 3) uint8 RGB arrays of equal shape and returns the columns it fills in
the result row. Later issues add LPIPS, DISTS, FID on patches, FLIP and task accuracy here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ConfigError, InputError

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = fn
        return fn

    return wrap


def get_metric(name: str) -> MetricFn:
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; registered metrics: {', '.join(sorted(METRICS))}") from None


def check_pair(reference: np.ndarray, reconstruction: np.ndarray) -> None:
    if reference.shape != reconstruction.shape:
        raise InputError(f"reference {reference.shape} and reconstruction {reconstruction.shape} differ in shape")
    if reference.dtype != np.uint8 or reconstruction.dtype != np.uint8:
        raise InputError("metrics expect 8-bit images")


def compute_metrics(names, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    check_pair(reference, reconstruction)
    row: dict[str, float] = {}
    for name in names:
        row.update(get_metric(name)(reference, reconstruction))
    return row


from . import fidelity  # noqa: E402,F401  (registers psnr and ms-ssim)

__all__ = ["METRICS", "compute_metrics", "get_metric", "register_metric"]
