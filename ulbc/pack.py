"""Shard packs: the bitstreams (or decoded images) of one shard in one uncompressed ZIP file.

A 10^6-item study then leaves one file per (dataset, method, rate point, shard), not 10^6 files.
Entries are stored, not deflated, so an entry's size is exactly its bitstream file's size and any
ZIP tool can list or extract them; ``ulbc extract`` pulls one item out. Timestamps are fixed so a
pack's bytes depend only on its contents.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable

from .errors import InputError
from .fsutil import atomic_path

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


class PackWriter:
    """A pack being written: entries are added one by one and the file appears, whole, when the
    ``with`` block ends without an error (nothing appears otherwise)."""

    def __init__(self, dest: str | os.PathLike) -> None:
        self.dest = dest
        self.count = 0

    def __enter__(self) -> "PackWriter":
        self._atomic = atomic_path(self.dest)
        tmp = self._atomic.__enter__()
        self._zip = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        return self

    def add(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, data)
        self.count += 1

    def __exit__(self, *exc) -> bool | None:
        self._zip.close()
        return self._atomic.__exit__(*exc)


def write_pack(dest: str | os.PathLike, entries: Iterable[tuple[str, bytes]]) -> int:
    """Write ``(name, data)`` entries into ``dest`` atomically; returns the number of entries."""
    with PackWriter(dest) as pack:
        for name, data in entries:
            pack.add(name, data)
    return pack.count


class PackReader:
    """Read entries of a pack; every defect becomes a one-line :class:`InputError` naming the pack."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such pack file") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{self.path}: not a readable pack ({exc})") from None

    def __enter__(self) -> "PackReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def names(self) -> list[str]:
        return self._zip.namelist()

    def __contains__(self, name: str) -> bool:
        try:
            self._zip.getinfo(name)
            return True
        except KeyError:
            return False

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except KeyError:
            raise InputError(f"{self.path}: no entry {name!r}") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{self.path}: entry {name!r} is damaged ({exc})") from None


def bitstream_entry(item: str) -> str:
    return f"{item}.ulb"


def decoded_entry(item: str) -> str:
    return f"{item}.png"


def decoded_frame_entry(item: str, index: int) -> str:
    """Frame ``index`` (0-based) of a decoded clip."""
    return f"{item}/{index:06d}.png"
