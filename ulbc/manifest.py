"""The manifest: one Parquet row per dataset item, the fixed list every shard job slices.

Built from headers and file hashes only (no decoding), so 10^5 items take seconds, and sharded by
row ranges so a job reads the same items on every machine.

Every dataset has two manifests. The item manifest lists images, or for a video dataset every
extracted frame (``<clip>/<frame>.png``, with its ``clip``); image codecs read it. The clip
manifest lists what video codecs code: one row per clip (``path`` is the clip's frame folder), or
for an image dataset each image as a one-frame clip. It is derived from the item manifest without
reading any file again.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from . import __version__
from .errors import ConfigError, InputError
from .fsutil import atomic_path
from .imageio import probe_image

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("item", pa.string()),  # relative path without extension, '/' kept: the item id
        pa.field("path", pa.string()),  # relative to the root, POSIX
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),  # the file's Pillow mode before conversion to RGB
        pa.field("sha256", pa.string()),  # of the file; for a clip row, of its frames' hashes in order
        pa.field("clip", pa.string()),  # the clip a frame belongs to ("" for a still image)
        pa.field("frames", pa.int32()),  # 1, or a clip row's frame count
    ]
)
META_DATASET = b"ulbc.dataset"
META_ROOT = b"ulbc.root"
META_VERSION = b"ulbc.ulbc_version"
_CHUNK = 1 << 20


def item_id(relpath: str) -> str:
    """'a/b/c.png' -> 'a/b/c': stable, readable and unique within a dataset."""
    path = PurePosixPath(relpath)
    return str(path.with_suffix("")) if path.suffix else str(path)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    return digest.hexdigest()


def _describe(root: Path, rel: str) -> tuple[int, int, str, str]:
    path = root / rel
    width, height, mode = probe_image(path)
    return width, height, mode, _hash(path)


def _workers() -> int:
    # hashlib and file reads release the GIL, so threads beyond the core count still help on I/O.
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def build_manifest(
    dataset: str,
    root: str | os.PathLike,
    relpaths: Sequence[str],
    out_path: str | os.PathLike,
    *,
    video: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Probe and hash every item, write the manifest Parquet atomically, return it as a DataFrame.

    With ``video``, the items are extracted frames and each one's folder names its clip.
    """
    root = Path(root)
    if not relpaths:
        raise ConfigError(f"dataset {dataset}: no images found under {root}")
    by_id: dict[str, str] = {}
    for rel in sorted(relpaths):
        rel = PurePosixPath(rel).as_posix()
        key = item_id(rel)
        if key in by_id:
            raise ConfigError(
                f"dataset {dataset}: {root / by_id[key]} and {root / rel} have the same item id {key!r}; rename one"
            )
        by_id[key] = rel
    ids = sorted(by_id)

    rows: list[tuple[int, int, str, str]] = []
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        futures: list[Future] = [pool.submit(_describe, root, by_id[key]) for key in ids]
        try:
            # disable=None: tqdm stays quiet when stderr is not a terminal (Snakemake logs).
            bar = tqdm(total=len(futures), desc=f"manifest {dataset}", unit="img", disable=None if progress else True)
            with bar:
                for future in futures:
                    rows.append(future.result())
                    bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    metadata = {
        META_DATASET: dataset.encode(),
        META_ROOT: str(root.resolve()).encode(),
        META_VERSION: __version__.encode(),
    }
    table = pa.table(
        {
            "item": pa.array(ids, pa.string()),
            "path": pa.array([by_id[k] for k in ids], pa.string()),
            "width": pa.array([r[0] for r in rows], pa.int32()),
            "height": pa.array([r[1] for r in rows], pa.int32()),
            "mode": pa.array([r[2] for r in rows], pa.string()),
            "sha256": pa.array([r[3] for r in rows], pa.string()),
            "clip": pa.array([clip_of(by_id[k]) if video else "" for k in ids], pa.string()),
            "frames": pa.array([1] * len(ids), pa.int32()),
        },
        schema=MANIFEST_SCHEMA.with_metadata(metadata),
    )
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return table.to_pandas()


