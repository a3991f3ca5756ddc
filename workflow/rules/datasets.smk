# Download registry datasets (checksummed) and build one manifest per dataset of the study.


rule fetch_dataset:
    output:
        f"{DATASETS_DIR}/{{source}}/.ulbc-fetched",
    log:
        f"logs/fetch/{{source}}.log",
    params:
        allow_unverified=lambda wc: (
            "--allow-unverified"
            if any(
                d.get("allow_unverified") and d["source"] == wc.source
                for d in config["datasets"].values()
            )
            else ""
        ),
    resources:
        runtime=600,
    shell:
        "{ULBC} datasets fetch {wildcards.source} --dest {DATASETS_DIR} {params.allow_unverified} "
        "--done-file {output} 2> {log}"


# A checkpoint: the number of shards is known once the manifest exists. One job per dataset,
# so the DAG update after it is cheap even for 10^5-item datasets.
checkpoint manifest:
    input:
        dataset_fetch_marker,
    output:
        f"{RESULTS}/manifests/{{dataset}}.parquet",
    log:
        f"{LOGS}/manifest/{{dataset}}.log",
    params:
        source=lambda wc: json.dumps(config["datasets"][wc.dataset], sort_keys=True),
    localrule: True
    shell:
        "{ULBC} manifest --dataset {wildcards.dataset} --source {params.source:q} "
        "--datasets-dir {DATASETS_DIR} --out {output} 2> {log}"
