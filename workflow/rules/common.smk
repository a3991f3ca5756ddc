# Module-level code runs on every Snakemake start (and in every cluster job): keep it O(1) in items.
import json
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import ulbc
from ulbc.config import check_study
from ulbc.errors import UlbcError
from ulbc.manifest import num_shards, shard_name
from ulbc.provenance import config_hash


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


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    method="|".join(map(re.escape, PLANS)),
    rate="[^/]+",
    shard=r"\d{5}",


def plan(wildcards):
    return PLANS[wildcards.method]


def dataset_fetch_marker(wildcards):
    """Registry datasets must be downloaded before their manifest; samples/local need nothing."""
    source = config["datasets"][wildcards.dataset]["source"]
    if source in ("samples", "local"):
        return []
    return f"{DATASETS_DIR}/{source}/.ulbc-fetched"


def shard_results(wildcards):
    """Every shard Parquet of the study; the shard count comes from each dataset's manifest."""
    paths = []
    for dataset in config["datasets"]:
        manifest = checkpoints.manifest.get(dataset=dataset).output[0]
        shards = [shard_name(s) for s in range(num_shards(manifest, ITEMS_PER_JOB))]
        for method in PLANS.values():
            for point in method.rates:
                paths += [
                    f"{RESULTS}/shards/{dataset}/{method.name}/{point.label}/{s}.parquet"
                    for s in shards
                ]
    return paths


def final_outputs():
    return [
        f"{RESULTS}/metrics.parquet",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/bdrate.csv",
        f"{RESULTS}/rd_psnr.png",
        f"{RESULTS}/run_manifest.json",
    ]
