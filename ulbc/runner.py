"""Shard jobs: encode -> decode -> metrics for one (dataset, method, rate point, shard).

Each stage reads only what a real deployment would have: encoding reads the original images, decoding
reads only the bitstream pack, and the metrics stage compares the decoded images with the originals.
The workflow runs two jobs per shard: :func:`encode_shard`, and :func:`evaluate_shard` (decode, then
metrics, with the decoded images in a scratch folder), so re-measuring never re-encodes and a study
has two jobs per shard, not three. Every output is written atomically, so a killed job leaves
nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from . import __version__, bitstream
from .codecs import adapt_container, codec_for_id, decode_bitstream_data, get_codec  # noqa: F401 (decode_bitstream_data re-exported)
from .errors import InputError, UlbcError
from .features import FeatureCollector, write_features
from .fsutil import atomic_path
from .imageio import decode_png_bytes, encode_png, load_rgb
from .manifest import clip_hash, read_manifest, shard_rows
from .metrics import Metric, build_metrics, compute_metrics, item_columns
from .pack import PackReader, PackWriter, bitstream_entry, decoded_entry, decoded_frame_entry, write_pack
from .provenance import (canonical_json, code_digest, derive_seed, describe_device, encode_digest, git_commit,
                         library_versions, resolve_device)
from .schema import BITSTREAM_STAT_COLUMNS, ENCODER_RATE_COLUMNS, METRIC_ROW_SCHEMA, target_method

#: Encode-log metadata key holding the encode digest (provenance.encode_digest) the shard was encoded under.
ENCODE_DIGEST_KEY = "encode_digest"
ENCODE_LOG_SCHEMA = pa.schema(
    [
        ("item", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("encode_s", pa.float64()),
        ("seed", pa.int64()),
        ("device", pa.string()),
        ("codec_version", pa.string()),
        ("encode_info", pa.string()),
    ]
)
DECODE_LOG_SCHEMA = pa.schema(
    [
        ("item", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("decode_s", pa.float64()),
        ("bytes", pa.int64()),
        ("payload_bytes", pa.int64()),
        ("codec", pa.string()),
        ("device", pa.string()),
    ]
    + [(name, pa.float64()) for name in BITSTREAM_STAT_COLUMNS]
    # The machine decode (codecs with targets "machine"): seconds of the adapter after the decode,
    # and why it failed ("" when it did not, or the codec has none).
    + [("adapt_s", pa.float64()), ("machine_error", pa.string())]
)


@dataclass(frozen=True)
class MethodSpec:
    """One method at one rate point, as the config names it."""

    method: str
    codec: str
    rate: float
    options: dict[str, Any] = field(default_factory=dict)

    def build(self):
        return get_codec(self.codec, **self.options)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, mininterval=2.0)


def _one_line(exc: BaseException, context: str) -> str:
    if isinstance(exc, UlbcError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{context}: {type(exc).__name__}: {first}"


def _write_table(rows: list[dict], schema: pa.Schema, dest: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    if metadata:
        table = table.replace_schema_metadata({f"ulbc.{k}": str(v) for k, v in metadata.items()})
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _encoding_digest(path: str | os.PathLike) -> str:
    """The encode digest an encode log was written under ('' for logs older than the digest)."""
    meta = pq.read_schema(path).metadata or {}
    return meta.get(f"ulbc.{ENCODE_DIGEST_KEY}".encode(), b"").decode()


def _read_log(path: str | os.PathLike, schema: pa.Schema) -> dict[str, dict]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: unreadable shard log ({exc})") from None
    if not table.schema.equals(schema, check_metadata=False):
        raise InputError(f"{path}: shard log has an unexpected schema")
    return {row["item"]: row for row in table.to_pylist()}


def load_verified(root: Path, row) -> tuple[Path, Any]:
    """Load an item and check it is the file the manifest describes (same hash, same size)."""
    path = root / row.path
    if not path.is_file():
        raise InputError(f"{path}: listed in the manifest but missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != row.sha256:
        raise InputError(f"{path}: changed since the manifest was built (sha256 {digest[:12]}, expected {row.sha256[:12]})")
    image = load_rgb(path)
    if image.shape[:2] != (row.height, row.width):
        raise InputError(f"{path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the manifest")
    return path, image


def clip_frame_paths(root: Path, row) -> list[Path]:
    """The frame files of a clip-manifest row: its folder's PNGs, or the one image of an image dataset."""
    path = root / row.path
    if int(row.frames) == 1 and path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: listed in the clip manifest but missing")
    frames = sorted(path.glob("*.png"))
    if len(frames) != int(row.frames):
        raise InputError(f"{path}: holds {len(frames)} frames, the manifest says {int(row.frames)}")
    return frames


