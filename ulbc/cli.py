"""The ``ulbc`` command line: single-file tools and the shard stages the workflow's rules call.

Every error that ulbc anticipates is printed as one line, ``ulbc: error: <file>: <problem>``, with
exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, InputError, UlbcError
from .overfit import DECODER_ENV, DECODERS

#: What a shard job does with an item that cannot be encoded or decoded (see the config schema).
ON_ERROR_CHOICES = ("fail", "record")

if TYPE_CHECKING:
    from .runner import MethodSpec


def _parse_options(pairs: list[str] | None, json_text: str | None) -> dict:
    options: dict = {}
    if json_text:
        try:
            parsed = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--options: not valid JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--options: expected a JSON object of option names and values, got {json_text!r}")
        options.update(parsed)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--option {pair!r}: expected key=value")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _spec(args) -> "MethodSpec":
    from .runner import MethodSpec

    return MethodSpec(method=args.method or args.codec, codec=args.codec, rate=args.rate,
                      options=_parse_options(args.option, args.options))


# -- single files ------------------------------------------------------------------------------------
def cmd_encode(args) -> None:
    from .codecs import get_codec
    from .fsutil import write_bytes_atomic
    from .imageio import load_rgb
    from .provenance import resolve_device

    codec = get_codec(args.codec, **_parse_options(args.option, args.options))
    rate = args.rate if args.rate is not None else codec.default_rates[len(codec.default_rates) // 2]
    device = resolve_device(args.device, codec.uses_gpu)
    start = time.perf_counter()
    if codec.media == "video":
        from .clips import load_input_frames

        image = load_input_frames(args.input, frames=args.frames, raw=args.raw)
        result = codec.encode_clip_result(image, rate, device=device, seed=args.seed, name=str(args.input))
    else:
        image = load_rgb(args.input)
        result = codec.encode_result(image, rate, device=device, seed=args.seed, name=str(args.input))
    elapsed = time.perf_counter() - start
    write_bytes_atomic(args.output, result.data)
    if args.recon:
        from .codecs import decode_bitstream

        # Codecs that compute their own reconstruction report it; for the others it is the decoded file.
        recon = result.reconstruction
        if recon is None:
            recon = decode_bitstream(result.data, device=device, name=str(args.output))[1]
        _save_decoded(recon, args.recon)
    pixels = image.shape[-3] * image.shape[-2] * (image.shape[0] if image.ndim == 4 else 1)
    print(json.dumps({"output": str(args.output), "codec": codec.name, "rate": codec.rate_label(rate),
                      "bytes": len(result.data), "bpp": 8 * len(result.data) / pixels, "encode_s": round(elapsed, 4),
                      **({"frames": int(image.shape[0])} if image.ndim == 4 else {}),
                      **({"encoder": result.info} if result.info else {})}))


def _save_decoded(image, dest) -> None:
    """An image goes to a PNG file, a clip's frames into a new folder of PNGs."""
    if image.ndim == 4:
        from .clips import save_frames

        save_frames(image, dest)
    else:
        from .imageio import save_png

        save_png(image, dest)


def cmd_decode(args) -> None:
    from .codecs import decode_bitstream_data

    data = Path(args.input).read_bytes() if Path(args.input).is_file() else None
    if data is None:
        raise UlbcError(f"{args.input}: no such file")
    start = time.perf_counter()
    codec, _, image, _ = decode_bitstream_data(data, device=args.device, name=str(args.input), target=args.target)
    elapsed = time.perf_counter() - start
    _save_decoded(image, args.output)
    torch = sys.modules.get("torch")  # loaded by the codecs that decode with it
    print(json.dumps({"output": str(args.output), "codec": codec.name, "target": args.target, "width": image.shape[-2],
                      "height": image.shape[-3], **({"frames": image.shape[0]} if image.ndim == 4 else {}),
                      "decode_s": round(elapsed, 4),
                      **({"torch_threads": torch.get_num_threads()} if torch is not None else {})}))


def cmd_eval(args) -> None:
    from .bitstream import MAGIC
    from .imageio import load_rgb
    from .metrics import build_metrics, compute_metrics
    from .runner import decode_bitstream_data

    reference = load_rgb(args.reference)
    path = Path(args.candidate)
    if not path.is_file():
        raise UlbcError(f"{path}: no such file")
    data = path.read_bytes()
    h, w = reference.shape[:2]
    result: dict = {"reference": str(args.reference), "candidate": str(path)}
    if data[:2] == MAGIC:
        codec, container, candidate, _ = decode_bitstream_data(data, device=args.device, name=str(path))
        result.update(codec=codec.name, bytes=len(data), bpp=8 * len(data) / (w * h),
                      payload_bpp=8 * len(container.payload) / (w * h))
    else:
        candidate = load_rgb(path)
    instances = build_metrics(args.metric or ["psnr", "ms-ssim"], args.metric_options, device=args.device)
    per_dataset = [m.name for m in instances if m.level != "item"]
    if per_dataset:
        raise UlbcError(f"metric(s) {', '.join(per_dataset)} are measured over a dataset, not one image pair")
    metrics = compute_metrics(instances, reference, candidate)
    result.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()})
    print(json.dumps(result))


def cmd_extract(args) -> None:
    from .fsutil import write_bytes_atomic
    from .pack import PackReader, bitstream_entry

    with PackReader(args.pack) as pack:
        if args.item is None:
            for name in pack.names():
                print(name)
            return
        entry = args.item if args.item in pack else bitstream_entry(args.item)
        data = pack.read(entry)
    output = args.output or Path(entry).name
    write_bytes_atomic(output, data)
    print(json.dumps({"output": str(output), "bytes": len(data)}))


def _option_rows(option_specs: dict) -> dict[str, dict]:
    """Declared options (of a codec or a metric) as JSON-ready rows."""
    return {key: {"default": spec.default, "kind": spec.kind, "accepts": spec.requirement(), "help": spec.help}
            for key, spec in option_specs.items()}


LISTING_WIDTH = 100


def _print_wrapped(text: str, *, indent: int, hang: int = 4) -> None:
    print(textwrap.fill(text, width=LISTING_WIDTH, initial_indent=" " * indent,
                        subsequent_indent=" " * (indent + hang), break_on_hyphens=False))


