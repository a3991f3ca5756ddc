"""The metric interface: what a metric measures, how its values are stored, summarised and plotted.

A metric is one class behind :class:`Metric`, registered by name (``ulbc.metrics.METRICS``). It
declares everything the rest of ulbc derives from the registry: the columns it writes, which way is
better, how an RD plot shows it, whether it is measured per item or per dataset, the weight files
it needs and whether it runs on the GPU. Two kinds exist:

* ``level = "item"``: :meth:`Metric.compute` maps one (reference, reconstruction) pair of 8-bit RGB
  images to its declared columns; the values land in the per-item result rows, and summaries take
  the mean over the ok items of a rate point.
* ``level = "dataset"``: distribution metrics such as FID and KID, and detection mAP.
  :meth:`Metric.item_features` maps an item to named arrays ("sides"), which evaluate jobs store per
  shard; :meth:`Metric.from_features` turns the features of all the ok items of one (dataset,
  method, rate point), a :class:`FeatureSet`, into its values. They are never a mean of per-item
  values. The sides of one item may differ in length (detections on the reference and on the
  reconstruction) unless the metric declares ``paired_features`` (one row per patch pair).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..options import Option, check_options  # noqa: F401 - re-exported

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
    items in ``n_lossless``. A ``per_item`` derived column is also meaningful for one item's
    values (MS-SSIM in dB), so per-item figures show it; the PSNR of the mean MSE is not (for one
    item it is that item's PSNR).
    """

    name: str
    label: str
    direction: str = "higher"
    rd: bool = True
    dtype: str = "float64"
    cap: float | None = None
    per_item: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"column {self.name}: direction must be one of {DIRECTIONS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name}: dtype must be one of {DTYPES}")

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower"


#: The array types a feature side is stored in (no objects, no pickles); other numbers are widened.
FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.uint8))


def feature_array(values: Any, what: str) -> np.ndarray:
    """``values`` as a contiguous array of one of :data:`FEATURE_DTYPES`, at least 1-D: bool becomes
    uint8, other integers int64, float16 float32; anything else is an InputError naming ``what``."""
    array = np.asarray(values)
    kind = array.dtype
    if kind == np.bool_:
        array = array.astype(np.uint8)
    elif kind == np.float16:
        array = array.astype(np.float32)
    elif kind.kind in "iu" and kind != np.uint8:
        array = array.astype(np.int64)
    if array.dtype not in FEATURE_DTYPES:
        raise InputError(f"{what}: features of dtype {kind} cannot be stored "
                         f"(one of {', '.join(map(str, FEATURE_DTYPES))})")
    if array.ndim == 0:
        raise InputError(f"{what}: a feature side must have one row per entry, got a scalar")
    return np.ascontiguousarray(array)


