# Per-shard fan-out: encode -> decode -> metrics. Each job is one `ulbc` CLI call (shell:, cheapest per job).


rule encode_shard:
    input:
        manifest=method_manifest,
    output:
        pack=f"{RESULTS}/bitstreams/{SHARD_DIR}.zip",
        log=f"{RESULTS}/work/{SHARD_DIR}.encode.parquet",
    log:
        f"{LOGS}/encode/{SHARD_DIR}.log",
    params:
        codec=lambda wc: plan(wc).codec,
        rate=lambda wc: plan(wc).rate_value(wc.rate),
        options=lambda wc: json.dumps(plan(wc).options, sort_keys=True),
        shard=lambda wc: int(wc.shard),
        ulbc_version=ulbc.__version__,
    resources:
        mem_mb=lambda wc: plan(wc).mem_mb,
        runtime=lambda wc: plan(wc).runtime,
        gpu=lambda wc: plan(wc).gpu,
    shell:
        "{ULBC} encode-shard --manifest {input.manifest} --shard {params.shard} "
        "--items-per-job {ITEMS_PER_JOB} --method {wildcards.method} --codec {params.codec} "
        "--rate {params.rate} --options {params.options:q} --seed {SEED} --device {config[device]} "
        "--on-error {config[on_error]} --out-pack {output.pack} --out-log {output.log} 2> {log}"


rule decode_shard:
    input:
        pack=f"{RESULTS}/bitstreams/{SHARD_DIR}.zip",
    output:
        decoded=temp(f"{RESULTS}/work/{SHARD_DIR}.decoded.zip"),
        log=f"{RESULTS}/work/{SHARD_DIR}.decode.parquet",
    log:
        f"{LOGS}/decode/{SHARD_DIR}.log",
    params:
        ulbc_version=ulbc.__version__,
    resources:
        mem_mb=lambda wc: plan(wc).mem_mb,
        runtime=lambda wc: plan(wc).runtime,
        gpu=lambda wc: plan(wc).gpu,
    shell:
        "{ULBC} decode-shard --pack {input.pack} --device {config[device]} "
        "--on-error {config[on_error]} --out-decoded {output.decoded} --out-log {output.log} 2> {log}"


rule metrics_shard:
    input:
        manifest=method_manifest,
        encode_log=f"{RESULTS}/work/{SHARD_DIR}.encode.parquet",
        decode_log=f"{RESULTS}/work/{SHARD_DIR}.decode.parquet",
        decoded=f"{RESULTS}/work/{SHARD_DIR}.decoded.zip",
    output:
        f"{RESULTS}/shards/{SHARD_DIR}.parquet",
    log:
        f"{LOGS}/metrics/{SHARD_DIR}.log",
    params:
        codec=lambda wc: plan(wc).codec,
        rate=lambda wc: plan(wc).rate_value(wc.rate),
        options=lambda wc: json.dumps(plan(wc).options, sort_keys=True),
        shard=lambda wc: int(wc.shard),
        metrics=" ".join(f"--metric {m}" for m in config["metrics"]),
        config_hash=lambda wc: plan(wc).job_hash(
            config["datasets"][wc.dataset], wc.rate, SEED, ITEMS_PER_JOB
        ),
        ulbc_version=ulbc.__version__,
    resources:
        mem_mb=lambda wc: plan(wc).mem_mb,
        runtime=lambda wc: plan(wc).runtime,
    shell:
        "{ULBC} metrics-shard --manifest {input.manifest} --shard {params.shard} "
        "--items-per-job {ITEMS_PER_JOB} --method {wildcards.method} --codec {params.codec} "
        "--rate {params.rate} --options {params.options:q} --encode-log {input.encode_log} "
        "--decode-log {input.decode_log} --decoded {input.decoded} {params.metrics} "
        "--config-hash {params.config_hash} --out {output} 2> {log}"