def _print_options(rows: dict[str, dict], *, indent: int) -> None:
    if rows:
        print(f"{'':{indent}}options (default: accepted values; meaning):")
    for key, spec in rows.items():
        _print_wrapped(f"{key} = {json.dumps(spec['default'])}: {spec['accepts']}"
                       + (f"; {spec['help']}" if spec["help"] else ""), indent=indent + 2)


def _dataset_table(args):
    """The study's dataset_metrics.parquet (FID, KID) when ``--dataset-metrics`` names one."""
    from .features import read_dataset_metrics

    return read_dataset_metrics(args.dataset_metrics) if args.dataset_metrics else None


def cmd_codecs(args) -> None:
    from .codecs import CODECS

    rows = []
    for name, cls in sorted(CODECS.items(), key=lambda kv: kv[1].codec_id):
        reason = cls.availability()
        specs = _option_rows(cls.option_specs)
        rows.append({"name": name, "id": cls.codec_id, "media": cls.media, "gpu": cls.uses_gpu,
                     "rate_param": cls.rate_param, "default_rates": list(cls.default_rates),
                     "rate_range": list(cls.rate_range), "integer_rates": cls.integer_rates,
                     "options": cls.option_defaults, "option_specs": specs,
                     "available": reason is None, "reason": reason or "", "description": cls.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len("codec"), *(len(r["name"]) for r in rows))
    print(f"{'codec':<{width}} {'id':>3} {'media':<6} {'gpu':<4} {'rate grid':<44} available")
    for r in rows:
        grid = f"{r['rate_param']} " + ",".join(f"{v:g}" for v in r["default_rates"])
        status = "yes" if r["available"] else f"no: {r['reason']}"
        print(f"{r['name']:<{width}} {r['id']:>3} {r['media']:<6} {'yes' if r['gpu'] else 'no':<4} {grid:<44} {status}")
        if args.verbose:
            lo, hi = r["rate_range"]
            whole = "whole numbers " if r["integer_rates"] else ""
            _print_wrapped(r["description"], indent=4)
            _print_wrapped(f"rate: {r['rate_param']}, {whole}in [{lo:g}, {hi:g}]", indent=4)
            _print_options(r["option_specs"], indent=4)
            print()


def cmd_metrics(args) -> None:
    from .metrics import METRICS

    rows = []
    for name, cls in METRICS.items():
        specs = _option_rows(cls.option_specs)
        default_weights = list(cls().weight_names())
        rows.append({"name": name, "level": cls.level, "gpu": cls.uses_gpu, "description": cls.description,
                     "columns": [{"name": c.name, "dtype": c.dtype, "better": c.direction, "rd": c.rd,
                                  "label": c.label} for c in (*cls.columns, *cls.derived)],
                     "weights": default_weights, "option_specs": specs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    averaging = {"item": "each column is the mean over the ok items of a rate point",
                 "dataset": "measured once per rate point, over every ok item's patches"}
    for r in rows:
        print(f"{r['name']}: {r['level']} level, {'GPU if there is one' if r['gpu'] else 'CPU'}; "
              f"weights: {', '.join(r['weights']) or 'none'}")
        if args.verbose:
            _print_wrapped(r["description"], indent=4)
        derived = {c.name for c in METRICS[r["name"]].derived}
        _print_wrapped(averaging[r["level"]] + ("; (derived) columns are computed from those means" if derived
                                                 else ""), indent=4)
        width = max(len(c["name"]) for c in r["columns"])
        print(f"    {'column':<{width}}  better  BD-rated  meaning")
        for c in r["columns"]:
            text = f"{c['name']:<{width}}  {c['better']:<6}  {'yes' if c['rd'] else 'no':<8}  {c['label']}"
            _print_wrapped(text + (" (derived)" if c["name"] in derived else ""), indent=4, hang=width + 22)
        if args.verbose:
            _print_options(r["option_specs"], indent=4)
        print()


# -- datasets ------------------------------------------------------------------------------------------
def cmd_datasets_list(args) -> None:
    from .datasets import list_datasets

    print(f"{'name':<14} {'media':<6} {'files':>5} {'verified':<8} description")
    print(f"{'samples':<14} {'image':<6} {4:>5} {'bundled':<8} scikit-image's bundled photographs (no network)")
    print(f"{'sample-clip':<14} {'video':<6} {1:>5} {'bundled':<8} 8 frames of Intel libvpl's 'cars' clip, 320x240 (no network)")
    print(f"{'local':<14} {'any':<6} {'-':>5} {'-':<8} a folder or glob of your own files")
    for spec in list_datasets():
        print(f"{spec.name:<14} {spec.media:<6} {len(spec.files):>5} {'sha256' if spec.verified else 'no':<8} {spec.description}")


def cmd_datasets_fetch(args) -> None:
    from .datasets import fetch_dataset

    folder = fetch_dataset(args.name, args.dest, allow_unverified=args.allow_unverified, progress=not args.quiet)
    if args.done_file:
        Path(args.done_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.done_file).write_text(str(folder) + "\n")
    print(folder)


# -- weights ------------------------------------------------------------------------------------------
def _size_text(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


def cmd_weights_list(args) -> None:
    from .weights import registry, verify

    import fnmatch

    rows = []
    for name, entry in sorted(registry().items()):
        if args.patterns and not any(fnmatch.fnmatchcase(name, pattern) for pattern in args.patterns):
            continue
        found = verify(name)
        rows.append({"name": name, "file": entry.file_name, "status": found.status,
                     "path": str(found.path) if found.path else None, "problem": found.problem,
                     "size": entry.size, "sha256": entry.sha256 or None,  # None: no published checksum
                     "check": entry.check, "licence": entry.licence,
                     "used_by": list(entry.used_by), "urls": list(entry.urls), "aliases": list(entry.aliases),
                     "wheel": dataclasses.asdict(entry.wheel) if entry.wheel else None,
                     "page": entry.page or None, "description": entry.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    widths = {key: max([len(heading)] + [len(text(r)) for r in rows]) for key, heading, text in (
        ("name", "name", lambda r: r["name"]), ("file", "file", lambda r: r["file"]),
        ("licence", "licence", lambda r: r["licence"]), ("used", "used by", lambda r: ",".join(r["used_by"]) or "-"))}
    print(f"{'name':<{widths['name']}} {'file':<{widths['file']}} {'status':<8} {'size':>10} "
          f"{'licence':<{widths['licence']}} {'used by':<{widths['used']}} where")
    for r in rows:
        print(f"{r['name']:<{widths['name']}} {r['file']:<{widths['file']}} {r['status']:<8} "
              f"{_size_text(r['size']):>10} {r['licence']:<{widths['licence']}} "
              f"{','.join(r['used_by']) or '-':<{widths['used']}} {r['path'] or '-'}")


def cmd_weights_fetch(args) -> None:
    from .weights import fetch

    if args.url and len(args.names) > 1:
        raise ConfigError("weights fetch: --url names one file's source; give a single NAME with it")
    for name in args.names:
        print(fetch(name, url=args.url, progress=not args.quiet))


def cmd_weights_import(args) -> None:
    from .weights import import_file

    if args.name and len(args.paths) > 1:
        raise ConfigError("weights import: --name says which entry one file is; give a single PATH with it")
    for path in args.paths:
        name, dest = import_file(path, name=args.name)
        print(f"{name}: {dest}")


def cmd_weights_verify(args) -> None:
    from .fsutil import write_bytes_atomic
    from .weights import NO_CHECKSUM, registry, verify

    names = args.names or sorted(registry())
    results = [verify(name) for name in names]
    for r in results:
        if r.ok and r.check == NO_CHECKSUM:  # nothing to compare with: say so, and which file it is
            detail = f"{NO_CHECKSUM}, sha256 {r.sha256}, {r.path}"
        else:
            detail = f"{r.check} ok, {r.path}" if r.ok else r.problem
        print(f"{r.name}: {r.status} ({detail})")
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise UlbcError(f"weights verify: {len(failed)} of {len(results)} file(s) missing or bad: "
                        f"{', '.join(failed)} (ulbc weights fetch NAME, or ulbc weights import PATH)")
    if args.record:
        record = {r.name: {"file": r.file_name, "path": str(r.path), "sha256": r.sha256} for r in results}
        write_bytes_atomic(args.record, (json.dumps(record, indent=2) + "\n").encode())


def cmd_weights_path(args) -> None:
    from .weights import require

    print(require(args.name))


def cmd_manifest(args) -> None:
    from .datasets import resolve_items
    from .manifest import build_clip_manifest, build_manifest

    try:
        source = json.loads(args.source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--source: not valid JSON ({exc})") from None
    if args.frames_dir:
        from .clips import frame_items

        root, items = Path(args.frames_dir).resolve(), frame_items(args.frames_dir)
        if not items:
            raise InputError(f"{args.frames_dir}: no frames were extracted")
    else:
        root, items = resolve_items(source, args.datasets_dir)
        if source.get("max_side"):
            from .datasets import downscale_items

            if not args.images_dir:
                raise ConfigError(f"dataset {args.dataset}: max_side needs --images-dir (where the downscaled images go)")
            root, items = downscale_items(root, items, int(source["max_side"]), args.images_dir)
    frame = build_manifest(args.dataset, root, items, args.out, video=bool(args.frames_dir))
    report = {"manifest": str(args.out), "items": len(frame), "root": str(root)}
    if args.out_clips:
        clips = build_clip_manifest(args.out, args.out_clips)
        report.update(clip_manifest=str(args.out_clips), clips=len(clips))
    print(json.dumps(report))


def cmd_extract_frames(args) -> None:
    from .clips import extract_dataset_frames

    try:
        source = json.loads(args.source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--source: not valid JSON ({exc})") from None
    frames = extract_dataset_frames(source, args.datasets_dir, args.out_dir)
    print(json.dumps({"dataset": args.dataset, "frames_dir": str(args.out_dir), "frames": len(frames)}))


# -- shard stages ------------------------------------------------------------------------------------
def cmd_encode_shard(args) -> None:
    from .runner import encode_shard

    n = encode_shard(args.manifest, args.shard, args.items_per_job, _spec(args), args.out_pack, args.out_log,
                     seed=args.seed, device=args.device, on_error=args.on_error, progress=not args.quiet)
    print(f"encoded {n} items -> {args.out_pack}", file=sys.stderr)


def cmd_decode_shard(args) -> None:
    from .runner import decode_shard, decode_workers

    n = decode_shard(args.pack, args.out_decoded, args.out_log, device=args.device, on_error=args.on_error,
                     progress=not args.quiet, workers=decode_workers(args.threads), out_machine=args.out_machine)
    print(f"decoded {n} items -> {args.out_decoded}", file=sys.stderr)


def cmd_metrics_shard(args) -> None:
    from .runner import metrics_shard

    n = metrics_shard(args.manifest, args.shard, args.items_per_job, _spec(args), args.encode_log, args.decode_log,
                      args.decoded, args.out, metrics=args.metric or ("psnr", "ms-ssim"),
                      metric_options=args.metric_options, features_out=args.features_out, device=args.device,
                      config_hash=args.config_hash, progress=not args.quiet, decoded_machine=args.decoded_machine)
    print(f"measured {n} items -> {args.out}", file=sys.stderr)


def cmd_evaluate_shard(args) -> None:
    from .runner import decode_workers, evaluate_shard

    n = evaluate_shard(args.manifest, args.shard, args.items_per_job, _spec(args), args.pack, args.encode_log,
                       args.out, metrics=args.metric or ("psnr", "ms-ssim"), metric_options=args.metric_options,
                       features_out=args.features_out, config_hash=args.config_hash,
                       device=args.device, on_error=args.on_error, progress=not args.quiet,
                       workers=decode_workers(args.threads))
    print(f"decoded and measured {n} rows -> {args.out}", file=sys.stderr)


# -- study level ------------------------------------------------------------------------------------------
def cmd_aggregate(args) -> None:
    from .aggregate import aggregate_shards
    from .provenance import run_provenance

    shards = list(args.shards)
    if args.shard_list:
        shards += [line.strip() for line in Path(args.shard_list).read_text().splitlines() if line.strip()]
    n = aggregate_shards(shards, args.out, engine=args.engine, metadata=run_provenance(),
                         allow_mixed_versions=args.allow_mixed_versions)
    print(json.dumps({"metrics": str(args.out), "rows": n, "shards": len(shards)}))


def cmd_dataset_metrics(args) -> None:
    from .features import dataset_metric_table

    paths = list(args.features)
    if args.features_list:
        paths += [line.strip() for line in Path(args.features_list).read_text().splitlines() if line.strip()]
    n = dataset_metric_table(paths, args.out)
    print(json.dumps({"dataset_metrics": str(args.out), "rate_points": n, "files": len(paths)}))


def cmd_analyse(args) -> None:
    from .aggregate import read_metrics, version_mix
    from .config import read_reference_results
    from .rd import analyse_study

    frame = read_metrics(args.metrics)
    mix = version_mix(args.metrics)
    notice = f"These results mix code versions (allow_mixed_versions): {mix}" if mix else None
    if notice:
        print(f"ulbc: warning: {notice}", file=sys.stderr)
    dataset_table = _dataset_table(args)
    external = read_reference_results(args.reference_results) if args.reference_results else None
    summary, table, notes = analyse_study(frame, Path(args.outdir), anchor=args.anchor,
                                          interpolation=args.interpolation, dataset_table=dataset_table,
                                          notice=notice, external=external,
                                          dataset_sources=args.dataset_sources)
    for note in notes:
        print(f"ulbc: note: {note}", file=sys.stderr)
    failed = int(summary["n_failed"].sum())
    if failed:
        print(f"ulbc: warning: {failed} item encodes/decodes failed; see the status/error columns", file=sys.stderr)
    print(table.to_string(index=False))


def cmd_visual_comparison(args) -> None:
    from .aggregate import read_metrics
    from .rd import method_labels
    from .visual import ComparisonSettings, build_comparison

    frame = read_metrics(args.metrics)
    settings = ComparisonSettings(items=args.items, select=args.select, targets=tuple(args.target_bpp),
                                  crop=args.crop, frames=args.frames)
    index = build_comparison(frame, args.results, args.outdir, items_per_job=args.items_per_job, settings=settings,
                             anchor=args.anchor, labels=method_labels(frame), device=args.device)
    counts = {kind: sum(1 for r in index["crops"] if r["kind"] == kind) for kind in ("original", "decoded", "flip_map")}
    print(json.dumps({"outdir": str(args.outdir), "datasets": sorted(index["datasets"]), **counts}))


def cmd_export_compressai_json(args) -> None:
    from .aggregate import read_metrics
    from .compressai_json import export_compressai_json
    from .rd import summarize

    written = export_compressai_json(summarize(read_metrics(args.metrics), dataset_table=_dataset_table(args)),
                                     args.out)
    print(json.dumps({"files": [str(p) for p in written]}))


def cmd_bdrate(args) -> None:
    from .aggregate import read_metrics
    from .rd import bd_rate_table, method_labels, write_table
    from .tables import bd_rate_text

    frame = read_metrics(args.metrics)
    table = bd_rate_table(frame, args.anchor, interpolation=args.interpolation, dataset_table=_dataset_table(args))
    if args.out:
        write_table(table, args.out)
    print(bd_rate_text(table, method_labels(frame), width=args.width), end="")


def cmd_check_config(args) -> None:
    from .config import check_study, load_config

    config = load_config(args.config)
    plans = check_study(config)
    datasets = list(config["datasets"])
    if args.json:
        # What the workflow will run: every (dataset, method, rate point), as Snakemake wires it.
        print(json.dumps({
            "study": config["study"],
            "datasets": datasets,
            "methods": {plan.name: {"codec": plan.codec, "rates": [p.label for p in plan.rates],
                                    "datasets": [d for d in datasets if plan.runs_on(d)]}
                        for plan in plans.values()},
            "anchor": config["anchor"],
        }, indent=2))
        return
    print(f"study {config['study']}: dataset(s) {', '.join(datasets)}")
    for plan in plans.values():
        on = ", ".join(d for d in datasets if plan.runs_on(d))
        print(f"{plan.name}: codec {plan.codec}, rates {', '.join(p.label for p in plan.rates)}; on {on}")
    print(f"config OK: {len(datasets)} dataset(s), {len(plans)} method(s)")


def cmd_train_adapter(args) -> None:
    from .adapter.train import AdapterTraining, train_adapter

    task_settings = {key: value for key, value in (("min_size", args.task_min_size),
                                                   ("max_size", args.task_max_size)) if value is not None}
    settings = AdapterTraining(
        base=args.base, quality=args.quality, images=Path(args.images), annotations=Path(args.annotations),
        out=Path(args.out), base_weights=args.base_weights, task=args.task, task_weights=args.task_weights,
        task_settings=task_settings, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lambda_h=args.lambda_h, lambda_m=args.lambda_m, crop=args.crop or None, flip=not args.no_flip,
        width=args.width, device=args.device, seed=args.seed, resume=args.resume, finetune_codec=args.finetune_codec,
        checkpoint_every=args.checkpoint_every, log=Path(args.log) if args.log else None,
        progress=not args.quiet)
    result = train_adapter(settings)
    last = ", ".join(f"{k} {result.last[k]:.4g}" for k in ("loss", "bpp", "mse", "task") if k in result.last)
    print(f"{result.checkpoint}: {result.steps_done} step(s){'; last ' + last if last else ''}; log {result.log}")


def _float_list(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers") from None
    return values


def cmd_train_glc(args) -> None:
    from .glc.train import GLCTraining, train_glc

    settings = GLCTraining(
        stage=args.stage, images=Path(args.images), out=Path(args.out), init=args.init, config=args.config,
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, flip=not args.no_flip, lr=args.lr,
        lambdas=_float_list(args.lambdas, "--lambdas") if args.lambdas else None, beta=args.beta,
        lambda_lpips=args.lambda_lpips, lambda_gan=args.lambda_gan, gan_weight_max=args.gan_weight_max,
        disc_lr=args.disc_lr, disc_width=args.disc_width, disc_layers=args.disc_layers, lpips_net=args.lpips_net,
        lpips_weights=args.lpips_weights, clip_norm=args.clip_norm, device=args.device, seed=args.seed,
        resume=args.resume, checkpoint_every=args.checkpoint_every, log=Path(args.log) if args.log else None,
        progress=not args.quiet)
    result = train_glc(settings)
    last = ", ".join(f"{k} {result.last[k]:.4g}" for k in ("loss", "bpp", "latent_mse", "l1", "lpips", "code_ce")
                     if k in result.last)
    print(f"{result.checkpoint}: {result.steps_done} step(s){'; last ' + last if last else ''}; log {result.log}")


# -- parser --------------------------------------------------------------------------------------------
def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec", required=True, help="registered codec name (ulbc codecs)")
    p.add_argument("--method", help="method name in the results (default: the codec name)")
    p.add_argument("--rate", type=float, required=True, help="rate point in the codec's knob")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="encoder option (repeatable)")
    p.add_argument("--options", metavar="JSON", help="encoder options as a JSON object")


def _add_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--items-per-job", type=int, required=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_threads_arg(p: argparse.ArgumentParser, items: bool = False) -> None:
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads for the decoders' tensor maths (default: the library's own choice, all "
                        "cores; on a busy machine 1 is often faster)"
                        + ("; also the items decoded at once by thread-safe decoders (default: every CPU "
                           "this job may use)" if items else ""))
    _add_decoder_arg(p)


def _add_decoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", choices=DECODERS, help=f"decoder of the overfitted codecs (coolchic, lottery): "
                   f"compiled (default) or reference, the torch fixed-point decoder that specifies it (sets {DECODER_ENV})")


def limit_cpu_threads(threads: int) -> None:
    """Cap the intra-op threads of the numeric libraries, before or after they are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _add_bd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("metrics", help="metrics.parquet of a study")
    p.add_argument("--dataset-metrics", help="dataset_metrics.parquet of the study (FID, KID), if it measured them")
    p.add_argument("--anchor", default="hevc-intra", help="method the BD-rates are measured against")
    p.add_argument("--interpolation", default="akima", choices=("akima", "pchip", "cubic"),
                   help="curve through the rate points: akima and pchip need 2 points, cubic (the original "
                   "Bjøntegaard fit) 4; default akima")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", action="append", help="metric to measure (repeatable; default psnr and ms-ssim)")
    p.add_argument("--metric-options", type=_json_object, default={}, metavar="JSON",
                   help='options per metric, e.g. \'{"fid": {"patch_size": 64}}\'')
    p.add_argument("--features-out", help="features file of the dataset-level metrics (fid, kid) of the shard")


#: Help of the options many commands share, filled in where a command gives none of its own.
COMMON_HELP = {
    "device": "where to run: auto (a GPU when there is one), cpu, cuda or cuda:N",
    "seed": "seed of the encoder's randomness: the same seed gives the same bytes",
    "quiet": "no progress output",
    "json": "print JSON instead of the table",
    "verbose": "also each entry's description and options",
    "on_error": "fail: stop at the first item that fails; record: log its error and go on (the row says failed)",
    "manifest": "manifest Parquet of the dataset (from ulbc manifest)",
    "shard": "shard number of the manifest, from 0",
    "items_per_job": "items per shard (the study's items_per_job)",
    "out_log": "JSON-lines log written for the items (status, sizes, times)",
    "encode_log": "the log encode-shard wrote for this pack",
    "decode_log": "the log decode-shard wrote for this pack",
    "config_hash": "hash of the study config, recorded in every row",
    "codec": "registered codec name (see ulbc codecs)",
    "option": "codec option KEY=VALUE (repeatable; ulbc codecs -v lists them)",
    "options": "codec options as a JSON object",
    "dataset": "dataset name in the study",
    "datasets_dir": "folder of the datasets (downloads and local copies)",
    "batch_size": "images per step",
    "lr": "Adam learning rate",
    "checkpoint_every": "write the checkpoint every N steps (and after the last)",
}
#: Help of positional arguments and of options whose meaning depends on the command.
COMMAND_HELP = {
    ("encode", "input"): "image file (PNG, JPEG, ...), or for a video codec a folder of frames or a YUV file",
    ("encode", "output"): "bitstream file to write",
    ("decode", "input"): "bitstream file (nothing else is read)",
    ("decode", "output"): "PNG to write (a new folder of PNGs for a clip)",
    ("eval", "reference"): "original image",
    ("eval", "candidate"): "bitstream file (decoded first) or decoded image",
    ("extract", "pack"): "shard pack (.zip of bitstreams)",
    ("extract", "item"): "item to write out (default: list the pack)",
    ("extract", "output"): "where to write the item's bitstream (default: its name, here)",
    ("fetch", "name"): "registered dataset (ulbc datasets list)",
    ("fetch", "dest"): "folder the dataset is unpacked into",
    ("fetch", "allow_unverified"): "accept a download whose checksum the registry does not pin",
    ("fetch", "names"): "registered weights entries (ulbc weights list)",
    ("import", "paths"): "weight files or wheels to copy in",
    ("verify", "names"): "entries to check (default: every registered one)",
    ("path", "name"): "registered weights entry",
    ("manifest", "out"): "manifest Parquet to write",
    ("extract-frames", "out_dir"): "folder of the extracted frames",
    ("encode-shard", "out_pack"): "bitstream pack to write (.zip)",
    ("decode-shard", "pack"): "bitstream pack from encode-shard",
    ("decode-shard", "out_decoded"): "pack of decoded PNGs to write",
    ("metrics-shard", "decoded"): "pack of decoded PNGs from decode-shard",
    ("metrics-shard", "out"): "Parquet of the shard's metric rows",
    ("evaluate-shard", "pack"): "bitstream pack from encode-shard",
    ("evaluate-shard", "out"): "Parquet of the shard's metric rows",
    ("aggregate", "shards"): "shard Parquets",
    ("aggregate", "out"): "metrics.parquet to write",
    ("aggregate", "engine"): "dask (parallel, out of core) or pyarrow (in memory)",
    ("dataset-metrics", "features"): "features files of evaluate-shard",
    ("dataset-metrics", "out"): "dataset_metrics.parquet to write",
    ("analyse", "outdir"): "folder of the tables and plots",
    ("check-config", "config"): "study config (YAML)",
}
#: Commands the workflow's rules call; --help lists them apart from the user's commands.
WORKFLOW_STAGES = ("manifest", "extract-frames", "encode-shard", "decode-shard", "metrics-shard", "evaluate-shard",
                   "aggregate", "dataset-metrics", "analyse", "visual-comparison")


def _fill_help(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Give every argument a help line: the command's own, else COMMAND_HELP, else COMMON_HELP."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                _fill_help(subparser, name)
        elif action.help is None:
            action.help = COMMAND_HELP.get((command, action.dest), COMMON_HELP.get(action.dest))


class _TopParser(argparse.ArgumentParser):
    """``ulbc --help`` with the user's commands and the workflow stages in two lists."""

    def format_help(self) -> str:
        commands = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        width = max(len(c.dest) for c in commands._choices_actions) + 2
        wrap = textwrap.TextWrapper(width=LISTING_WIDTH, subsequent_indent=" " * (width + 4))

        def listing(stage: bool) -> list[str]:
            return [wrap.fill(f"  {c.dest:<{width}}  {c.help}") for c in commands._choices_actions
                    if (c.dest in WORKFLOW_STAGES) == stage]

        return "\n".join([self.format_usage().rstrip(), "", textwrap.fill(self.description or "", LISTING_WIDTH), "", "commands:",
                          *listing(False), "", "workflow stages (what the Snakemake rules call):", *listing(True), "",
                          "options:", "  -h, --help  show this help message and exit",
                          "  --version   show the version and exit", "",
                          "ulbc COMMAND --help describes a command and every option it takes.", ""])


def build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(prog="ulbc", description="ulbc: ultra-low-bitrate compression studies. Single-file tools, "
                        "and the stages the workflow's rules call.")
    parser.add_argument("--version", action="version", version=f"ulbc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)

    p = sub.add_parser("encode", help="encode one image (or, for a video codec, a clip) into a ulbc bitstream file")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--codec", required=True)
    p.add_argument("--rate", type=float, help="rate point (default: middle of the codec's grid)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--options", metavar="JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--recon", metavar="PNG", help="also write the encoder's own reconstruction (PNG; a folder for a clip)")
    p.add_argument("--frames", type=int, help="video codecs: code the first N frames of the clip")
    p.add_argument("--raw", metavar="WxH[:PIX_FMT[:FPS]]", help="video codecs: geometry of a headerless YUV input")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a ulbc bitstream file to PNG, or a clip to a new folder of PNGs (reads only the bitstream)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--device", default="auto")
    p.add_argument("--for", dest="target", choices=("human", "machine"), default="human",
                   help="who the image is for: viewing (default), or a vision model (the <base>+adapter codecs "
                        "pass the decode through the adapter their file names)")
    _add_threads_arg(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("eval", help="metrics of a bitstream (decoded) or an image against a reference")
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--metric", action="append", help="per-item metric (repeatable; default psnr and ms-ssim)")
    p.add_argument("--metric-options", type=_json_object, default={}, metavar="JSON",
                   help='options per metric, e.g. \'{"flip": {"pixels_per_degree": 42}}\'')
    p.add_argument("--device", default="auto")
    _add_decoder_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="list a shard pack, or write one item's bitstream file")
    p.add_argument("pack")
    p.add_argument("item", nargs="?")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("codecs", help="registered codecs, their rate grids and GPU use")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_codecs)

    p = sub.add_parser("metrics", help="registered metrics: level, GPU use, weights, columns")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="also each metric's description and options")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("datasets", help="dataset registry")
    dsub = p.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    q = dsub.add_parser("list", help="registered datasets")
    q.set_defaults(func=cmd_datasets_list)
    q = dsub.add_parser("fetch", help="download (checksummed) and unpack a registry dataset")
    q.add_argument("name")
    q.add_argument("--dest", default="resources/datasets")
    q.add_argument("--allow-unverified", action="store_true")
    q.add_argument("--done-file", help="write this file when the dataset is complete (for Snakemake)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_datasets_fetch)

    p = sub.add_parser("weights", help="pretrained weight files of the metrics and codecs: list, fetch, import, "
                       "verify")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = wsub.add_parser("list", help="registered weight files and whether a verified copy is here")
    q.add_argument("patterns", nargs="*", metavar="PATTERN", help="only names matching these globs "
                   "('compressai-mbt2018-*')")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_weights_list)
    q = wsub.add_parser("fetch", help="download weight files (checksummed, resumable) into the cache; "
                        "$ULBC_WEIGHTS_MIRROR is tried first")
    q.add_argument("names", nargs="+", metavar="NAME")
    q.add_argument("--url", help="download from this URL instead (one NAME only)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_weights_fetch)
    q = wsub.add_parser("import", help="copy local weight files into the cache (identified by sha256), "
                        "e.g. on a machine without network")
    q.add_argument("paths", nargs="+", metavar="PATH")
    q.add_argument("--name", help="the entry the file must be (default: found by its sha256)")
    q.set_defaults(func=cmd_weights_import)
    q = wsub.add_parser("verify", help="check weight files (default: all); exit status 2 if any is missing or bad")
    q.add_argument("names", nargs="*", metavar="NAME")
    q.add_argument("--record", metavar="OUT.json", help="when all verify, write {name: {file, path, sha256}} here")
    q.set_defaults(func=cmd_weights_verify)
    q = wsub.add_parser("path", help="print the verified local file of one entry")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_weights_path)

    p = sub.add_parser("manifest", help="build a dataset's manifest (Parquet)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--source", required=True, metavar="JSON", help='e.g. {"source": "local", "path": "imgs"}')
    p.add_argument("--datasets-dir", default="resources/datasets")
    p.add_argument("--out", required=True)
    p.add_argument("--frames-dir", help="a video dataset's extracted frames (from extract-frames)")
    p.add_argument("--images-dir", help="where an image dataset with max_side gets its downscaled PNGs")
    p.add_argument("--out-clips", help="also write the clip manifest (what video codecs code)")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("extract-frames", help="extract a video dataset's clips into lossless PNG frames")
    p.add_argument("--dataset", required=True)
    p.add_argument("--source", required=True, metavar="JSON", help='e.g. {"source": "sample-clip", "video": {"frames": 8}}')
    p.add_argument("--datasets-dir", default="resources/datasets")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_extract_frames)

    p = sub.add_parser("encode-shard", help="encode one shard into a bitstream pack")
    _add_shard_args(p)
    _add_method_args(p)
    p.add_argument("--out-pack", required=True)
    p.add_argument("--out-log", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="fail")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode_shard)

    p = sub.add_parser("decode-shard", help="decode a bitstream pack (reads only the pack)")
    p.add_argument("--pack", required=True)
    p.add_argument("--out-decoded", required=True)
    p.add_argument("--out-log", required=True)
    p.add_argument("--out-machine", help="also write the machine decodes (codecs that have one) to this pack")
    p.add_argument("--device", default="auto")
    p.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="fail")
    p.add_argument("--quiet", action="store_true")
    _add_threads_arg(p, items=True)
    p.set_defaults(func=cmd_decode_shard)

    p = sub.add_parser("metrics-shard", help="per-item metrics of one shard -> Parquet")
    _add_shard_args(p)
    _add_method_args(p)
    p.add_argument("--encode-log", required=True)
    p.add_argument("--decode-log", required=True)
    p.add_argument("--decoded", required=True)
    p.add_argument("--decoded-machine", help="the machine decodes (decode-shard --out-machine): adds the "
                   "<method>@machine rows")
    p.add_argument("--out", required=True)
    _add_metric_args(p)
    p.add_argument("--config-hash", default="")
    p.add_argument("--device", default="cpu", help="device of the metrics that can use a GPU")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_metrics_shard)

    p = sub.add_parser("evaluate-shard", help="decode a shard's pack and measure it -> Parquet "
                       "(decode-shard + metrics-shard, decoded images in $TMPDIR)")
    _add_shard_args(p)
    _add_method_args(p)
    p.add_argument("--pack", required=True)
    p.add_argument("--encode-log", required=True)
    p.add_argument("--out", required=True)
    _add_metric_args(p)
    p.add_argument("--config-hash", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="fail")
    _add_threads_arg(p, items=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate_shard)

    p = sub.add_parser("aggregate", help="gather shard Parquets into one metrics.parquet")
    p.add_argument("shards", nargs="*")
    p.add_argument("--shard-list", help="file with one shard path per line")
    p.add_argument("--out", required=True)
    p.add_argument("--engine", choices=("dask", "pyarrow"), default="dask")
    p.add_argument("--allow-mixed-versions", action="store_true",
                   help="aggregate rows from different code versions (the tables then say so)")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("dataset-metrics", help="dataset-level metrics (FID, KID) per rate point from the features "
                       "files of evaluate-shard -> Parquet")
    p.add_argument("features", nargs="*")
    p.add_argument("--features-list", help="file with one features path per line")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_dataset_metrics)

    p = sub.add_parser("analyse", help="summary, BD-rate tables and RD plots from metrics.parquet")
    _add_bd_args(p)
    p.add_argument("--outdir", required=True)
    p.add_argument("--reference-results", type=_json_object, metavar="JSON",
                   help='published curves to draw and BD-rate, as in the config: '
                        '\'{"NAME": {"dataset": "kodak", "file": "curve.json"}}\' (CompressAI result files)')
    p.add_argument("--dataset-sources", type=_json_object, metavar="JSON", default={},
                   help='where each dataset comes from, for the datasets table: \'{"kodak": "registry: kodak"}\'')
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("visual-comparison", help="decoded crops of a few items per dataset, every "
                                                 "method at the rate nearest each target bpp -> HTML pages")
    p.add_argument("metrics", help="metrics.parquet of the study")
    p.add_argument("--results", required=True, help="the study's results folder (bitstreams/ and manifests/ in it)")
    p.add_argument("--items-per-job", type=_positive_int, required=True, help="the study's items_per_job (locates packs)")
    p.add_argument("--outdir", required=True, help="folder written whole: index.json, crops/, <dataset>.html")
    p.add_argument("--items", type=int, default=2, help="items shown per dataset (default 2; 0: none)")
    p.add_argument("--select", choices=("first", "extremes"), default="first",
                   help="first: the first items of the manifest; extremes: the most and least compressible in turn")
    p.add_argument("--target-bpp", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5], metavar="BPP",
                   help="columns: the rate point nearest each (within a factor 2) is shown")
    p.add_argument("--crop", type=int, default=192, help="crop side in pixels (the item's most detailed window)")
    p.add_argument("--frames", type=_positive_int, default=3, help="frames per clip strip")
    p.add_argument("--anchor", help="method listed first")
    p.add_argument("--device", default="cpu", help="device the decoders run on (cpu, cuda, auto)")
    p.set_defaults(func=cmd_visual_comparison)

    p = sub.add_parser("export", help="write a study's curves in another tool's layout")
    export = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = export.add_parser("compressai-json", help="one CompressAI eval_model-style JSON per (dataset, method)")
    q.add_argument("metrics", help="metrics.parquet of a study")
    q.add_argument("--dataset-metrics", help="dataset_metrics.parquet of the study (FID, KID), if any")
    q.add_argument("-o", "--out", required=True, help="folder; files go to OUT/<dataset>/<method>.json")
    q.set_defaults(func=cmd_export_compressai_json)

    p = sub.add_parser("bdrate", help="BD-rate of every method against an anchor, from metrics.parquet")
    _add_bd_args(p)
    p.add_argument("--out", help="also write the whole table, every column at full precision (.csv or .html)")
    p.add_argument("--width", type=_positive_int, default=100,
                   help="widest line printed, in characters (metrics that do not fit go to a further block)")
    p.set_defaults(func=cmd_bdrate)

    p = sub.add_parser("train", help="train a network of ulbc: the dynamic adapter of a learned codec's decode "
                       "for machine vision (ICIP 2024), or GLC's latent coder (stages II and III, CVPR 2024)")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    q = tsub.add_parser("adapter", help="train g_t, x̄ = g_t(x̂), for a detector on COCO-format data: "
                        "R + λ_h·MSE + λ_m·(detector losses)")
    q.add_argument("--base", required=True, help="CompressAI architecture of the codec (e.g. cheng2020-anchor)")
    q.add_argument("--base-weights", metavar="NAME|PATH",
                   help="weights name or checkpoint file (default: the zoo's MSE model of --quality)")
    q.add_argument("--quality", type=_positive_int, required=True, help="the codec's quality (sets the default λ_h)")
    q.add_argument("--task", default="maskrcnn_resnet50_fpn", help="torchvision detection architecture")
    q.add_argument("--task-weights", metavar="NAME", help="weights name (default: its registered COCO file)")
    q.add_argument("--task-min-size", type=_positive_int, help="the detector's resize: shorter side (default 800)")
    q.add_argument("--task-max-size", type=_positive_int, help="the detector's resize: longer side limit (default 1333)")
    q.add_argument("--images", required=True, help="folder of the COCO images")
    q.add_argument("--annotations", required=True, help="COCO instances JSON")
    q.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file (rewritten atomically)")
    q.add_argument("--log", help="JSON-lines log of the loss terms per step (default: CKPT.jsonl)")
    q.add_argument("--steps", type=_positive_int, default=10000, help="steps in all, a resumed run included")
    q.add_argument("--batch-size", type=_positive_int, default=8)
    q.add_argument("--lr", type=float, default=1e-4)
    q.add_argument("--lambda-h", type=float, help="weight of the MSE on the 0-255 scale (default: CompressAI's λ "
                   "of the quality)")
    q.add_argument("--lambda-m", type=float, default=1.0, help="weight of the detector's losses")
    q.add_argument("--crop", type=int, default=256, help="training crop side in pixels (0: whole images)")
    q.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    q.add_argument("--width", type=_positive_int, default=64, help="the adapter's feature channels")
    q.add_argument("--device", default="auto")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--resume", action="store_true", help="continue the training in CKPT")
    q.add_argument("--finetune-codec", action="store_true", help="train the codec too, end to end")
    q.add_argument("--checkpoint-every", type=_positive_int, default=500, metavar="N")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_train_adapter)

    from .glc.config import CONFIG_IDS as GLC_CONFIGS

    q = tsub.add_parser(
        "glc", help="train GLC (generative latent coding): stage 2, the latent transform coder with the VQ-VAE "
        "frozen (bpp + λ_q·latent MSE + β·code CE + z codebook loss); stage 3, pixel fine-tuning (bpp + "
        "λ_q·(L1 + λ_lpips·LPIPS + λ_gan·adaptive hinge GAN) + β·code CE + z codebook loss); one rate "
        "index per step, cycling")
    q.add_argument("--stage", type=int, choices=(2, 3), required=True,
                   help="2: the latent coder, VQ-VAE frozen; 3: also the generator, with LPIPS and the GAN term")
    q.add_argument("--images", required=True, help="folder of training images (PNG, JPEG; searched recursively)")
    q.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file, {'net_g': ...} as the release "
                   "(rewritten atomically)")
    q.add_argument("--init", metavar="NAME|PATH|random", help="GLC checkpoint to start from: a weights name or "
                   "a file (the release's, or a stage-2 CKPT for stage 3); 'random' for tests (not needed with "
                   "--resume)")
    q.add_argument("--config", choices=GLC_CONFIGS, default="glc-image", help="network sizes (default glc-image)")
    q.add_argument("--log", help="JSON-lines log of the loss terms per step (default: CKPT.jsonl)")
    q.add_argument("--steps", type=_positive_int, default=10000, help="steps in all, a resumed run included")
    q.add_argument("--batch-size", type=_positive_int, default=8)
    q.add_argument("--crop", type=int, default=256, help="training crop side, a multiple of 64; with code "
                   "prediction (β > 0) the transformers' size: 256 for glc-image, 64 for glc-tiny")
    q.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    q.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the GLC network")
    q.add_argument("--lambdas", metavar="L0,L1,L2,L3", help="λ_q of each rate index (default 0.5,1,2,4: a "
                   "starting point, the authors' values are not published; calibrate on the logged bpp)")
    q.add_argument("--beta", type=float, default=1.0, help="weight of the code-prediction cross-entropy "
                   "(0: none)")
    q.add_argument("--lambda-lpips", type=float, default=1.0, help="stage 3: weight of LPIPS")
    q.add_argument("--lambda-gan", type=float, default=1.0, help="stage 3: weight of the adaptive GAN term "
                   "(0: no discriminator)")
    q.add_argument("--gan-weight-max", type=float, default=1.0, help="stage 3: clamp of the adaptive GAN weight")
    q.add_argument("--disc-lr", type=float, help="stage 3: the discriminator's learning rate (default: --lr)")
    q.add_argument("--disc-width", type=_positive_int, default=64, help="stage 3: the PatchGAN's first width")
    q.add_argument("--disc-layers", type=_positive_int, default=4, help="stage 3: the PatchGAN's stride-2 layers")
    q.add_argument("--lpips-net", choices=("vgg", "alex", "squeeze"), default="vgg",
                   help="stage 3: LPIPS backbone (the release trains with vgg)")
    q.add_argument("--lpips-weights", default="default", metavar="NAME|random",
                   help="stage 3: weights entry of the LPIPS backbone (default: torchvision's ImageNet file of "
                        "--lpips-net); 'random' for tests")
    q.add_argument("--clip-norm", type=float, default=1.0, help="gradient norm clipping (0: none)")
    q.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    q.add_argument("--seed", type=int, default=0, help="seed of the random initial values, the image order and the crops")
    q.add_argument("--resume", action="store_true", help="continue the training in CKPT")
    q.add_argument("--checkpoint-every", type=_positive_int, default=500, metavar="N",
                   help="write CKPT every N steps (and after the last)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_train_glc)

    p = sub.add_parser("check-config", help="validate a study config without running anything")
    p.add_argument("config")
    p.add_argument("--json", action="store_true", help="print the study's datasets, methods and rate points as JSON")
    p.set_defaults(func=cmd_check_config)
    _fill_help(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        limit_cpu_threads(args.threads)
    if getattr(args, "decoder", None):
        os.environ[DECODER_ENV] = args.decoder
    try:
        args.func(args)
    except UlbcError as exc:
        print(f"ulbc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulbc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``ulbc codecs | head``): not an error of ulbc's; stdout must not be flushed again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
