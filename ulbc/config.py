"""Study configuration: JSON-schema validation with defaults, then checks only ulbc can make.

Snakemake's ``validate()`` fills the schema defaults; :func:`check_study` then resolves each method
against the codec registry, so an unknown codec, dataset source or out-of-range rate stops the
workflow before any job runs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .codecs import codec_class
from .errors import ConfigError
from .metrics import build_metrics
from .provenance import config_hash

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class RatePoint:
    label: str
    value: float


@dataclass(frozen=True)
class MethodPlan:
    name: str
    codec: str
    options: dict
    rates: tuple[RatePoint, ...]
    uses_gpu: bool
    mem_mb: int
    runtime: int
    gpu: int
    media: str = "image"  # "video": the codec codes clips (it reads the clip manifest)
    datasets: tuple[str, ...] | None = None  # None: every dataset of the study
    #: Weights-registry files the codec loads, per rate label, and other files its encoder reads.
    weights: dict[str, tuple[str, ...]] = field(default_factory=dict)
    checkpoints: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def runs_on(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets

    def rate_value(self, label: str) -> float:
        for point in self.rates:
            if point.label == label:
                return point.value
        raise ConfigError(f"method {self.name!r} has no rate point {label!r}")

    def job_hash(self, dataset_spec: dict, label: str, seed: int, items_per_job: int) -> str:
        """Hash of everything in the config that determines one shard's rows."""
        return config_hash(
            {"dataset": dataset_spec, "codec": self.codec, "options": self.options,
             "rate": self.rate_value(label), "seed": seed, "items_per_job": items_per_job}
        )


