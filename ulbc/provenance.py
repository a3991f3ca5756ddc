"""Provenance recorded with every result: versions, git commit, config hash, seeds, device."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

#: Distributions whose versions can change a result; read from package metadata (no imports).
_TRACKED_PACKAGES = (
    "numpy",
    "pillow",
    "pillow-jxl-plugin",
    "torch",
    "pytorch-msssim",
    "compressai",
    "ffmpeg-python",
    "pyarrow",
    "pandas",
    "bjontegaard",
)


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """Commit of the ulbc source tree, with '-dirty' for uncommitted changes; 'unknown' outside git.

    ``ULBC_GIT_COMMIT`` overrides it, for installs made from a release tarball.
    """
    if os.environ.get("ULBC_GIT_COMMIT"):
        return os.environ["ULBC_GIT_COMMIT"]
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists() or shutil.which("git") is None:
        return "unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=None)
def ffmpeg_version() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 and parts[0] == "ffmpeg" else first or None


@functools.lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    versions = {"ulbc": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    ff = ffmpeg_version()
    if ff:
        versions["ffmpeg"] = ff
    return versions


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (16 hex digits)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def derive_seed(base_seed: int, *parts: Any) -> int:
    """Per-item seed from the study seed and the item's identity: independent of sharding and order."""
    digest = hashlib.sha256(canonical_json([int(base_seed), *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def resolve_device(requested: str, uses_gpu: bool) -> str:
    """'auto' gives 'cuda' for GPU methods when CUDA is present, otherwise 'cpu'."""
    if requested not in ("auto", "cpu") and not requested.startswith("cuda"):
        from .errors import ConfigError

        raise ConfigError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if not uses_gpu:
        return "cpu"
    if requested == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.machine()})"


def run_provenance(config: dict | None = None) -> dict[str, str]:
    """Key-value block stored in the Parquet metadata and the run manifest."""
    block = {
        "ulbc_version": __version__,
        "git_commit": git_commit(),
        "library_versions": canonical_json(library_versions()),
        "host": platform.node(),
    }
    if config is not None:
        block["config_hash"] = config_hash(config)
        block["config"] = canonical_json(config)
    return block


def write_run_manifest(config: dict, dest: str | os.PathLike) -> None:
    """Human-readable record of a run: resolved config (after schema defaults) and provenance."""
    from datetime import datetime, timezone

    from .fsutil import write_bytes_atomic

    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ulbc_version": __version__,
        "git_commit": git_commit(),
        "config_hash": config_hash(config),
        "host": platform.node(),
        "platform": platform.platform(),
        "library_versions": library_versions(),
        "config": config,
    }
    write_bytes_atomic(dest, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
