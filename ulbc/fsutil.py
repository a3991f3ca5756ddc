"""File-system helpers: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates files readable by the owner only; finished outputs get the usual umask-based mode.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    The temporary file lives in the destination's folder so the final ``os.replace`` is atomic on
    POSIX file systems; on any exception it is removed and ``dest`` is left untouched. A writer that
    was killed outright (SIGKILL, a lost node) cannot clean up; the next writer of the same
    destination removes what it left.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_parts(dest):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def stale_parts(dest: str | os.PathLike) -> list[Path]:
    """Temporary files that atomic_path writers of ``dest`` left behind."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    return sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*.part"))


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