def load_clip_verified(root: Path, row) -> tuple[Path, np.ndarray]:
    """Load a clip-manifest row as (T, H, W, 3) frames, checked against the manifest's hash and size."""
    paths = clip_frame_paths(root, row)
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    digest = hashes[0] if len(paths) == 1 and paths[0] == root / row.path else clip_hash(hashes)
    where = root / row.path
    if digest != row.sha256:
        raise InputError(f"{where}: changed since the manifest was built (sha256 {digest[:12]}, expected {row.sha256[:12]})")
    frames = np.stack([load_rgb(p) for p in paths])
    if frames.shape[1:3] != (row.height, row.width):
        raise InputError(f"{where}: frame size {frames.shape[2]}x{frames.shape[1]} differs from the manifest")
    return where, frames


def encode_shard(
    manifest_path: str | os.PathLike,
    shard: int,
    items_per_job: int,
    spec: MethodSpec,
    out_pack: str | os.PathLike,
    out_log: str | os.PathLike,
    *,
    seed: int = 0,
    device: str = "auto",
    on_error: str = "fail",
    progress: bool = True,
) -> int:
    """Encode the shard's items into one pack; returns how many items were encoded.

    ``on_error="fail"`` stops at the first item (or batch) that fails, with its one-line error;
    ``"record"`` logs the item as ``encode_error`` and goes on. A batch of same-size items that fails
    under ``"record"`` is retried (:func:`encode_isolating_failures`), so only its failing items get
    error rows; each retry and failure is one line on stderr.
    """
    manifest, root, dataset = read_manifest(manifest_path)
    rows = list(shard_rows(manifest, shard, items_per_job).itertuples(index=False))
    codec = spec.build()
    label = codec.rate_label(codec.check_rate(spec.rate))
    dev = resolve_device(device, codec.uses_gpu)
    dev_name = describe_device(dev)
    version = codec.version()
    digest = encode_digest(spec.codec)  # the code this run encodes with, recorded in the log
    load = load_clip_verified if codec.media == "video" else load_verified
    entries: dict[str, bytes] = {}
    log: dict[str, dict] = {}

    def record_error(row, exc: BaseException, seed_: int) -> None:
        message = _one_line(exc, f"{root / row.path}: {spec.codec} encoder")
        if on_error == "fail":
            raise UlbcError(message) from exc
        log[row.item] = dict(item=row.item, status="encode_error", error=message, encode_s=math.nan,
                             seed=seed_, device=dev_name, codec_version=version, encode_info="")

    def encode_group(group: list[_Pending]) -> list[tuple[_Pending, Any, float]]:
        start = time.perf_counter()
        results = codec.encode_batch([p.image for p in group], spec.rate, device=dev, seeds=[p.seed for p in group],
                                     names=[p.name for p in group])
        elapsed = (time.perf_counter() - start) / len(group)
        return [(p, result, elapsed) for p, result in zip(group, results)]

    def say(line: str) -> None:
        tqdm.write(f"ulbc: encode {spec.method} {label}: {line}", file=sys.stderr)

    bar = _progress(None, len(rows), f"encode {spec.method} {label}", progress)
    for batch in encode_batches(rows, codec.batch_size(dev)):
        pending: list[_Pending] = []
        for row in batch:
            item_seed = derive_seed(seed, dataset, row.item, spec.method, label)
            try:
                path, image = load(root, row)
            except Exception as exc:  # noqa: BLE001 - recorded or re-raised as one line
                record_error(row, exc, item_seed)
                continue
            pending.append(_Pending(row, item_seed, image, str(path)))
        if pending:
            try:
                encoded = encode_group(pending)
            except Exception as exc:  # noqa: BLE001
                if on_error == "fail" or len(pending) == 1:
                    for p in pending:
                        record_error(p.row, exc, p.seed)
                    encoded = []
                else:
                    encoded, failed = encode_isolating_failures(pending, exc, encode_group, say)
                    for p, item_exc in failed:
                        record_error(p.row, item_exc, p.seed)
            for p, result, elapsed in encoded:
                entries[p.row.item] = result.data
                log[p.row.item] = dict(item=p.row.item, status="ok", error="", encode_s=elapsed, seed=p.seed,
                                       device=dev_name, codec_version=version,
                                       encode_info=canonical_json(result.info) if result.info else "")
        bar.update(len(batch))
    bar.close()
    # Pack and log follow the manifest order, whatever order the batches ran in.
    write_pack(out_pack, [(bitstream_entry(r.item), entries[r.item]) for r in rows if r.item in entries])
    _write_table([log[r.item] for r in rows], ENCODE_LOG_SCHEMA, out_log, metadata={ENCODE_DIGEST_KEY: digest})
    return len(entries)


