"""Features of dataset-level metrics: written per shard by evaluate jobs, reduced per rate point.

FID and KID compare two distributions of patch features, so no per-item value exists to average.
Each evaluate job stores the features of its ok items in one ``.npz`` file (no pickles; metadata as
a JSON array); :func:`dataset_metric_table` gathers the files of a study, concatenates them per
(dataset, method, rate point) and computes each metric once over the whole set.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .fsutil import atomic_path
from .metrics import METRICS, Metric, build_metrics
from .metrics.base import MetricUndefined, check_values
from .schema import DATASET_METRIC_SCHEMA, RATE_POINT_KEYS

FORMAT = "ulbc-features-1"
_META = "meta"


class FeatureCollector:
    """Features of the dataset-level ``metrics`` for the items of one shard; metrics with one
    :meth:`~ulbc.metrics.base.Metric.features_key` share one computation."""

    def __init__(self, metrics: Iterable[Metric]):
        self.extractors: dict[str, Metric] = {}
        for metric in metrics:
            self.extractors.setdefault(metric.features_key(), metric)
        self.parts: dict[str, dict[str, list[np.ndarray]]] = {key: defaultdict(list) for key in self.extractors}
        self.items: list[list] = []

    def add(self, item: str, reference: np.ndarray, reconstruction: np.ndarray) -> None:
        counts = {}
        for key, extractor in self.extractors.items():
            features = extractor.features(reference, reconstruction)
            lengths = {len(v) for v in features.values()}
            if len(lengths) != 1:
                raise InputError(f"metric {extractor.name!r}: feature arrays of item {item!r} differ in length")
            for side, values in features.items():
                self.parts[key][side].append(np.ascontiguousarray(values, dtype=np.float32))
            counts[key] = lengths.pop()
        self.items.append([item, counts])

    def write(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {}
        sides: dict[str, list[str]] = {}
        for index, (key, by_side) in enumerate(self.parts.items()):
            sides[key] = sorted(by_side)
            for side in sides[key]:
                arrays[f"f{index}_{side}"] = np.concatenate(by_side[side]) if by_side[side] else np.zeros((0, 0),
                                                                                                         np.float32)
        record = dict(meta, format=FORMAT, keys=list(self.parts), sides=sides, items=self.items)
        arrays[_META] = np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)


def _read_meta(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            if _META not in data.files:
                raise InputError(f"{path}: not a ulbc features file (no metadata)")
            meta = json.loads(data[_META].tobytes().decode())
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{path}: unreadable features file ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} features file")
    try:
        meta["metric_info"] = json.loads(meta["metric_info"])  # the rows' JSON text
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: features file without a readable metric_info record") from None
    return meta


def _read_arrays(path: str, meta: dict, key: str) -> dict[str, np.ndarray]:
    index = meta["keys"].index(key)
    expected = sum(int(counts.get(key, 0)) for _, counts in meta["items"])
    out = {}
    with np.load(path, allow_pickle=False) as data:
        for side in meta["sides"][key]:
            values = data[f"f{index}_{side}"]
            if values.ndim != 2 or values.shape[0] != expected:
                raise InputError(f"{path}: features {key}/{side} hold {values.shape[0]} rows, the items list {expected}")
            out[side] = values
    return out


def _joined_features(files: list[tuple[str, dict]], metric: str, key: str) -> dict[str, np.ndarray]:
    """The features ``key`` of every file of a rate point, concatenated per side."""
    missing = [path for path, meta in files if key not in meta["keys"]]
    if missing:
        raise InputError(f"{missing[0]}: holds no features for metric {metric!r} ({key})")
    parts = [_read_arrays(path, meta, key) for path, meta in files]
    return {side: np.concatenate([p[side] for p in parts if p[side].size] or [np.zeros((0, 0), np.float32)])
            for side in sorted(parts[0])}


def _metrics_of(meta: dict) -> list[Metric]:
    """The dataset-level metrics a features file was made for, with the options it records."""
    info = meta["metric_info"]
    names = [name for name in info if name in METRICS and METRICS[name].level == "dataset"]
    return build_metrics(names, {name: info[name].get("options", {}) for name in names}, device="cpu")


def dataset_metric_table(feature_paths: Iterable[str | os.PathLike], out_path: str | os.PathLike) -> int:
    """One row per (dataset, method, rate point) with its dataset-level metrics computed over the
    features of every shard, with the options the features files record; a value that cannot be
    estimated (too few patches) is NaN with the reason in ``note``. Returns the number of rows."""
    groups: dict[tuple, list[tuple[str, dict]]] = defaultdict(list)
    for path in map(os.fspath, feature_paths):
        meta = _read_meta(path)
        groups[tuple(meta[key] for key in RATE_POINT_KEYS)].append((path, meta))
    rows = []
    for point, files in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        digests = sorted({meta["code_digest"] for _, meta in files})
        infos = sorted({json.dumps(meta["metric_info"], sort_keys=True) for _, meta in files})
        where = f"{point[0]}/{point[1]}/{point[3]}"
        if len(digests) > 1 or len(infos) > 1:
            raise InputError(f"features of {where} come from different code or metric settings "
                             f"({len(digests)} code digest(s), {len(infos)} metric setting(s)); rerun its shards")
        row: dict[str, Any] = dict(zip(RATE_POINT_KEYS, point), n_items=sum(len(m["items"]) for _, m in files),
                                   metric_info=infos[0], code_digest=digests[0])
        notes = []
        joined_by_key: dict[str, dict[str, np.ndarray]] = {}  # FID and KID share one set of features
        for metric in _metrics_of(files[0][1]):
            key = metric.features_key()
            if key not in joined_by_key:
                joined_by_key[key] = _joined_features(files, metric.name, key)
            try:
                values = check_values(metric, metric.from_features(joined_by_key[key]), metric.columns)
            except MetricUndefined as exc:
                values = {column.name: math.nan if column.dtype == "float64" else None for column in metric.columns}
                notes.append(f"{metric.name}: {exc}")
            row.update(values)
        row["note"] = "; ".join(notes)
        rows.append(row)
    table = pa.Table.from_pylist([{name: row.get(name) for name in DATASET_METRIC_SCHEMA.names} for row in rows],
                                 schema=DATASET_METRIC_SCHEMA)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return len(rows)


def read_dataset_metrics(path: str | os.PathLike):
    """The per-rate-point table of dataset-level metrics as a pandas frame."""
    path = os.fspath(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable dataset-metrics file ({' '.join(str(exc).split())[:200]})") from None
    if table.schema.names != DATASET_METRIC_SCHEMA.names:
        raise InputError(f"{path}: columns differ from ulbc's dataset-metrics schema (written by another version?)")
    return table.to_pandas()
