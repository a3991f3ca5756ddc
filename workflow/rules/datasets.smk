# Download registry datasets (checksummed) and build one manifest per dataset of the study.


rule fetch_dataset:
    output:
        f"{DATASETS_DIR}/{{source}}/.ulbc-fetched",
    message:
        "fetch dataset {wildcards.source}"
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


# Video datasets: every clip becomes a folder of lossless PNG frames (ffmpeg), once per study.
rule extract_frames:
    input:
        dataset_fetch_marker,
    output:
        f"{RESULTS}/frames/{{dataset}}/.ulbc-frames.json",
    message:
        "extract the frames of {wildcards.dataset}"
    log:
        f"{LOGS}/frames/{{dataset}}.log",
    params:
        source=lambda wc: json.dumps(config["datasets"][wc.dataset], sort_keys=True),
        out_dir=lambda wc: f"{RESULTS}/frames/{wc.dataset}",
    resources:
        runtime=120,
    shell:
        "{ULBC} extract-frames --dataset {wildcards.dataset} --source {params.source:q} "
        "--datasets-dir {DATASETS_DIR} --out-dir {params.out_dir} 2> {log}"


# A checkpoint: the number of shards is known once the manifests exist. One job per dataset,
# so the DAG update after it is cheap even for 10^5-item datasets. `images` lists images (or a
# video dataset's frames) for image codecs; `clips` lists what video codecs code.
checkpoint manifest:
    input:
        dataset_manifest_input,
    output:
        images=f"{RESULTS}/manifests/{{dataset}}.parquet",
        clips=f"{RESULTS}/manifests/{{dataset}}.clips.parquet",
    message:
        "manifest of {wildcards.dataset}"
    log:
        f"{LOGS}/manifest/{{dataset}}.log",
    params:
        source=lambda wc: json.dumps(config["datasets"][wc.dataset], sort_keys=True),
        frames=lambda wc: (
            f"--frames-dir {RESULTS}/frames/{wc.dataset}"
            if VIDEO_DATASETS[wc.dataset]
            else (
                f"--images-dir {RESULTS}/images/{wc.dataset}"
                if config["datasets"][wc.dataset].get("max_side")
                else ""
            )
        ),
    localrule: True
    shell:
        "{ULBC} manifest --dataset {wildcards.dataset} --source {params.source:q} "
        "--datasets-dir {DATASETS_DIR} {params.frames} --out {output.images} --out-clips {output.clips} "
        "2> {log}"
