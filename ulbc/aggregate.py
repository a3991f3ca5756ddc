"""Gather the per-shard metric Parquets of a study into one sorted ``metrics.parquet``.

A study of 10^5 items writes thousands of small shard files; this is the single fan-in job. Each
shard's footer is checked against :data:`ulbc.schema.METRIC_ROW_SCHEMA` before its data is read,
so a stale or foreign file is named in a one-line error instead of surfacing as an obscure
type-promotion failure deep inside dask or Arrow. Files are opened once each and read by Arrow on
a few threads; the per-file cost, not the row count, is what matters at 10^4 shards.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, InputError
from .fsutil import atomic_path
from .schema import ENCODER_RATE_COLUMNS, METRIC_COLUMNS, METRIC_ROW_SCHEMA

ENGINES = ("dask", "pyarrow")
SORT_KEYS = ("dataset", "method", "rate_value", "item")
METADATA_PREFIX = "ulbc."
#: Metadata key (after the prefix) describing rows of several code versions aggregated on request.
VERSION_MIX_KEY = "version_mix"

# Parquet reads release the GIL; a few threads also hide file-open latency, even on 2 cores.
_READ_THREADS = 4
# Shard files per dask partition.
_DASK_BATCH = 256


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception text on one line; dask puts the useful part after a generic first line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_difference(found: pa.Schema, expected: pa.Schema = METRIC_ROW_SCHEMA) -> str | None:
    """Describe the first column where ``found`` departs from ``expected`` (None if they agree)."""
    for i, want in enumerate(expected):
        if i >= len(found):
            return f"column {want.name!r} ({want.type}) is missing"
        got = found.field(i)
        if got.name != want.name:
            if got.name in expected.names or want.name not in found.names:
                return f"column {i} is {got.name!r}, expected {want.name!r}"
            return f"column {want.name!r} is at position {found.get_field_index(want.name)}, expected {i}"
        if not got.type.equals(want.type):
            return f"column {want.name!r} has type {got.type}, expected {want.type}"
    if len(found) > len(expected):
        return f"unexpected extra column {found.field(len(expected)).name!r}"
    return None


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: shard file does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a shard Parquet file") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None


def _check_schema(path: str, found: pa.Schema) -> None:
    difference = _schema_difference(found)
    if difference:
        raise InputError(f"{path}: schema differs from ulbc's row schema: {difference}")


def check_shard_schema(path: str | os.PathLike) -> None:
    """Raise InputError naming ``path`` and its first differing column if it is not a ulbc row file."""
    path = os.fspath(path)
    with _open(path) as shard:
        _check_schema(path, shard.schema_arrow)


def read_shard(path: str | os.PathLike) -> pa.Table:
    """One shard's rows; the footer is checked against the row schema before any data is read, and
    every problem is a one-line InputError naming the file."""
    path = os.fspath(path)
    with _open(path) as shard:
        _check_schema(path, shard.schema_arrow)
        try:
            # One thread per file: the callers read many files in parallel instead.
            table = shard.read(use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: damaged data in a shard file ({_one_line(exc)})") from None
    if not table.schema.equals(METRIC_ROW_SCHEMA, check_metadata=False):
        table = table.cast(METRIC_ROW_SCHEMA)  # same names and types; nullability flags may differ
    return table.replace_schema_metadata(None)


def _read_many(paths: Sequence[str]) -> pa.Table:
    """read_shard over ``paths`` on a few threads (Arrow releases the GIL), concatenated in path order."""
    if len(paths) < 64:
        tables = [read_shard(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            # map() yields in input order and re-raises the first error it reaches, so the file
            # reported does not depend on thread timing.
            tables = list(pool.map(read_shard, paths, chunksize=32))
    return pa.concat_tables(tables).combine_chunks()


def _read_with_pyarrow(paths: Sequence[str]) -> pa.Table:
    return _read_many(paths)


def _read_batch_frame(paths: Sequence[str]) -> pd.DataFrame:
    # Arrow-backed columns keep NaN distinct from null and int32 as int32, so the frame converts
    # back to exactly the table the pyarrow engine produces.
    return _read_many(paths).to_pandas(types_mapper=pd.ArrowDtype)


def _read_with_dask(paths: Sequence[str]) -> pa.Table:
    """One dask partition per batch of shard files, computed on dask's threaded scheduler.

    dask's own read_parquet plans one partition per small file here, and its per-file overhead
    (~5 ms) dominates at 10^4 shards; batches of files read by Arrow keep dask's parallelism
    without that cost, and work unchanged on a dask.distributed cluster.
    """
    import dask
    import dask.dataframe as dd

    batches = [list(paths[i : i + _DASK_BATCH]) for i in range(0, len(paths), _DASK_BATCH)]
    meta = METRIC_ROW_SCHEMA.empty_table().to_pandas(types_mapper=pd.ArrowDtype)
    frame = dd.from_map(_read_batch_frame, batches, meta=meta, enforce_metadata=False)
    with dask.config.set(scheduler="threads"):
        pdf = frame.compute()
    return pa.Table.from_pandas(pdf, schema=METRIC_ROW_SCHEMA, preserve_index=False)


def _sorted(table: pa.Table) -> pa.Table:
    # Arrow's sort is stable (nulls last), so rows with equal keys keep shard order and both engines agree.
    return table.sort_by([(key, "ascending") for key in SORT_KEYS])


_CLIP_KEYS = ["dataset", "method", "rate_label", "clip"]


def _measured_columns(metric_info: str | None) -> set[str]:
    """Row columns of the metrics a row's ``metric_info`` names (every metric column if it names none)."""
    from .metrics import METRICS, read_metric_info

    names = list(read_metric_info(metric_info))
    if not names:
        return set(METRIC_COLUMNS)
    return {c.name for n in names if n in METRICS for c in METRICS[n].columns}


