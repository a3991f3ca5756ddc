"""Thin glue (one job per study): gather the shard Parquets with ulbc.aggregate."""

import sys

from ulbc.aggregate import aggregate_shards
from ulbc.provenance import run_provenance

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 - injected by Snakemake
rows = aggregate_shards(
    list(snakemake.input),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    engine=snakemake.params.engine,  # noqa: F821
    metadata=run_provenance(dict(snakemake.config)),  # noqa: F821
    allow_mixed_versions=snakemake.params.allow_mixed_versions,  # noqa: F821
)
print(f"aggregated {rows} rows from {len(snakemake.input)} shards", file=sys.stderr)  # noqa: F821