@dataclass(frozen=True, eq=False)
class _Pending:
    """An item loaded and ready to encode (compared by identity)."""

    row: Any
    seed: int
    image: np.ndarray
    name: str


def encode_isolating_failures(group: list, error: BaseException, encode, say) -> tuple[list, list]:
    """Retry the items of a batch that failed as a whole, so that only the failing items fail.

    ``encode(items)`` encodes items as one batch and returns ``(item, result, seconds)`` triples or
    raises. The batch is bisected until each failing item stands alone (its error then names it
    alone); one failure in a batch of 8 costs 6 smaller batches and one re-encode. The other items
    are then encoded again together, in the batch's composition minus the failing items: what they
    would have got had those items failed to load. Why not keep the parts' results: an overfitted
    model depends only on its image and seed (own generator, gradient clip, NaN recovery and step
    search; seeds are per item), but floating-point kernels may round differently for another batch
    size (bmm and grouped convolutions, notably on a GPU; on the CPU, coolchic and lottery gave
    identical bytes for an image alone and in batches of 2 and 3). The parts' results are used only
    when that re-encode fails too, or when no item fails alone (the batch as a whole failed, e.g.
    out of memory). The retries depend only on which encodes fail, so a rerun gives the same bytes.

    Returns (encoded triples in ``group`` order, ``(item, exception)`` for each failing item).
    """
    say(f"a batch of {len(group)} failed ({_one_line(error, 'encoder')}); retrying its items: "
        + ", ".join(p.row.item for p in group))
    parts: list[list] = []  # (item, result, seconds) of each part that encoded
    failed: list[tuple] = []

    def probe(part: list) -> None:
        try:
            parts.append(encode(part))
        except Exception as exc:  # noqa: BLE001 - bisected, or recorded by the caller
            if len(part) == 1:
                failed.append((part[0], exc))
                say(f"{part[0].row.item} failed: {_one_line(exc, 'encoder')}")
            else:
                probe(part[: len(part) // 2])
                probe(part[len(part) // 2 :])

    probe(group[: len(group) // 2])
    probe(group[len(group) // 2 :])
    failing = {p for p, _ in failed}
    survivors = [p for p in group if p not in failing]
    # A part that holds exactly the survivors already encoded them in that composition.
    done = next((part for part in parts if [t[0] for t in part] == survivors), None)
    if done is None and failed and survivors:
        try:
            done = encode(survivors)
        except Exception as exc:  # noqa: BLE001 - the parts' results stand in
            say(f"the {len(survivors)} other items failed again together ({_one_line(exc, 'encoder')}); "
                "keeping their results from the smaller batches")
    if done is None:
        if not failed:
            say("no item fails in a smaller batch; keeping the smaller batches' results")
        by_item = {t[0]: t for part in parts for t in part}
        done = [by_item[p] for p in survivors]
    return done, failed  # bisection visits the items in order, so failures are in group order


def encode_batches(rows: list, batch_size: int) -> list[list]:
    """Items to encode together: same-size items (sizes from the manifest) in chunks of
    ``batch_size``, in manifest order of each size's first item; singletons when batch_size is 1."""
    if batch_size <= 1:
        return [[row] for row in rows]
    by_size: dict[tuple[int, int], list] = {}
    for row in rows:
        by_size.setdefault((int(row.height), int(row.width)), []).append(row)
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def decode_workers(requested: int | None = None) -> int:
    """Threads a decode job uses for its items: ``requested``, else the CPUs this process may run on."""
    if requested:
        return max(1, int(requested))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_shard(
    pack_path: str | os.PathLike,
    out_decoded: str | os.PathLike,
    out_log: str | os.PathLike,
    *,
    device: str = "auto",
    on_error: str = "fail",
    progress: bool = True,
    workers: int = 1,
    out_machine: str | os.PathLike | None = None,
) -> int:
    """Decode every bitstream of a pack, reading nothing but the pack. Returns items decoded.

    Items whose codec has a thread-safe decoder (``Codec.threadsafe_decoder``: the overfitted
    codecs' compiled decoder) decode ``workers`` at a time in threads; results are written in pack
    order, with at most 2 x ``workers`` decoded images held at once. With ``out_machine``, the
    machine decodes of the codecs that have one (``<base>+adapter``) go to that pack, under the same
    entry names; its log columns ``adapt_s`` and ``machine_error`` say how each went."""
    log: list[dict] = []

    def decode_one(data: bytes, where: str):
        start = time.perf_counter()
        codec, container, image, dev = decode_bitstream_data(data, device=device, name=where)
        elapsed = time.perf_counter() - start
        adapted, adapt_s, machine_error = None, None, ""
        if out_machine is not None and "machine" in codec.targets:
            start = time.perf_counter()
            try:
                adapted = adapt_container(container, codec, image, name=where)
                adapt_s = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - the human decode stands; the machine rows say why
                if on_error == "fail":
                    raise
                machine_error = _one_line(exc, f"{where}: machine decode")
        return codec, container, image, dev, elapsed, adapted, adapt_s, machine_error

    def entries(item: str, image: np.ndarray):
        if image.ndim == 4:  # a clip: one lossless PNG per frame
            for index, frame in enumerate(image):
                yield decoded_frame_entry(item, index), encode_png(frame, compress_level=1)
        else:
            yield decoded_entry(item), encode_png(image, compress_level=1)

    with contextlib.ExitStack() as stack:
        pack = stack.enter_context(PackReader(pack_path))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        names = pack.names()

        def started():
            """(item, data, where, future or result or exception), in pack order."""
            for name in names:
                item = name[: -len(".ulb")] if name.endswith(".ulb") else name
                data = pack.read(name)
                where = f"{pack_path}:{name}"
                try:
                    parallel = workers > 1 and codec_for_id(bitstream.parse(data, where).codec_id, where).threadsafe_decoder
                    outcome = pool.submit(decode_one, data, where) if parallel else decode_one(data, where)
                except Exception as exc:  # noqa: BLE001
                    outcome = exc
                yield item, data, where, outcome

        def in_order():
            window: deque = deque()
            for entry in started():
                window.append(entry)
                if len(window) >= 2 * max(1, workers):
                    yield window.popleft()
            yield from window

        decoded_pack = stack.enter_context(PackWriter(out_decoded))
        machine_pack = stack.enter_context(PackWriter(out_machine)) if out_machine is not None else None
        for item, data, where, outcome in _progress(in_order(), len(names), f"decode {Path(pack_path).name}", progress):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                codec, container, image, dev, elapsed, adapted, adapt_s, machine_error = (
                    outcome.result() if isinstance(outcome, Future) else outcome)
            except Exception as exc:  # noqa: BLE001
                message = _one_line(exc, f"{where}: decoder")
                if on_error == "fail":
                    raise UlbcError(message) from exc
                log.append(dict(item=item, status="decode_error", error=message, decode_s=math.nan,
                                bytes=len(data), payload_bytes=None, codec=None, device=None,
                                **dict.fromkeys(BITSTREAM_STAT_COLUMNS), adapt_s=None, machine_error=""))
                continue
            stats = codec.bitstream_stats(container.params, container.payload, container.width, container.height)
            log.append(dict(item=item, status="ok", error="", decode_s=elapsed, bytes=len(data),
                            payload_bytes=len(container.payload), codec=codec.name, device=describe_device(dev),
                            **{k: stats.get(k) for k in BITSTREAM_STAT_COLUMNS}, adapt_s=adapt_s,
                            machine_error=machine_error))
            for entry, png in entries(item, image):
                decoded_pack.add(entry, png)
            if adapted is not None:
                for entry, png in entries(item, adapted):
                    machine_pack.add(entry, png)
        count = decoded_pack.count
    _write_table(log, DECODE_LOG_SCHEMA, out_log)
    return count


def _encoder_facts(encode_info: str) -> dict[str, Any]:
    """The row columns an encoder reports in its info: its rate estimates (bpp_estimated,
    bpp_paper) and codec_weights."""
    info = json.loads(encode_info) if encode_info else {}
    rates = {key: float(info[key]) if info.get(key) is not None else None for key in ENCODER_RATE_COLUMNS}
    return dict(rates, codec_weights=canonical_json(info["weights"]) if info.get("weights") else "")


def _clip_metrics(root: Path, row, record: dict, pack: PackReader, decoded_pack, metrics: list[Metric],
                  collector: FeatureCollector | None) -> list[dict]:
    """Per-frame metrics of a decoded clip: fills the clip row (mean over frames: the usual video
    PSNR is the mean of per-frame PSNR) and returns one row per frame. Dataset-level metrics see
    every frame of the clip."""
    paths = clip_frame_paths(root, row)
    _, originals = load_clip_verified(root, row)
    frame_rows, keys = [], []
    for index, (path, original) in enumerate(zip(paths, originals)):
        entry = decoded_frame_entry(row.item, index)
        if entry not in pack:
            raise InputError(f"{decoded_pack}: clip {row.item!r} has no decoded frame {index}")
        decoded = decode_png_bytes(pack.read(entry), f"{decoded_pack}:{entry}")
        values = compute_metrics(metrics, original, decoded)
        if collector is not None:
            collector.add(row.item, original, decoded)
        keys = list(values)
        frame_rows.append(dict(record, item=f"{row.item}/{path.stem}", level="frame", frames=1, bytes=None,
                               payload_bytes=None, bpp=math.nan, payload_bpp=math.nan,
                               **dict.fromkeys(ENCODER_RATE_COLUMNS),
                               encode_s=math.nan, decode_s=math.nan, **dict.fromkeys(BITSTREAM_STAT_COLUMNS),
                               **values, status="ok", error=""))
    means = {k: float(np.mean([f[k] for f in frame_rows])) for k in keys}
    record.update(means, status="ok", error="")
    return frame_rows


def metrics_shard(
    manifest_path: str | os.PathLike,
    shard: int,
    items_per_job: int,
    spec: MethodSpec,
    encode_log: str | os.PathLike,
    decode_log: str | os.PathLike,
    decoded_pack: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    metrics: Iterable[str] = ("psnr", "ms-ssim"),
    metric_options: dict[str, dict] | None = None,
    features_out: str | os.PathLike | None = None,
    device: str = "cpu",
    config_hash: str = "",
    progress: bool = True,
    decoded_machine: str | os.PathLike | None = None,
) -> int:
    """Compare decoded images with the originals and write the shard's result rows (one Parquet).

    Item metrics fill the rows; dataset-level metrics (FID, KID) need ``features_out``, where the
    features of the shard's ok items are stored for :func:`ulbc.features.dataset_metric_table`.
    ``decoded_machine`` (the machine decodes of a codec that has them) adds a ``target`` "machine"
    row per item, method ``<method>@machine``, measured on those images.
    """
    instances = build_metrics(metrics, metric_options, device=device)
    item_metrics = [m for m in instances if m.level == "item"]
    distribution_metrics = [m for m in instances if m.level == "dataset"]
    if distribution_metrics and features_out is None:
        names = ", ".join(m.name for m in distribution_metrics)
        raise InputError(f"{out_path}: metric(s) {names} are measured per dataset and need a features file "
                         "(--features-out)")
    manifest, root, dataset = read_manifest(manifest_path)
    rows = shard_rows(manifest, shard, items_per_job)
    codec = spec.build()
    label = codec.rate_label(spec.rate)
    enc = _read_log(encode_log, ENCODE_LOG_SCHEMA)
    dec = _read_log(decode_log, DECODE_LOG_SCHEMA)
    digest = code_digest(spec.codec)
    encoded_by, encoder = _encoding_digest(encode_log), encode_digest(spec.codec)
    if encoded_by != encoder:
        raise InputError(f"{encode_log}: the shard was encoded by other code (digest {encoded_by or 'none'}, "
                         f"current {encoder}); encode it again")
    machine = decoded_machine is not None and "machine" in codec.targets
    common = dict(
        dataset=dataset,
        method=spec.method,
        codec=spec.codec,
        target="human",
        rate_label=label,
        rate_param=codec.rate_param,
        rate_value=float(spec.rate),
        codec_options=canonical_json(codec.options),
        code_digest=digest,
        ulbc_version=__version__,
        git_commit=git_commit(),
        config_hash=config_hash,
        library_versions=canonical_json(library_versions()),
        metric_info=canonical_json({m.name: m.info() for m in instances}),
    )
    # Not measured: null. Measured but undefined or the item failed: NaN.
    empty_metrics = dict.fromkeys(c.name for c in item_columns())
    empty_metrics.update({c.name: math.nan for m in item_metrics for c in m.columns})
    collector = FeatureCollector(distribution_metrics) if distribution_metrics else None
    machine_collector = FeatureCollector(distribution_metrics) if distribution_metrics and machine else None
    machine_method = target_method(spec.method, "machine")
    video_codec = codec.media == "video"
    out: list[dict] = []
    machine_rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        pack = stack.enter_context(PackReader(decoded_pack))
        machine_pack = stack.enter_context(PackReader(decoded_machine)) if machine else None
        for row in _progress(rows.itertuples(index=False), len(rows), f"metrics {spec.method} {label}", progress):
            e = enc.get(row.item)
            if e is None:
                raise InputError(f"{encode_log}: no entry for item {row.item!r} of shard {shard}")
            frames = int(row.frames) if video_codec else 1
            is_clip = video_codec and not (root / row.path).is_file()
            # A video codec's row is a clip, or an image coded as a one-frame clip (an image dataset's
            # clip manifest); an image codec's row is an image, or one frame of a video dataset.
            if video_codec:
                level = "clip" if is_clip else "image"
            else:
                level = "frame" if row.clip else "image"
            record = dict(common, item=row.item, width=int(row.width), height=int(row.height), seed=e["seed"],
                          codec_version=e["codec_version"], encode_s=e["encode_s"], device=e["device"],
                          encode_info=e["encode_info"], **dict.fromkeys(BITSTREAM_STAT_COLUMNS),
                          **_encoder_facts(e["encode_info"]),
                          bytes=None, payload_bytes=None, bpp=math.nan, payload_bpp=math.nan, decode_s=math.nan,
                          level=level, clip=row.clip if level != "image" else "", frames=frames, **empty_metrics)
            pixels = row.width * row.height * frames
            d = dec.get(row.item)
            frame_records: list[dict] = []
            if e["status"] != "ok":
                record.update(status=e["status"], error=e["error"])
            elif d is None:
                raise InputError(f"{decode_log}: no entry for item {row.item!r}, which was encoded")
            else:
                record.update(bytes=d["bytes"], bpp=8.0 * d["bytes"] / pixels, decode_s=d["decode_s"])
                if d["status"] != "ok":
                    record.update(status=d["status"], error=d["error"])
                else:
                    record.update(payload_bytes=d["payload_bytes"], payload_bpp=8.0 * d["payload_bytes"] / pixels,
                                  **{k: d[k] for k in BITSTREAM_STAT_COLUMNS})
                    if is_clip:
                        frame_records = _clip_metrics(root, row, record, pack, decoded_pack, item_metrics,
                                                      collector)
                    else:
                        _, original = load_verified(root, row)
                        entry = decoded_entry(row.item)
                        if entry not in pack and decoded_frame_entry(row.item, 0) in pack:
                            entry = decoded_frame_entry(row.item, 0)  # an image coded as a one-frame clip
                        decoded = decode_png_bytes(pack.read(entry), f"{decoded_pack}:{row.item}")
                        record.update(compute_metrics(item_metrics, original, decoded), status="ok", error="")
                        if collector is not None:
                            collector.add(row.item, original, decoded)
            out.append(record)
            out.extend(frame_records)
            if machine:
                machine_record = dict(record, method=machine_method, target="machine", **empty_metrics)
                if record["status"] == "ok" and d["machine_error"]:
                    machine_record.update(status="decode_error", error=d["machine_error"])
                elif record["status"] == "ok":
                    adapted = decode_png_bytes(machine_pack.read(entry), f"{decoded_machine}:{row.item}")
                    machine_record.update(compute_metrics(item_metrics, original, adapted),
                                          decode_s=d["decode_s"] + d["adapt_s"])
                    if machine_collector is not None:
                        machine_collector.add(row.item, original, adapted)
                machine_rows.append(machine_record)
    out.extend(machine_rows)
    if collector is not None:
        keys = ("dataset", "method", "codec", "rate_label", "rate_value", "code_digest", "metric_info")
        parts = [(collector, {key: common[key] for key in keys})]
        if machine_collector is not None:
            parts.append((machine_collector, dict(parts[0][1], method=machine_method)))
        write_features(features_out, parts)
    _write_table(out, METRIC_ROW_SCHEMA, out_path, metadata={"ulbc_version": __version__, "git_commit": git_commit(),
                                                             "config_hash": config_hash})
    return len(out)


def evaluate_shard(
    manifest_path: str | os.PathLike,
    shard: int,
    items_per_job: int,
    spec: MethodSpec,
    pack_path: str | os.PathLike,
    encode_log: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    metrics: Iterable[str] = ("psnr", "ms-ssim"),
    metric_options: dict[str, dict] | None = None,
    features_out: str | os.PathLike | None = None,
    config_hash: str = "",
    device: str = "auto",
    on_error: str = "fail",
    progress: bool = True,
    scratch: str | os.PathLike | None = None,
    workers: int = 1,
) -> int:
    """Decode a shard's pack (reading only the pack) and write its result rows: decode_shard, then
    metrics_shard, with the decoded images and the decode log in a scratch folder ($TMPDIR unless
    ``scratch`` is given) that is removed afterwards. Returns the number of rows written."""
    with tempfile.TemporaryDirectory(prefix="ulbc-evaluate-", dir=scratch) as tmp:
        decoded, decode_log = Path(tmp) / "decoded.zip", Path(tmp) / "decode.parquet"
        # A codec with a machine decode: both decodes of each file, and rows for both.
        machine = Path(tmp) / "decoded-machine.zip" if "machine" in spec.build().targets else None
        decode_shard(pack_path, decoded, decode_log, device=device, on_error=on_error, progress=progress,
                     workers=workers, out_machine=machine)
        return metrics_shard(manifest_path, shard, items_per_job, spec, encode_log, decode_log, decoded, out_path,
                             metrics=metrics, metric_options=metric_options, features_out=features_out,
                             device=device, config_hash=config_hash, progress=progress, decoded_machine=machine)