class FeatureSet(Mapping):
    """The features of a sequence of items: a mapping side -> array whose first axis holds the rows
    of every item, in item order, and the number of rows each item has in each side.

    A metric that only needs the pooled rows (FID) reads it as a plain mapping; one that needs each
    item's own rows and name (detection mAP matches an item to its annotated image) uses
    :attr:`items` and :meth:`rows`. Construction checks the counts against the arrays."""

    def __init__(self, arrays: Mapping[str, np.ndarray], items: Iterable[str],
                 counts: Mapping[str, Iterable[int]], what: str = "features") -> None:
        self.items: tuple[str, ...] = tuple(items)
        self._arrays = {side: feature_array(values, f"{what}: side {side!r}") for side, values in arrays.items()}
        if set(counts) != set(self._arrays):
            raise InputError(f"{what}: row counts for sides {sorted(counts)}, arrays for {sorted(self._arrays)}")
        self._offsets: dict[str, np.ndarray] = {}
        for side, array in self._arrays.items():
            per_item = np.asarray(list(counts[side]))
            if per_item.size and (per_item.dtype.kind not in "iu" or per_item.min() < 0):
                raise InputError(f"{what}: side {side!r} has row counts that are not non-negative integers")
            if len(per_item) != len(self.items):
                raise InputError(f"{what}: side {side!r} has {len(per_item)} row counts for {len(self.items)} items")
            total = int(per_item.sum()) if per_item.size else 0
            if total != array.shape[0]:
                raise InputError(f"{what}: side {side!r} holds {array.shape[0]} rows, its items list {total}")
            self._offsets[side] = np.concatenate([[0], np.cumsum(per_item, dtype=np.int64)]).astype(np.int64)

    @classmethod
    def from_items(cls, entries: Iterable[tuple[str, Mapping[str, Any]]], what: str = "features") -> "FeatureSet":
        """The set of ``(item, {side: array})`` entries, concatenated per side. Every entry has the
        same sides, and a side keeps one dtype and one row shape over all the items."""
        entries = [(item, {side: feature_array(values, f"{what}: item {item!r}, side {side!r}")
                           for side, values in sides.items()}) for item, sides in entries]
        if not entries:
            return cls({}, (), {}, what)
        names = sorted(entries[0][1])
        for item, sides in entries:
            if sorted(sides) != names:
                raise InputError(f"{what}: item {item!r} has sides {sorted(sides)}, the first item {names}")
        arrays = {}
        for side in names:
            parts = [sides[side] for _, sides in entries]
            layouts = {(p.dtype.str, p.shape[1:]) for p in parts}
            if len(layouts) > 1:
                raise InputError(f"{what}: side {side!r} changes dtype or row shape between items "
                                 f"({', '.join(sorted(f'{d} {s}' for d, s in layouts))})")
            arrays[side] = np.concatenate(parts)
        counts = {side: [len(sides[side]) for _, sides in entries] for side in names}
        return cls(arrays, [item for item, _ in entries], counts, what)

    def __getitem__(self, side: str) -> np.ndarray:
        return self._arrays[side]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def counts(self, side: str) -> np.ndarray:
        """Rows of ``side`` per item (int64)."""
        return np.diff(self._offsets[side])

    def rows(self, side: str, index: int) -> np.ndarray:
        """The rows of ``side`` that belong to item number ``index``."""
        start, stop = self._offsets[side][index], self._offsets[side][index + 1]
        return self._arrays[side][start:stop]


def as_feature_set(features: Mapping[str, Any]) -> FeatureSet:
    """``features`` as a :class:`FeatureSet`: a plain mapping (what :meth:`Metric.features` returns
    for one item) becomes a set of one unnamed item."""
    if isinstance(features, FeatureSet):
        return features
    return FeatureSet.from_items([("", features)])


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
    #: How well a vision model works on the decoded image (classification, detection), rather than
    #: how it looks: the task BD-rate table (:func:`ulbc.rd.task_table`) reports its RD columns.
    task: ClassVar[bool] = False

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
    #: Dataset metrics: every side of an item has the same number of rows (FID's patch pairs); the
    #: collector refuses an item whose sides differ. Detections differ per side and set it False.
    paired_features: ClassVar[bool] = True

    def features_key(self) -> str:
        """Metrics whose features_key is equal share one feature computation per item (FID and KID
        on the same Inception patches)."""
        return self.name

    def features(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of one item, by side name; each has one row per entry along its first axis."""
        raise NotImplementedError(f"metric {self.name!r} is measured per item")

    def item_features(self, item: str, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, np.ndarray]:
        """What evaluate jobs store for the item ``item`` (its manifest key): :meth:`features`,
        unless the metric needs the item's identity (to check it against annotations early)."""
        return self.features(reference, reconstruction)

    def from_features(self, features: FeatureSet) -> dict[str, Any]:
        """The values from the features of every ok item of a rate point: a :class:`FeatureSet`
        (a mapping side -> pooled rows, which also knows each item's name and rows)."""
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

