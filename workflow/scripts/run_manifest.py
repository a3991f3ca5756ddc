"""Thin glue: write the resolved config and provenance of this run as JSON."""

from ulbc.provenance import write_run_manifest

write_run_manifest(dict(snakemake.config), snakemake.output[0])  # noqa: F821 - injected by Snakemake
