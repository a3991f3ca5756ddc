# Per-shard fan-out, two jobs per shard: encode (-> bitstream pack), then evaluate (decode the pack
# alone, measure against the originals -> one Parquet). Each job is one `ulbc` CLI call (shell:).
# Parameters come from one cached callable per rule: Snakemake evaluates every callable of every job
# when it builds the DAG, which dominates planning time at 10^4 shards.


rule encode_shard:
    input:
        manifest=method_manifest,
        weights=encoder_weights,
    output:
        pack=f"{RESULTS}/bitstreams/{SHARD_DIR}.zip",
        log=f"{RESULTS}/work/{SHARD_DIR}.encode.parquet",
    message:
        "encode {wildcards.dataset} with {wildcards.method} at {wildcards.rate}, shard {wildcards.shard}"
    log:
        f"{LOGS}/encode/{SHARD_DIR}.log",
    params:
        method=method_arguments,
        # The codec's code (rerun-triggers compare params): changed code re-encodes its shards;
        # changed metrics do not (they re-run the evaluate jobs only).
        code=method_encode_digest,
    # Methods that train per item (overfitted codecs, INRs) take the longest: started first, they
    # do not leave one core alone at the end of a local run.
    priority: lambda wc: 1 if plan(wc).uses_gpu else 0
    resources:
        mem_mb=lambda wc: plan(wc).mem_mb,
        runtime=lambda wc: plan(wc).runtime,
        gpu=lambda wc: plan(wc).gpu,
    shell:
        "{ULBC} encode-shard --manifest {input.manifest} --shard {wildcards.shard} "
        "--items-per-job {ITEMS_PER_JOB} {params.method} --seed {SEED} --device {config[device]} "
        "--on-error {config[on_error]} --out-pack {output.pack} --out-log {output.log} 2> {log}"


rule evaluate_shard:
    input:
        manifest=method_manifest,
        pack=f"{RESULTS}/bitstreams/{SHARD_DIR}.zip",
        encode_log=f"{RESULTS}/work/{SHARD_DIR}.encode.parquet",
        weights=weights_record,
    output:
        rows=f"{RESULTS}/shards/{SHARD_DIR}.parquet",
        **features_output(),
    message:
        "decode and measure {wildcards.dataset} / {wildcards.method} / {wildcards.rate}, shard {wildcards.shard}"
    log:
        f"{LOGS}/evaluate/{SHARD_DIR}.log",
    params:
        method=evaluation_arguments,
        metrics=metric_arguments,
        features=lambda wc, output: f"--features-out {output.features}" if DATASET_LEVEL_METRICS else "",
        code=method_code_digest,
    resources:
        mem_mb=lambda wc: plan(wc).mem_mb,
        runtime=lambda wc: plan(wc).runtime,
        gpu=lambda wc: plan(wc).gpu,
    shell:
        "{ULBC} evaluate-shard --manifest {input.manifest} --shard {wildcards.shard} "
        "--items-per-job {ITEMS_PER_JOB} {params.method} --pack {input.pack} "
        "--encode-log {input.encode_log} {params.metrics} {params.features} --device {config[device]} "
        "--on-error {config[on_error]} --threads {threads} --out {output.rows} 2> {log}"
