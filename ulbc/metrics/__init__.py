"""Metric registry: one module per metric, each a :class:`~ulbc.metrics.base.Metric` subclass.

The registry, not hand-kept lists, drives the row schema (:mod:`ulbc.schema`), summaries, BD-rate
tables, RD plots and the report. ``ulbc metrics`` lists what is registered.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError, InputError
from .base import Column, Metric, check_values

METRICS: dict[str, type[Metric]] = {}
#: Column name -> the metric that writes it, across the whole registry (a name is owned once).
_COLUMN_OWNERS: dict[str, str] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add a metric to the registry (its name and column names must be new)."""
    if not cls.name or cls.name in METRICS:
        raise ValueError(f"metric {cls.name!r}: missing or registered twice")
    if cls.level not in ("item", "dataset"):
        raise ValueError(f"metric {cls.name!r}: level must be 'item' or 'dataset'")
    for column in (*cls.columns, *cls.derived):
        owner = _COLUMN_OWNERS.get(column.name)
        if owner is not None and owner != cls.name:
            raise ValueError(f"metric {cls.name!r}: column {column.name!r} already belongs to metric {owner!r}")
    for column in (*cls.columns, *cls.derived):
        _COLUMN_OWNERS[column.name] = cls.name
    METRICS[cls.name] = cls
    return cls


def metric_class(name: str) -> type[Metric]:
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; registered metrics: {', '.join(sorted(METRICS))}") from None


def item_metrics() -> list[type[Metric]]:
    return [cls for cls in METRICS.values() if cls.level == "item"]


def dataset_metrics() -> list[type[Metric]]:
    return [cls for cls in METRICS.values() if cls.level == "dataset"]


def item_columns() -> list[Column]:
    """Every per-item column of the registry, in registration order: the metric part of the row schema."""
    return [column for cls in item_metrics() for column in cls.columns]


def all_columns() -> dict[str, Column]:
    """Every column (row, dataset-level and derived) by name."""
    return {column.name: column for cls in METRICS.values() for column in (*cls.columns, *cls.derived)}


def read_metric_info(text: object) -> dict[str, dict]:
    """A row's ``metric_info`` JSON as {metric: settings}; empty for rows without a readable one."""
    try:
        record = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def build_metrics(names: Iterable[str], options: dict[str, dict[str, Any]] | None = None, *,
                  device: str = "cpu") -> list[Metric]:
    """Instances of the named metrics with their options (``{metric: {option: value}}``). ``device``
    is the study's (auto, cpu, cuda, cuda:N): metrics that use the GPU run there, the others on the CPU."""
    from ..provenance import resolve_device

    options = options or {}
    names = list(dict.fromkeys(names))
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"metric_options: {', '.join(unknown)} not among the metrics measured ({', '.join(names)})")
    classes = [metric_class(name) for name in names]
    return [cls(device=resolve_device(device, cls.uses_gpu), **dict(options.get(cls.name) or {})) for cls in classes]


def check_pair(reference: np.ndarray, reconstruction: np.ndarray) -> None:
    if reference.shape != reconstruction.shape:
        raise InputError(f"reference {reference.shape} and reconstruction {reconstruction.shape} differ in shape")
    if reference.dtype != np.uint8 or reconstruction.dtype != np.uint8:
        raise InputError("metrics expect 8-bit images")


def compute_metrics(metrics: Iterable[Metric], reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """The per-item columns of the item metrics among ``metrics`` (instances, :func:`build_metrics`)."""
    check_pair(reference, reconstruction)
    row: dict[str, float] = {}
    for metric in metrics:
        if metric.level != "item":
            continue
        row.update(check_values(metric, metric.compute(reference, reconstruction), metric.columns))
    return row


from . import fidelity  # noqa: E402,F401  (psnr, ms-ssim and their Y / YUV variants)
from . import flip, perceptual  # noqa: E402,F401
from . import fid  # noqa: E402,F401  (fid, kid: patch features, per rate point)
from . import classification  # noqa: E402,F401  (ImageNet classifier agreement, per item)
from . import detection  # noqa: E402,F401  (COCO mAP against the reference's detections, per rate point)

__all__ = ["METRICS", "Column", "Metric", "build_metrics", "compute_metrics", "item_columns", "metric_class",
           "register_metric"]