def with_clip_rows(table: pa.Table) -> pa.Table:
    """Add a clip row for every clip that image codecs coded frame by frame.

    Its bytes are the sum over the clip's frames and its bpp counts them over all the clip's pixels;
    its metrics are the means over frames (video PSNR is the mean of per-frame PSNR). A clip with a
    failed frame gets the first failure's status and NaN metrics. Clips that already have a clip
    row (coded by a video codec) are left alone.
    """
    level = table.column("level").to_pylist()
    if "frame" not in level:
        return table
    df = table.to_pandas()
    frames = df[df["level"] == "frame"]
    have = set(map(tuple, df.loc[df["level"] == "clip", _CLIP_KEYS].itertuples(index=False)))
    rows = []
    for key, part in frames.groupby(_CLIP_KEYS, sort=True):
        if key in have:
            continue
        first = part.iloc[0].to_dict()
        ok = bool(part["status"].eq("ok").all())
        pixels = float((part["width"] * part["height"]).sum())
        row = dict(first, item=key[3], level="clip", frames=len(part),
                   bytes=int(part["bytes"].sum()) if part["bytes"].notna().all() else None,
                   payload_bytes=int(part["payload_bytes"].sum()) if part["payload_bytes"].notna().all() else None,
                   encode_s=float(part["encode_s"].sum()), decode_s=float(part["decode_s"].sum()))
        row["bpp"] = 8.0 * row["bytes"] / pixels if row["bytes"] is not None else math.nan
        row["payload_bpp"] = 8.0 * row["payload_bytes"] / pixels if row["payload_bytes"] is not None else math.nan
        measured = _measured_columns(first.get("metric_info"))
        for column in METRIC_COLUMNS:
            if column not in measured:
                row[column] = None
            else:
                row[column] = float(part[column].mean()) if ok else math.nan
        for column in ("bits_nn", "bits_mask", "bits_latent"):
            row[column] = float(part[column].sum()) if part[column].notna().all() else None
        row["macs_per_pixel"] = float(part["macs_per_pixel"].mean()) if part["macs_per_pixel"].notna().all() else None
        if not ok:
            bad = part[~part["status"].eq("ok")].iloc[0]
            row.update(status=bad["status"], error=f"frame {bad['item']}: {bad['error']}")
        for key in ENCODER_RATE_COLUMNS:
            row[key] = float(part[key].mean()) if key in part and part[key].notna().all() else None
        row["encode_info"] = ""
        rows.append(row)
    if not rows:
        return table
    extra = pa.Table.from_pandas(pd.DataFrame(rows)[METRIC_ROW_SCHEMA.names], schema=METRIC_ROW_SCHEMA,
                                 preserve_index=False)
    return pa.concat_tables([table.replace_schema_metadata(None), extra])