_YAML_TYPE_NAMES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def load_config(path: str | Path) -> dict:
    """Read a YAML config and fill in the schema's defaults (outside Snakemake, e.g. in tests)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: cannot read config ({' '.join(line.strip() for line in first[:3])})") from None
    # An empty file would otherwise become the schema's default study without a word.
    if config is None or config == {}:
        raise ConfigError(f"{path}: is empty: a study needs at least datasets and methods")
    if not isinstance(config, dict):
        kind = _YAML_TYPE_NAMES.get(type(config), type(config).__name__)
        raise ConfigError(f"{path}: a config must be a mapping of keys (datasets, methods, ...), not {kind}")
    return validate_with_schema(config, str(path))


def validate_with_schema(config: dict, name: str = "config") -> dict:
    from snakemake.utils import validate

    try:
        validate(config, schema=str(SCHEMA_PATH), set_default=True)
    except Exception as exc:  # snakemake wraps jsonschema errors in WorkflowError
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{name}: {' '.join(line.strip() for line in first[:3])}") from None
    return config


def plan_methods(config: dict) -> dict[str, MethodPlan]:
    """Resolve every method to its codec, options, rate grid and resources; raise on any problem."""
    defaults = config.get("resources", {})
    plans: dict[str, MethodPlan] = {}
    for name, entry in config["methods"].items():
        if "@" in name:
            raise ConfigError(f"methods.{name}: method names cannot contain '@' (the rows of a machine decode are "
                              f"named <method>@machine)")
        codec_name = entry.get("codec", name)
        try:
            cls = codec_class(codec_name)
            codec = cls(**entry.get("options", {}))
        except ConfigError as exc:
            raise ConfigError(f"methods.{name}: {exc}") from None
        reason = cls.availability()
        if reason:
            raise ConfigError(f"methods.{name}: codec {codec_name!r} is not available here: {reason}")
        rates = entry.get("rates") or list(cls.default_rates)
        points = []
        weight_files: dict[str, tuple[str, ...]] = {}
        checkpoint_files: dict[str, tuple[str, ...]] = {}
        for value in rates:
            if isinstance(value, str):  # "1e-3": YAML 1.1 leaves exponent numbers without a dot as text
                value = float(value)
            try:
                codec.check_rate(value)
                codec.check_resources(value)
            except ConfigError as exc:
                raise ConfigError(f"methods.{name}.rates: {exc}") from None
            points.append(RatePoint(codec.rate_label(value), float(value)))
            weight_files[points[-1].label] = tuple(codec.weight_names(value))
            checkpoint_files[points[-1].label] = tuple(codec.checkpoint_files(value))
        labels = [p.label for p in points]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"methods.{name}.rates: duplicate rate points {labels}")
        res = entry.get("resources", {})
        uses_gpu, job_mem_mb, job_runtime = codec.job_needs()
        plans[name] = MethodPlan(
            name=name,
            codec=codec_name,
            options=dict(entry.get("options", {})),
            rates=tuple(points),
            uses_gpu=uses_gpu,
            mem_mb=int(res.get("mem_mb", max(defaults.get("mem_mb", 2000), job_mem_mb))),
            runtime=int(res.get("runtime", max(defaults.get("runtime", 60), job_runtime))),
            gpu=int(res.get("gpu", 1 if uses_gpu else 0)),
            media=cls.media,
            datasets=tuple(entry["datasets"]) if entry.get("datasets") is not None else None,
            weights=weight_files,
            checkpoints=checkpoint_files,
        )
    return plans


def _check_local_path(name: str, entry: dict, *, video: bool) -> None:
    """A local dataset's path names a folder (a video dataset: or one file) or a glob matching a file,
    relative to the current directory as the manifest step reads it (:func:`ulbc.datasets.resolve_items`).
    Cheap: a glob stops at its first file, and folders are not listed (the workflow parses this on every job)."""
    from .datasets import _has_glob

    raw = entry.get("path")
    if not raw:
        raise ConfigError(f"datasets.{name}: source 'local' needs a 'path'")
    text = os.path.expanduser(str(raw))
    where = "" if os.path.isabs(text) else f" (relative to the current directory, {os.getcwd()})"
    if _has_glob(text):
        if not any(os.path.isfile(match) for match in glob.iglob(text, recursive=True)):
            raise ConfigError(f"datasets.{name}: no files match path {raw}{where}")
    elif not (os.path.isdir(text) or (video and os.path.isfile(text))):
        problem = "is not a folder" if os.path.exists(text) else "does not exist"
        raise ConfigError(f"datasets.{name}: path {raw} {problem}{where}")


def check_study(config: dict) -> dict[str, MethodPlan]:
    """Checks beyond the schema; returns the method plans the workflow wires jobs from."""
    from .clips import SAMPLE_CLIP_SOURCE, frame_options, is_video_entry
    from .datasets import BUILTIN_SOURCES, DATASETS

    plans = plan_methods(config)
    for name, entry in config["datasets"].items():
        source = entry["source"]
        if source not in BUILTIN_SOURCES and source not in DATASETS and source != SAMPLE_CLIP_SOURCE:
            known = ", ".join([*BUILTIN_SOURCES, SAMPLE_CLIP_SOURCE, *sorted(DATASETS)])
            raise ConfigError(f"datasets.{name}: unknown source {source!r}; known: {known}")
        if is_video_entry(entry):
            if entry.get("max_side"):
                raise ConfigError(f"datasets.{name}: max_side is for image datasets; a video dataset's frames "
                                  "are resized with video.size")
            try:
                frame_options(entry)
            except ConfigError as exc:
                raise ConfigError(f"datasets.{name}: {exc}") from None
        if source == "local":
            _check_local_path(name, entry, video=is_video_entry(entry))
        if "/" in name or name.startswith("."):
            raise ConfigError(f"datasets.{name}: dataset names cannot contain '/' or start with '.'")
    for plan in plans.values():
        unknown = [d for d in plan.datasets or () if d not in config["datasets"]]
        if unknown:
            raise ConfigError(f"methods.{plan.name}.datasets: {', '.join(unknown)} not among the study's datasets")
    if not config.get("fetch_weights", False):
        from . import weights

        for name, needed_by in study_weight_users(config, plans).items():
            try:
                weights.require_present(name)
            except weights.WeightsMissingError as exc:
                raise ConfigError(f"{needed_by}: {exc}") from None
    for name, entry in (config.get("reference_results") or {}).items():
        if name in plans:
            raise ConfigError(f"reference_results.{name}: is also a method of the study; name it apart")
        if entry["dataset"] not in config["datasets"]:
            raise ConfigError(f"reference_results.{name}: dataset {entry['dataset']!r} is not one of the study's")
        if not os.path.isfile(os.path.expanduser(entry["file"])):
            raise ConfigError(f"reference_results.{name}: file {entry['file']} does not exist")
    if config["anchor"] not in plans:
        raise ConfigError(f"anchor {config['anchor']!r} is not one of the study's methods: {', '.join(plans)}")
    return plans


def dataset_metric_options(config: dict, dataset: str) -> dict[str, dict]:
    """Metric options for one dataset: the study's ``metric_options`` with the dataset's own on top."""
    merged = {name: dict(values or {}) for name, values in (config.get("metric_options") or {}).items()}
    for name, values in (config["datasets"][dataset].get("metric_options") or {}).items():
        merged[name] = {**merged.get(name, {}), **(values or {})}
    return merged


def study_weight_users(config: dict, plans: dict[str, MethodPlan] | None = None) -> dict[str, str]:
    """Weight files the study loads -> who needs them first ('metrics', 'methods.NAME'): the
    metrics' on every dataset (checks each dataset's metric options), then the codecs'."""
    users: dict[str, str] = {}
    for dataset in config["datasets"]:
        try:
            metrics = build_metrics(config["metrics"], dataset_metric_options(config, dataset), device="cpu")
        except ConfigError as exc:
            raise ConfigError(f"datasets.{dataset}: {exc}") from None
        for metric in metrics:
            for name in metric.weight_names():
                users.setdefault(name, "metrics")
    for plan in (plan_methods(config) if plans is None else plans).values():
        for names in plan.weights.values():
            for name in names:
                users.setdefault(name, f"methods.{plan.name}")
    return users


def study_weight_names(config: dict, plans: dict[str, MethodPlan] | None = None) -> list[str]:
    """The weight files the study's metrics and codecs load, each once."""
    return list(study_weight_users(config, plans))


def read_reference_results(references: dict) -> pd.DataFrame | None:
    """The published curves a study names (``reference_results``), as external summary rows."""
    import pandas as pd

    from .compressai_json import read_compressai_json

    frames = []
    for name, entry in references.items():
        if not isinstance(entry, dict) or not entry.get("dataset") or not entry.get("file"):
            raise ConfigError(f"reference_results.{name}: needs a dataset and a file")
        frames.append(read_compressai_json(entry["file"], entry["dataset"], name))
    return pd.concat(frames, ignore_index=True) if frames else None
