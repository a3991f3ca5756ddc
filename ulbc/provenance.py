"""Provenance recorded with every result: versions, git commit, config hash, seeds, device."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
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


_PACKAGE_ROOT = Path(__file__).resolve().parent
#: Code that shapes every result row whatever the codec: the shard runner (loading, seeds, packs,
#: row building, and what it imports) and the metric registry.
_PIPELINE_MODULES = ("ulbc.runner", "ulbc.metrics")
#: Registries that import every plugin module to register it; one codec does not depend on the others.
_REGISTRY_PACKAGES = frozenset({"ulbc.codecs"})


def _module_path(module: str) -> Path | None:
    """Source file of a ulbc module or package, or None for anything else."""
    parts = module.split(".")
    if parts[0] != "ulbc":
        return None
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_ulbc_modules(module: str, path: Path) -> frozenset[str]:
    """ulbc modules that ``module`` imports anywhere in its source (function-level imports too),
    with their parent packages, which Python runs first."""
    stat = path.stat()
    return _parsed_imports(module, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parsed_imports(module: str, path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """:func:`_imported_ulbc_modules`, cached per file version (a job takes two digests)."""
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            if module in _REGISTRY_PACKAGES and node.level == 1 and not node.module:
                continue  # `from . import plugin`: the registry registering its plugins
            found.update(f"{target}.{alias.name}" for alias in node.names)
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(name for name in with_parents if _module_path(name) is not None)


#: Modules that only measure decoded images: they make a row's metric values, not its bitstream.
_MEASURING_MODULES = ("ulbc.metrics", "ulbc.features")


def _is_measuring(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _MEASURING_MODULES)


@functools.lru_cache(maxsize=None)
def _source_files(roots: tuple[str, ...], *, skip_measuring: bool = False) -> tuple[Path, ...]:
    """Every source file the ``roots`` modules import, directly or not (ulbc modules only; a root
    outside ulbc, e.g. a user's codec plugin, counts with its own file). ``skip_measuring`` leaves
    the metrics out: the code that encodes does not depend on them."""
    files: set[Path] = set()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or (skip_measuring and _is_measuring(module)):
            continue
        seen.add(module)
        path = _module_path(module)
        if path is None:
            outside = getattr(sys.modules.get(module), "__file__", None)
            if outside:
                files.add(Path(outside).resolve())
            continue
        files.add(path)
        todo.extend(_imported_ulbc_modules(module, path) - seen)
    return tuple(sorted(files))


@functools.lru_cache(maxsize=None)
def code_digest(codec_name: str) -> str:
    """Fingerprint of the code that makes a codec's result rows (16 hex digits).

    It hashes the source of the codec's module and of every ulbc module it imports, the shard runner
    and the metrics (with what they import), the ulbc version and the codec's library version. So
    an edit to one codec's code changes that codec's digest and no other's, while an edit to shared
    code (containers, runner, metrics) changes them all. The workflow passes it as a rule parameter,
    so Snakemake recomputes exactly the shards whose code changed; the aggregation refuses rows whose
    digest is not the current one.
    """
    return _digest(codec_name, skip_measuring=False)


@functools.lru_cache(maxsize=None)
def encode_digest(codec_name: str) -> str:
    """Fingerprint of the code that makes a codec's bitstreams: :func:`code_digest` without the
    metrics. The encode rule takes it as a parameter, so a change to a metric re-measures every
    shard (new code_digest) without re-encoding any (same encode digest)."""
    return _digest(codec_name, skip_measuring=True)


def _digest(codec_name: str, *, skip_measuring: bool) -> str:
    from .codecs import codec_class

    cls = codec_class(codec_name)
    files = _source_files((*cls.source_modules(), *_PIPELINE_MODULES), skip_measuring=skip_measuring)
    sources = []
    for path in files:
        try:
            label = path.relative_to(_PACKAGE_ROOT).as_posix()
        except ValueError:
            label = path.name
        sources.append([label, hashlib.sha256(path.read_bytes()).hexdigest()])
    try:
        library = cls().version()
    except Exception:  # noqa: BLE001 - a codec unavailable here still has a code digest
        library = "unavailable"
    return config_hash({"ulbc": __version__, "codec": codec_name, "library": library, "sources": sources,
                        **({"part": "encode"} if skip_measuring else {})})


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
