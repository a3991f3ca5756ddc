# ulbc: datasets -> encode -> decode (from the bitstream alone) -> metrics -> Parquet -> RD / BD-rate report.
# This file is a table of contents; wiring lives in workflow/rules/, logic in the ulbc package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/codec.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
