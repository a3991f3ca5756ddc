"""Thin glue (one job per study): FID/KID per rate point from every shard's features file."""

import sys

from ulbc.features import dataset_metric_table

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 - injected by Snakemake
rows = dataset_metric_table(list(snakemake.input), snakemake.output[0])  # noqa: F821
print(f"dataset-level metrics of {rows} rate points from {len(snakemake.input)} features files",  # noqa: F821
      file=sys.stderr)