def clip_of(relpath: str) -> str:
    """The clip of an extracted frame: its folder ('walk/000003.png' -> 'walk')."""
    parent = PurePosixPath(relpath).parent.as_posix()
    if parent in ("", "."):
        raise InputError(f"{relpath}: a video frame must sit in its clip's folder")
    return parent


def clip_hash(frame_hashes: Sequence[str]) -> str:
    """Identity of a clip: the sha256 of its frames' sha256 digests (hex) in frame order."""
    return hashlib.sha256("".join(frame_hashes).encode()).hexdigest()


def build_clip_manifest(items_manifest: str | os.PathLike, out_path: str | os.PathLike) -> pd.DataFrame:
    """Write the clip manifest derived from an item manifest (see the module docstring)."""
    items, root, dataset = read_manifest(items_manifest)
    video = items["clip"].ne("")
    if video.any() and not video.all():
        raise InputError(f"{items_manifest}: mixes video frames and still images")
    if not video.any():
        clips = items.assign(clip=items["item"], frames=1)
    else:
        rows = []
        for clip, frames in items.groupby("clip", sort=True):
            frames = frames.sort_values("path")
            sizes = set(zip(frames["width"], frames["height"]))
            if len(sizes) > 1:
                raise InputError(f"{root / clip}: frames of one clip differ in size ({sorted(sizes)})")
            (width, height), = sizes
            rows.append(dict(item=clip, path=clip, width=width, height=height, mode="RGB",
                             sha256=clip_hash(frames["sha256"].tolist()), clip=clip, frames=len(frames)))
        clips = pd.DataFrame(rows)
    table = pa.Table.from_pandas(clips[MANIFEST_SCHEMA.names], preserve_index=False).cast(MANIFEST_SCHEMA)
    meta = pq.read_schema(items_manifest).metadata
    table = table.replace_schema_metadata(meta)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return table.to_pandas()


def read_manifest(path: str | os.PathLike) -> tuple[pd.DataFrame, Path, str]:
    """(rows, root folder the paths are relative to, dataset name) of a manifest file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: unreadable manifest ({' '.join(str(exc).split())})") from None
    meta = table.schema.metadata or {}
    missing = [k.decode() for k in (META_DATASET, META_ROOT) if k not in meta]
    if missing:
        raise InputError(f"{path}: not a ulbc manifest (metadata {', '.join(missing)} missing)")
    if not table.schema.equals(MANIFEST_SCHEMA, check_metadata=False):
        raise InputError(f"{path}: manifest columns differ from the expected {', '.join(MANIFEST_SCHEMA.names)}")
    return table.to_pandas(), Path(meta[META_ROOT].decode()), meta[META_DATASET].decode()


def num_shards(manifest_path: str | os.PathLike, items_per_job: int) -> int:
    """Shard count from the Parquet footer alone: cheap enough for Snakemake's DAG step."""
    if items_per_job < 1:
        raise ConfigError(f"items_per_job must be at least 1, got {items_per_job}")
    try:
        rows = pq.ParquetFile(manifest_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{manifest_path}: unreadable manifest ({' '.join(str(exc).split())})") from None
    return math.ceil(rows / items_per_job)


def shard_rows(df: pd.DataFrame, shard: int, items_per_job: int) -> pd.DataFrame:
    """Rows of 0-based ``shard``: [shard * items_per_job, (shard + 1) * items_per_job)."""
    if items_per_job < 1:
        raise ConfigError(f"items_per_job must be at least 1, got {items_per_job}")
    count = math.ceil(len(df) / items_per_job)
    if not 0 <= shard < count:
        raise ConfigError(
            f"shard {shard} out of range: the manifest has {len(df)} items, {count} shard(s) of {items_per_job}"
        )
    start = shard * items_per_job
    return df.iloc[start : start + items_per_job].reset_index(drop=True)


def shard_name(shard: int) -> str:
    return f"{shard:05d}"
