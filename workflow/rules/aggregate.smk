# Study-level outputs: one metrics table, summaries, BD-rates, RD plots and the run manifest.


# The weight files of the study's metrics, verified (fetch_weights: true: downloaded first) by one
# job before any evaluate job starts; the record names each file and its sha256.
rule weights:
    output:
        WEIGHTS_RECORD,
    message:
        "verify the weight files of the study's metrics"
    log:
        f"{LOGS}/weights.log",
    params:
        names=" ".join(WEIGHT_NAMES),
        fetch=f"{ULBC} weights fetch {' '.join(WEIGHT_NAMES)} && " if config["fetch_weights"] else "",
    localrule: True
    shell:
        "( {params.fetch}{ULBC} weights verify {params.names} --record {output} ) > {log} 2>&1"


# Dataset-level metrics (FID, KID): every shard's features, reduced once per rate point.
rule dataset_metrics:
    input:
        feature_results,
    output:
        f"{RESULTS}/dataset_metrics.parquet",
    message:
        "dataset-level metrics (FID, KID) per rate point"
    log:
        f"{LOGS}/dataset_metrics.log",
    params:
        code=lambda wc: study_code_digests(),
    resources:
        mem_mb=16000,
    script:
        "../scripts/dataset_metrics.py"


rule aggregate:
    input:
        shard_results,
    output:
        f"{RESULTS}/metrics.parquet",
    message:
        "gather the shard rows into metrics.parquet"
    log:
        f"{LOGS}/aggregate.log",
    params:
        engine=config["aggregate_engine"],
        allow_mixed_versions=config["allow_mixed_versions"],
        # The study's code: a changed codec re-runs its shards and then this job.
        code=lambda wc: study_code_digests(),
    resources:
        mem_mb=8000,
    script:
        "../scripts/aggregate.py"


rule analyse:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        dataset_metrics=dataset_metrics_table,
        references=[entry["file"] for entry in config["reference_results"].values()],
    output:
        summary=f"{RESULTS}/summary.csv",
        summary_html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary.rst",
            category="Tables",
            labels={"table": "summary per rate point"},
        ),
        bdrate=f"{RESULTS}/bdrate.csv",
        bdrate_html=report(
            f"{RESULTS}/bdrate.html",
            caption="../report/bdrate.rst",
            category="Tables",
            labels={"table": "BD-rate"},
        ),
        task_bdrate=f"{RESULTS}/task_bdrate.csv",
        task_bdrate_html=report(
            f"{RESULTS}/task_bdrate.html",
            caption="../report/task_bdrate.rst",
            category="Tables",
            labels={"table": "task BD-rate (ICIP 2024 Table 1 layout)"},
        ),
        datasets=f"{RESULTS}/datasets.csv",
        datasets_html=report(
            f"{RESULTS}/datasets.html",
            caption="../report/datasets.rst",
            category="Tables",
            labels={"table": "datasets"},
        ),
        metric_definitions=report(
            f"{RESULTS}/metric_definitions.html",
            caption="../report/metric_definitions.rst",
            category="Tables",
            labels={"table": "metrics"},
        ),
        # One plot per RD column of the measured metrics (the metric registry decides which).
        plots=report(
            directory(f"{RESULTS}/rd"),
            patterns=["{column}.png"],
            caption="../report/rd_curve.rst",
            category="RD curves",
            labels={"metric": "{column}", "curves": "mean over items"},
        ),
        # The same columns item by item, for the first items of each dataset.
        item_plots=report(
            directory(f"{RESULTS}/rd_items"),
            patterns=["{column}.png"],
            caption="../report/rd_items.rst",
            category="RD curves",
            labels={"metric": "{column}", "curves": "per item"},
        ),
        # Time against rate; for codecs that report them, the rate split and MACs per pixel.
        cost=report(
            directory(f"{RESULTS}/cost"),
            patterns=["{figure}.png"],
            caption="../report/cost.rst",
            category="Cost",
            labels={"figure": "{figure}"},
        ),
    message:
        "tables and plots: summary, BD-rates, RD curves, costs"
    log:
        f"{LOGS}/analyse.log",
    params:
        sources=shlex.quote(json.dumps({name: describe_source(entry) for name, entry in config["datasets"].items()})),
        anchor=config["anchor"],
        interpolation=config["bd_interpolation"],
        dataset_metrics=lambda wc, input: (
            f"--dataset-metrics {input.dataset_metrics}" if DATASET_LEVEL_METRICS else ""
        ),
        references=(
            f"--reference-results {shlex.quote(json.dumps(config['reference_results'], sort_keys=True))}"
            if config["reference_results"] else ""
        ),
    localrule: True
    shell:
        "{ULBC} analyse {input.metrics} {params.dataset_metrics} {params.references} --outdir {RESULTS} "
        "--dataset-sources {params.sources} "
        "--anchor {params.anchor} "
        "--interpolation {params.interpolation} > {log} 2>&1"


# Decoded crops side by side (one page per dataset), from the packs of the bitstreams shown.
rule visual_comparison:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        packs=lambda wc: shard_results(wc, folder="bitstreams", suffix="zip"),
    output:
        report(
            directory(f"{RESULTS}/comparison"),
            patterns=["{dataset}.html"],
            caption="../report/comparison.rst",
            category="Visual comparison",
            labels={"dataset": "{dataset}"},
        ),
    message:
        "visual comparison: decode the shown bitstreams, crop, FLIP maps"
    log:
        f"{LOGS}/visual_comparison.log",
    params:
        targets=" ".join(str(t) for t in config["visual"]["target_bpp"]),
        code=lambda wc: study_code_digests(),
    resources:
        mem_mb=4000,
    shell:
        "{ULBC} visual-comparison {input.metrics} --results {RESULTS} --items-per-job {ITEMS_PER_JOB} "
        "--outdir {output} --items {config[visual][items]} --select {config[visual][select]} "
        "--target-bpp {params.targets} --crop {config[visual][crop]} --frames {config[visual][frames]} "
        "--anchor {config[anchor]} --device {config[device]} > {log} 2>&1"


rule run_manifest:
    output:
        report(
            f"{RESULTS}/run_manifest.json",
            caption="../report/run_manifest.rst",
            category="Provenance",
        ),
    message:
        "provenance record of the run"
    params:
        # A params change re-runs the rule (rerun-triggers), so the record follows the config.
        config_hash=config_hash(config),
        ulbc_version=ulbc.__version__,
    localrule: True
    script:
        "../scripts/run_manifest.py"
