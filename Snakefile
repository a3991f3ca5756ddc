# ulbc: datasets -> encode -> decode (from the bitstream alone) -> metrics -> Parquet -> RD / BD-rate report.
# This file is a table of contents; wiring lives in workflow/rules/, logic in the ulbc package.
from snakemake.utils import min_version

min_version("9.0")


# The demo study is the default only: a study given with --configfile defines itself alone (the
# schema fills the defaults), instead of being merged key by key into the demo's datasets and methods.
if not workflow.overwrite_configfiles:

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
