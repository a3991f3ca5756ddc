# Study-level outputs: one metrics table, summaries, BD-rates, RD plots and the run manifest.


rule aggregate:
    input:
        shard_results,
    output:
        f"{RESULTS}/metrics.parquet",
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
        f"{RESULTS}/metrics.parquet",
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
        rd_psnr=report(
            f"{RESULTS}/rd_psnr.png",
            caption="../report/rd_curve.rst",
            category="RD curves",
            labels={"metric": "PSNR (RGB)"},
        ),
        rd_psnr_svg=f"{RESULTS}/rd_psnr.svg",
        rd_msssim=report(
            f"{RESULTS}/rd_msssim.png",
            caption="../report/rd_curve.rst",
            category="RD curves",
            labels={"metric": "MS-SSIM (dB)"},
        ),
        rd_msssim_svg=f"{RESULTS}/rd_msssim.svg",
    log:
        f"{LOGS}/analyse.log",
    params:
        anchor=config["anchor"],
        interpolation=config["bd_interpolation"],
    localrule: True
    shell:
        "{ULBC} analyse {input} --outdir {RESULTS} --anchor {params.anchor} "
        "--interpolation {params.interpolation} > {log} 2>&1"


rule run_manifest:
    output:
        report(
            f"{RESULTS}/run_manifest.json",
            caption="../report/run_manifest.rst",
            category="Provenance",
        ),
    params:
        # A params change re-runs the rule (rerun-triggers), so the record follows the config.
        config_hash=config_hash(config),
        ulbc_version=ulbc.__version__,
    localrule: True
    script:
        "../scripts/run_manifest.py"
