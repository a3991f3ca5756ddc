"""Features of dataset-level metrics: written per shard by evaluate jobs, reduced per rate point.

FID and KID compare two distributions of patch features, and detection mAP ranks every detection
of a rate point at once, so no per-item value exists to average. Each evaluate job stores the
features of its ok items in one ``.npz`` file (no pickles; metadata as a JSON array);
:func:`dataset_metric_table` gathers the files of a study, joins them per (dataset, method, rate
point) into one :class:`~ulbc.metrics.base.FeatureSet` and computes each metric once over the
whole set.

File layout (``ulbc-features-3``): one part per rate point the shard measured (one, or two for a
codec with a machine decode: ``<method>`` and ``<method>@machine``). Per part, features key
(metrics sharing one computation) and side, one array ``p<part>_f<key index>_<side>`` holds the
rows of every item in item order, of one of the :data:`~ulbc.metrics.base.FEATURE_DTYPES`; the
part's metadata gives its rate point and lists the items in that order with their rows per key and
side (``[item, {key: {side: rows}}]``), which are checked against the arrays before any is used.
The sides of one item may differ in length (detections on the reference and on the reconstruction).
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
from .metrics.base import FeatureSet, MetricUndefined, check_values
from .schema import DATASET_METRIC_SCHEMA, RATE_POINT_KEYS

FORMAT = "ulbc-features-3"
#: Earlier layouts, named in the error that asks for a rerun.
_OLD_FORMATS = ("ulbc-features-1", "ulbc-features-2")
_META = "meta"


class FeatureCollector:
    """Features of the dataset-level ``metrics`` for the items of one shard; metrics with one
    :meth:`~ulbc.metrics.base.Metric.features_key` share one computation."""

    def __init__(self, metrics: Iterable[Metric]):
        self.extractors: dict[str, Metric] = {}
        for metric in metrics:
            self.extractors.setdefault(metric.features_key(), metric)
        self.entries: dict[str, list[tuple[str, dict[str, np.ndarray]]]] = {key: [] for key in self.extractors}
        self.items: list[list] = []

    def add(self, item: str, reference: np.ndarray, reconstruction: np.ndarray) -> None:
        counts = {}
        for key, extractor in self.extractors.items():
            what = f"metric {extractor.name!r}"
            features = FeatureSet.from_items([(item, extractor.item_features(item, reference, reconstruction))],
                                             what=what)
            rows = {side: int(features.counts(side)[0]) for side in features}
            if extractor.paired_features and len(set(rows.values())) > 1:
                raise InputError(f"{what}: feature arrays of item {item!r} differ in length")
            self.entries[key].append((item, {side: features[side] for side in features}))
            counts[key] = rows
        self.items.append([item, counts])

    def part(self, index: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """This collector as part ``index`` of a file: its arrays added to ``arrays``, its record returned."""
        sides: dict[str, list[str]] = {}
        for key_index, (key, entries) in enumerate(self.entries.items()):
            joined = FeatureSet.from_items(entries, what=f"metric {self.extractors[key].name!r}")
            sides[key] = sorted(joined)
            for side in sides[key]:
                arrays[f"p{index}_f{key_index}_{side}"] = joined[side]
        return dict(meta, keys=list(self.entries), sides=sides, items=self.items)

    def write(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        write_features(path, [(self, meta)])


def write_features(path: str | os.PathLike, parts: list[tuple[FeatureCollector, dict[str, Any]]]) -> None:
    """One features file holding each (collector, rate-point record) as a part, atomically."""
    arrays: dict[str, np.ndarray] = {}
    records = [collector.part(index, meta, arrays) for index, (collector, meta) in enumerate(parts)]
    arrays[_META] = np.frombuffer(json.dumps({"format": FORMAT, "parts": records}, sort_keys=True).encode(),
                                  dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _check_layout(path: str, meta: dict) -> None:
    """The keys, sides and items lists have the shapes the reader relies on."""
    keys, sides, items = meta.get("keys"), meta.get("sides"), meta.get("items")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and isinstance(sides, dict)
            and set(sides) == set(keys)
            and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in sides.values())):
        raise InputError(f"{path}: features file with a malformed keys/sides record")
    if not isinstance(items, list):
        raise InputError(f"{path}: features file with a malformed items list")
    for entry in items:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], dict)):
            raise InputError(f"{path}: features file with a malformed items list (entry {_short(entry)})")
        for key, rows in entry[1].items():
            if key not in sides or not isinstance(rows, dict) or sorted(rows) != sorted(sides[key]) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in rows.values()):
                raise InputError(f"{path}: item {entry[0]!r} lists malformed row counts for {key} "
                                 f"({_short(rows)}; sides {sides.get(key)})")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_parts(path: str) -> list[dict]:
    """The checked part records of a features file, each with its array ``prefix``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if _META not in data.files:
                raise InputError(f"{path}: not a ulbc features file (no metadata)")
            meta = json.loads(data[_META].tobytes().decode())
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{path}: unreadable features file ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(meta, dict) and meta.get("format") in _OLD_FORMATS:
        raise InputError(f"{path}: a {meta['format']} features file of an older ulbc, not {FORMAT}; rerun its shard")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} features file")
    parts = meta.get("parts")
    if not (isinstance(parts, list) and parts and all(isinstance(part, dict) for part in parts)):
        raise InputError(f"{path}: features file with a malformed parts list")
    for index, part in enumerate(parts):
        missing = [key for key in (*RATE_POINT_KEYS, "code_digest") if key not in part]
        if missing:
            raise InputError(f"{path}: features part {index} has no {missing[0]}")
        try:
            part["metric_info"] = json.loads(part["metric_info"])  # the rows' JSON text
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: features file without a readable metric_info record") from None
        _check_layout(path, part)
        part["prefix"] = f"p{index}_"
    return parts