def aggregate_shards(
    shard_paths: Iterable[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    engine: str = "dask",
    metadata: dict[str, str] | None = None,
    allow_mixed_versions: bool = False,
) -> int:
    """Concatenate the shard Parquets into one file sorted by (dataset, method, rate_value, item).

    Rows from different code versions are refused (:func:`check_code_versions`) unless
    ``allow_mixed_versions``; an allowed mix is described in the ``ulbc.version_mix`` metadata key,
    which the analysis repeats in its tables. The output carries METRIC_ROW_SCHEMA and ``metadata``
    as ``ulbc.<key>`` key-value pairs (run provenance). Both engines yield the same table (NaN and
    null kept apart) at about the same speed on one machine (benchmarks/scale.py); "dask"
    partitions the work in batches of shard files, "pyarrow" needs no dask. Returns the number of
    rows written.
    """
    if engine not in ENGINES:
        raise ConfigError(f"aggregate engine {engine!r}: expected one of {', '.join(ENGINES)}")
    paths = [os.fspath(p) for p in shard_paths]
    if not paths:
        raise InputError(f"{os.fspath(out_path)}: no shard files to aggregate")
    table = _read_with_dask(paths) if engine == "dask" else _read_with_pyarrow(paths)
    mix = check_code_versions(table, allow_mixed=allow_mixed_versions)
    table = _sorted(with_clip_rows(table))
    metadata = dict(metadata or {})
    if mix:
        metadata[VERSION_MIX_KEY] = mix
    table = table.replace_schema_metadata(
        {f"{METADATA_PREFIX}{key}": str(value) for key, value in metadata.items()}
    )
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


def version_mix(path: str | os.PathLike) -> str | None:
    """The description of a code-version mix that an aggregated metrics file was allowed to hold."""
    try:
        meta = pq.read_schema(os.fspath(path)).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(f"{METADATA_PREFIX}{VERSION_MIX_KEY}".encode())
    return value.decode() if value else None


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Load an aggregated metrics file as a pandas frame (numpy dtypes, NaN for missing numbers)."""
    path = os.fspath(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise InputError(f"{path}: metrics file does not exist (run the aggregate step first)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a metrics Parquet file") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    difference = _schema_difference(table.schema)
    if difference:
        raise InputError(f"{path}: schema differs from ulbc's row schema: {difference}")
    return table.to_pandas()


def check_code_versions(table: pa.Table, *, allow_mixed: bool = False) -> str | None:
    """Refuse rows that different code produced, unless ``allow_mixed``; return a description of the
    mix when one is allowed (None when every row comes from one code version per method).

    Rows of one method must share one ``code_digest`` and one ``codec_version``, and each digest must
    be the one the current code has: otherwise old and new shards would be BD-rated together. Methods may come from different git
    commits as long as the code each depends on is the same; the commits are listed in the message.
    """
    from .provenance import code_digest

    if table.num_rows == 0:
        return None
    df = table.select(["method", "codec", "code_digest", "codec_version", "git_commit"]).to_pandas()
    problems: list[str] = []
    for (method, codec), part in df.groupby(["method", "codec"], sort=True):
        digests = sorted(part["code_digest"].unique())
        libraries = sorted(part["codec_version"].unique())
        if len(digests) > 1:
            problems.append(f"method {method!r} has rows from {len(digests)} code versions ({', '.join(digests)})")
        elif len(libraries) > 1:
            problems.append(f"method {method!r} has rows from {len(libraries)} codec versions ({'; '.join(libraries)})")
        else:
            try:
                want = code_digest(codec)
            except ConfigError:
                want = None  # a codec this installation does not have: only internal consistency is checkable
            if want is not None and digests[0] != want:
                problems.append(f"method {method!r} rows come from other code (digest {digests[0]}, current {want})")
    if not problems:
        return None
    commits = sorted(df["git_commit"].unique())
    message = "; ".join(problems) + f" (git commits in the rows: {', '.join(commits)})"
    if not allow_mixed:
        raise InputError(f"results mix code versions: {message}; rerun the affected shards "
                         "(snakemake reruns shards whose code changed) or set allow_mixed_versions: true")
    return message
