"""NVIDIA FLIP (LDR): the mean of the per-pixel FLIP error map, through NVIDIA's ``flip_evaluator``.

``flip_evaluator.evaluate`` takes LDR images as float arrays in [0, 1] holding sRGB-encoded values
(it linearises them itself when ``inputsRGB`` is true, its default for LDR). It also accepts a uint8
array without complaint but then treats the code values 0..255 as if they were in [0, 1], which
gives a different, meaningless error; so both images go in as ``uint8 / 255`` in float32.

The one option is the viewing condition, in pixels per degree of visual angle. 67 PPD (a 0.7 m wide
4K display seen from 0.7 m) is the value of the FLIP paper; it is passed explicitly, so the value
does not depend on the package's own default (which it derives from the same display, 67.02).
"""

from __future__ import annotations

import contextlib
import io
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..options import Option
from . import register_metric
from .base import Column, Metric

DEFAULT_PIXELS_PER_DEGREE = 67.0


def _srgb_unit(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 sRGB in [0, 1], C-contiguous, as flip_evaluator reads LDR input."""
    return np.ascontiguousarray(image, dtype=np.float32) / np.float32(255.0)


@register_metric
class FLIP(Metric):
    """Mean LDR-FLIP error (0 = identical, 1 = maximal), lower is better."""

    name = "flip"
    description = "NVIDIA FLIP, LDR, mean of the error map (flip_evaluator; sRGB input in [0, 1])"
    columns = (Column("flip", "FLIP (LDR), mean over items", direction="lower"),)
    option_specs = {
        "pixels_per_degree": Option(DEFAULT_PIXELS_PER_DEGREE, "float", low=0.0, low_open=True,
                                    help="observer's pixels per degree of visual angle (67: the FLIP paper)"),
    }

    def info(self) -> dict[str, Any]:
        return {**super().info(), "flip_evaluator": metadata.version("flip-evaluator")}

    def compute(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        import flip_evaluator

        parameters = {"ppd": float(self.options["pixels_per_degree"])}
        printed = io.StringIO()
        try:
            # The package prints its complaint and calls sys.exit on arguments it refuses.
            with contextlib.redirect_stdout(printed):
                _, mean_error, _ = flip_evaluator.evaluate(_srgb_unit(reference), _srgb_unit(reconstruction), "LDR",
                                                           applyMagma=False, computeMeanError=True,
                                                           parameters=parameters)
        except SystemExit:
            reason = " ".join(printed.getvalue().replace("Exiting.", "").split()) or "no reason given"
            raise ConfigError(f"metric 'flip': flip_evaluator refused its arguments {parameters}: {reason}") from None
        return {"flip": float(mean_error)}