def _read_features(path: str, meta: dict, key: str) -> FeatureSet:
    """The features ``key`` of one file, the items' row counts checked against the arrays."""
    index = meta["keys"].index(key)
    items = [(item, counts[key]) for item, counts in meta["items"] if key in counts]
    if len(items) != len(meta["items"]):
        raise InputError(f"{path}: {len(meta['items']) - len(items)} item(s) without row counts for {key}")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for side in meta["sides"][key]:
                name = f"{meta['prefix']}f{index}_{side}"
                if name not in data.files:
                    raise InputError(f"{path}: features {key}/{side} are listed but not stored")
                arrays[side] = data[name]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: unreadable features {key} ({' '.join(str(exc).split())[:200]})") from None
    counts = {side: [rows[side] for _, rows in items] for side in arrays}
    return FeatureSet(arrays, [item for item, _ in items], counts, what=f"{path}: features {key}")


def _joined_features(files: list[tuple[str, dict]], metric: str, key: str) -> FeatureSet:
    """The features ``key`` of every file of a rate point, joined in file order."""
    missing = [path for path, meta in files if key not in meta["keys"]]
    if missing:
        raise InputError(f"{missing[0]}: holds no features for metric {metric!r} ({key})")
    parts = [(path, _read_features(path, meta, key)) for path, meta in files]
    # A shard without ok items stores no sides; the others must agree on them and on each side's layout.
    with_items = [(path, part) for path, part in parts if part.items]
    if not with_items:
        return FeatureSet({}, (), {}, what=f"features {key}")
    first_path, first = with_items[0]
    sides = sorted(first)
    for path, part in with_items[1:]:
        if sorted(part) != sides:
            raise InputError(f"{path}: features {key} have sides {sorted(part)}, {first_path} {sides}")
        for side in sides:
            if (part[side].dtype, part[side].shape[1:]) != (first[side].dtype, first[side].shape[1:]):
                raise InputError(f"{path}: features {key}/{side} are {part[side].dtype} rows of "
                                 f"{part[side].shape[1:]}, {first_path} {first[side].dtype} rows of "
                                 f"{first[side].shape[1:]}")
    arrays = {side: np.concatenate([part[side] for _, part in with_items]) for side in sides}
    counts = {side: np.concatenate([part.counts(side) for _, part in with_items]) for side in sides}
    items = [item for _, part in with_items for item in part.items]
    return FeatureSet(arrays, items, counts, what=f"features {key}")


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
        for meta in _read_parts(path):
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
        joined_by_key: dict[str, FeatureSet] = {}  # FID and KID share one set of features
        for metric in _metrics_of(files[0][1]):
            key = metric.features_key()
            if key not in joined_by_key:
                joined_by_key[key] = _joined_features(files, metric.name, key)
            try:
                if not joined_by_key[key].items:
                    raise MetricUndefined("no ok item at this rate point")
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
