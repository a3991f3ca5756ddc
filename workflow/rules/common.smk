# Module-level code runs on every Snakemake start (and in every cluster job): keep it O(1) in items.
import functools
import json
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import ulbc
from ulbc.clips import is_video_entry
from ulbc.config import check_study, dataset_metric_options, study_weight_names
from ulbc.datasets import describe_source
from ulbc.errors import UlbcError
from ulbc.manifest import num_shards, shard_name
from ulbc.metrics import metric_class
from ulbc.provenance import code_digest, config_hash, encode_digest


if not config:
    raise WorkflowError("no study configured: the config file is empty (a study names datasets and methods; "
                        "see config/config.yaml)")
validate(config, schema="../schemas/config.schema.yaml", set_default=True)
try:
    PLANS = check_study(config)
except UlbcError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None

STUDY = config["study"]
RESULTS = f"{config['paths']['results']}/{STUDY}"
DATASETS_DIR = config["paths"]["datasets"]
LOGS = f"logs/{STUDY}"
ITEMS_PER_JOB = config["items_per_job"]
SEED = config["seed"]
# The interpreter running Snakemake also runs the CLI, so no virtualenv needs activating in jobs.
ULBC = f"{shlex.quote(sys.executable)} -m ulbc"
SHARD_DIR = "{dataset}/{method}/{rate}/{shard}"
VIDEO_DATASETS = {name: is_video_entry(entry) for name, entry in config["datasets"].items()}
# Distribution metrics (FID, KID): evaluate jobs also write features, reduced per rate point.
DATASET_LEVEL_METRICS = [m for m in config["metrics"] if metric_class(m).level == "dataset"]
# Weight files the metrics load: verified (or fetched) once, by one job, before the fan-out.
WEIGHT_NAMES = study_weight_names(config, PLANS)
WEIGHTS_RECORD = f"{RESULTS}/weights.json"


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    method="|".join(map(re.escape, PLANS)),
    rate="[^/]+",
    shard=r"\d{5}",


def plan(wildcards):
    return PLANS[wildcards.method]


@functools.cache
def _method_arguments(method, rate):
    the_plan = PLANS[method]
    options = shlex.quote(json.dumps(the_plan.options, sort_keys=True))
    return (f"--method {method} --codec {the_plan.codec} --rate {the_plan.rate_value(rate)!r} "
            f"--options {options}")


@functools.cache
def _code_digest(method):
    return code_digest(PLANS[method].codec)


def method_code_digest(wildcards):
    """Digest of the code that makes a method's rows (ulbc.provenance.code_digest)."""
    return _code_digest(wildcards.method)


@functools.cache
def _encode_digest(method):
    return encode_digest(PLANS[method].codec)


def method_encode_digest(wildcards):
    """Digest of the code that makes a method's bitstreams (the rows' code without the metrics)."""
    return _encode_digest(wildcards.method)


def study_code_digests():
    return ",".join(f"{method}={_code_digest(method)}" for method in sorted(PLANS))


def method_arguments(wildcards):
    """The CLI arguments naming a shard's method, codec, rate point and options."""
    return _method_arguments(wildcards.method, wildcards.rate)


@functools.cache
def _evaluation_arguments(dataset, method, rate):
    job_hash = PLANS[method].job_hash(config["datasets"][dataset], rate, SEED, ITEMS_PER_JOB)
    return f"{_method_arguments(method, rate)} --config-hash {job_hash}"


def evaluation_arguments(wildcards):
    """method_arguments plus the hash of the config that determines the shard's rows (provenance)."""
    return _evaluation_arguments(wildcards.dataset, wildcards.method, wildcards.rate)


@functools.cache
def _metric_arguments(dataset):
    options = shlex.quote(json.dumps(dataset_metric_options(config, dataset), sort_keys=True))
    return " ".join(f"--metric {m}" for m in config["metrics"]) + f" --metric-options {options}"


def metric_arguments(wildcards):
    """The metrics of the study and their options on this dataset (the study's, then the dataset's)."""
    return _metric_arguments(wildcards.dataset)


def weights_record(wildcards):
    """The study's weights record (an input of evaluate jobs), when its metrics or codecs load weight files."""
    return [WEIGHTS_RECORD] if WEIGHT_NAMES else []


def encoder_weights(wildcards):
    """What an encode job reads besides its items: the weights record, when the codec loads
    registered weights, and a user's checkpoint files (changed files re-encode)."""
    the_plan = PLANS[wildcards.method]
    record = [WEIGHTS_RECORD] if the_plan.weights.get(wildcards.rate) else []
    return record + list(the_plan.checkpoints.get(wildcards.rate, ()))


def features_output():
    """Features file of an evaluate job, when the study has dataset-level metrics."""
    return {"features": f"{RESULTS}/features/{SHARD_DIR}.npz"} if DATASET_LEVEL_METRICS else {}


def dataset_fetch_marker(wildcards):
    """Registry datasets must be downloaded before their manifest; embedded and local ones need nothing."""
    source = config["datasets"][wildcards.dataset]["source"]
    if source in ("samples", "sample-clip", "local"):
        return []
    return f"{DATASETS_DIR}/{source}/.ulbc-fetched"


def dataset_manifest_input(wildcards):
    """A video dataset's manifest lists its extracted frames; others list files of the dataset."""
    if VIDEO_DATASETS[wildcards.dataset]:
        return f"{RESULTS}/frames/{wildcards.dataset}/.ulbc-frames.json"
    return dataset_fetch_marker(wildcards)


def method_manifest(wildcards):
    """Video codecs code clips (the clip manifest); image codecs code images or frames."""
    suffix = ".clips" if plan(wildcards).media == "video" else ""
    return f"{RESULTS}/manifests/{wildcards.dataset}{suffix}.parquet"


def shard_results(wildcards, folder="shards", suffix="parquet"):
    """Every shard Parquet of the study; the shard count comes from each dataset's manifest."""
    paths = []
    for dataset in config["datasets"]:
        outputs = checkpoints.manifest.get(dataset=dataset).output
        counts = {
            media: num_shards(outputs[key], ITEMS_PER_JOB)
            for media, key in (("image", "images"), ("video", "clips"))
        }
        for method in PLANS.values():
            if not method.runs_on(dataset):
                continue
            shards = [shard_name(s) for s in range(counts[method.media])]
            for point in method.rates:
                paths += [
                    f"{RESULTS}/{folder}/{dataset}/{method.name}/{point.label}/{s}.{suffix}"
                    for s in shards
                ]
    return paths


def feature_results(wildcards):
    """Every features file of the study (one per shard, as shard_results)."""
    return shard_results(wildcards, folder="features", suffix="npz")


def dataset_metrics_table(wildcards=None):
    """The per-rate-point table of FID/KID, when the study measures them."""
    return [f"{RESULTS}/dataset_metrics.parquet"] if DATASET_LEVEL_METRICS else []


def final_outputs():
    return [
        f"{RESULTS}/metrics.parquet",
        *dataset_metrics_table(),
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/bdrate.csv",
        f"{RESULTS}/datasets.csv",
        f"{RESULTS}/rd",
        f"{RESULTS}/cost",
        f"{RESULTS}/rd_items",
        f"{RESULTS}/comparison",
        f"{RESULTS}/run_manifest.json",
    ]
