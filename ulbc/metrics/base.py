"""The metric interface: what a metric measures, how its values are stored, summarised and plotted.

A metric is one class behind :class:`Metric`, registered by name (``ulbc.metrics.METRICS``). It
declares everything the rest of ulbc derives from the registry: the columns it writes, which way is
better, how an RD plot shows it, whether it is measured per item or per dataset, the weight files
it needs and whether it runs on the GPU. Two kinds exist:

* ``level = "item"``: :meth:`Metric.compute` maps one (reference, reconstruction) pair of 8-bit RGB
  images to its declared columns; the values land in the per-item result rows, and summaries take
  the mean over the ok items of a rate point.
* ``level = "dataset"``: distribution metrics such as FID and KID. :meth:`Metric.features` maps an
  item to feature arrays, which evaluate jobs store per shard; :meth:`Metric.from_features` turns
  the features of all the ok items of one (dataset, method, rate point) into its values. They are
  never a mean of per-item values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..codecs.base import Option, _short_repr
from ..errors import ConfigError, InputError

LEVELS = ("item", "dataset")
DIRECTIONS = ("higher", "lower")
DTYPES = ("float64", "int64", "string")


class MetricUndefined(InputError):
    """A metric has no meaningful value for this data (too few patches for FID, say); the value
    becomes NaN and the message goes into the table's note."""


@dataclass(frozen=True)
class Column:
    """One value a metric writes.

    ``direction`` says which way is better (``higher`` or ``lower``). ``rd`` columns are drawn as RD
    curves and BD-rated; others (an MSE, a patch count) are stored and summarised only. ``cap``
    replaces +inf (PSNR of a lossless item) when the column is averaged, so a lossless item keeps
    its rate point on the curve instead of turning the mean infinite; the summary counts such
    items in ``n_lossless``.
    """

    name: str
    label: str
    direction: str = "higher"
    rd: bool = True
    dtype: str = "float64"
    cap: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"column {self.name}: direction must be one of {DIRECTIONS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name}: dtype must be one of {DTYPES}")

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower"


def check_options(owner: str, specs: dict[str, Option], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``specs`` and completed with the defaults; one-line ConfigError."""
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ConfigError(f"{owner}: unknown option(s) {unknown}; known: {sorted(specs) or 'none'}")
    checked = {key: specs[key].normalise(value) for key, value in options.items()}
    for key, value in checked.items():
        if not specs[key].accepts(value):
            raise ConfigError(f"{owner}: option {key} must be {specs[key].requirement()}, got {_short_repr(value)}")
    return {**{key: spec.default for key, spec in specs.items()}, **checked}


class Metric:
    """Base class of every metric; subclasses set the class attributes and implement
    :meth:`compute` (item metrics) or :meth:`features` and :meth:`from_features` (dataset metrics)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    level: ClassVar[str] = "item"
    #: Item metrics: the row columns. Dataset metrics: the columns of the per-rate-point table.
    columns: ClassVar[tuple[Column, ...]] = ()
    #: Summary-only columns computed from the per-rate-point means by :meth:`derive`
    #: (the PSNR of the mean MSE, MS-SSIM in dB).
    derived: ClassVar[tuple[Column, ...]] = ()
    option_specs: ClassVar[dict[str, Option]] = {}
    uses_gpu: ClassVar[bool] = False

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.options = check_options(f"metric {self.name!r}", self.option_specs, options)
        self.device = device

    # -- what it needs ---------------------------------------------------------------------------
    def weight_names(self) -> tuple[str, ...]:
        """Names (in the weights registry, ``ulbc weights list``) of the files this configuration loads."""
        return ()

    def info(self) -> dict[str, Any]:
        """What produced the values, recorded with every row: the options, the device of a GPU
        metric and, for each weight file, its sha256."""
        record: dict[str, Any] = {"options": dict(self.options)}
        if self.uses_gpu:
            # GPU and CPU values agree only within a tolerance: which one made a number is recorded.
            record["device"] = self.device
        names = self.weight_names()
        if names:
            from .. import weights

            record["weights"] = {name: weights.file_sha256(name) for name in names}
        return record

    # -- item metrics --------------------------------------------------------------------------------
    def compute(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        raise NotImplementedError(f"metric {self.name!r} is measured per dataset, not per item")

    # -- dataset metrics ---------------------------------------------------------------------------
    def features_key(self) -> str:
        """Metrics whose features_key is equal share one feature computation per item (FID and KID
        on the same Inception patches)."""
        return self.name

    def features(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"metric {self.name!r} is measured per item")

    def from_features(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError(f"metric {self.name!r} is measured per item")

    # -- summaries -----------------------------------------------------------------------------------
    def derive(self, means: dict[str, Any]) -> dict[str, float]:
        """Values of :attr:`derived` from one rate point's means of :attr:`columns`."""
        return {}


def check_values(metric: Metric, values: dict[str, Any], declared: tuple[Column, ...]) -> dict[str, Any]:
    """A metric's output must be exactly its declared columns: an undeclared key would be dropped by
    the row schema without a word, a missing one would read as a measured NaN."""
    names = [c.name for c in declared]
    extra = [k for k in values if k not in names]
    missing = [n for n in names if n not in values]
    if extra or missing:
        parts = ([f"undeclared column(s) {', '.join(extra)}"] if extra else []) + (
            [f"no value for declared column(s) {', '.join(missing)}"] if missing else [])
        raise InputError(f"metric {metric.name!r} returned {'; '.join(parts)} (declared: {', '.join(names)})")
    return values

