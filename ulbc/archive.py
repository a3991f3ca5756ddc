"""Safe extraction of downloaded archives (zip, tar in every common compression, 7z via py7zr).

Every member is checked before anything is written: absolute names, ``..`` components, links that
leave the destination and special files (devices, fifos) are refused. Extraction happens in a
temporary sibling folder that is renamed into place, so a failure leaves no partial tree.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .errors import DownloadError

SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_DRIVE = re.compile(r"^[A-Za-z]:")


def archive_kind(path: str | os.PathLike) -> str:
    """'zip', 'tar' or '7z', decided from the file's content (names lie, e.g. .zip served as .bin)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DownloadError(f"{path}: cannot read archive ({' '.join(str(exc).split())})") from None
    if head.startswith(SEVEN_ZIP_MAGIC):
        return "7z"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DownloadError(f"{path}: not a zip, tar or 7z archive")


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Path components of a member name, refusing absolute names and '..' anywhere."""
    # Backslashes are separators for archives written on Windows; treat them as such when checking.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise DownloadError(f"{archive}: refusing member {name!r}: absolute path")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DownloadError(f"{archive}: refusing member {name!r}: '..' in its path")
    return parts


def _check_link(archive: Path, name: str, parts: tuple[str, ...], target: str, *, hard: bool) -> None:
    """A link target must resolve inside the destination.

    Symbolic links resolve from the member's folder, hard links from the archive root. This is a
    textual check; for tar files the "data" extraction filter adds a check on the real paths.
    """
    normalized = target.replace("\\", "/")
    if not normalized:
        raise DownloadError(f"{archive}: refusing member {name!r}: link with an empty target")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise DownloadError(f"{archive}: refusing member {name!r}: link to absolute path {target!r}")
    base = posixpath.join(*parts[:-1]) if not hard and len(parts) > 1 else ""
    resolved = posixpath.normpath(posixpath.join(base, normalized))
    if resolved == ".." or resolved.startswith("../"):
        raise DownloadError(f"{archive}: refusing member {name!r}: link target {target!r} leaves the destination")


def _check_tar(archive: Path, tf: tarfile.TarFile) -> None:
    for member in tf.getmembers():
        parts = _member_parts(archive, member.name)
        if member.issym() or member.islnk():
            _check_link(archive, member.name, parts, member.linkname, hard=member.islnk())
        elif member.isdev() or member.isfifo():
            raise DownloadError(f"{archive}: refusing member {member.name!r}: device or fifo")
        elif not (member.isfile() or member.isdir()):
            raise DownloadError(f"{archive}: refusing member {member.name!r}: unsupported member type")


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        parts = _member_parts(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            # zipfile writes links as small regular files holding the target; an escaping one is
            # still refused because other tools (unzip) would create a real link from it.
            target = zf.read(info).decode("utf-8", "replace")
            _check_link(archive, info.filename, parts, target, hard=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            raise DownloadError(f"{archive}: refusing member {info.filename!r}: device or fifo")


def _extract_tar(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            _check_tar(archive, tf)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, filter="data")
            else:  # Python without extraction filters: the checks above are the protection.
                tf.extractall(into)
    except tarfile.FilterError as exc:
        raise DownloadError(f"{archive}: refusing unsafe member ({' '.join(str(exc).split())})") from None
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"{archive}: corrupt or truncated tar archive ({' '.join(str(exc).split())})") from None


def _extract_zip(archive: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_zip(archive, zf)
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{archive}: corrupt zip archive (bad CRC in member {bad!r})")
            zf.extractall(into)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(f"{archive}: corrupt or truncated zip archive ({' '.join(str(exc).split())})") from None


def _extract_7z(archive: Path, into: Path) -> None:
    try:
        import py7zr
    except ImportError:
        raise DownloadError(f"{archive}: a 7z archive; extracting it needs py7zr (pip install py7zr)") from None
    try:
        # Listing and extracting use separate handles: a listed archive is not rewound by py7zr.
        with py7zr.SevenZipFile(archive, mode="r") as z:
            for info in z.list():
                _member_parts(archive, info.filename)
                if getattr(info, "is_symlink", False):
                    raise DownloadError(f"{archive}: refusing member {info.filename!r}: symbolic link in a 7z archive")
        with py7zr.SevenZipFile(archive, mode="r") as z:
            z.extractall(path=into)
    except DownloadError:
        raise
    except Exception as exc:  # py7zr raises its own hierarchy plus lzma and OSError variants
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DownloadError(f"{archive}: cannot extract 7z archive ({reason})") from None


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def safe_extract(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` into ``dest_dir``; returns the extracted files (final paths, sorted).

    If ``dest_dir`` does not exist the whole tree appears with one rename. If it exists (several
    archives of one dataset share a folder) each top-level entry of the archive replaces the entry
    of the same name there, again by rename.
    """
    archive = Path(archive)
    dest = Path(dest_dir)
    kind = archive_kind(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        {"zip": _extract_zip, "tar": _extract_tar, "7z": _extract_7z}[kind](archive, tmp)
        extracted = [dest / p.relative_to(tmp) for p in _files_under(tmp)]
        if not dest.exists():
            os.rename(tmp, dest)
        else:
            for entry in sorted(tmp.iterdir()):
                target = dest / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.rename(entry, target)
            tmp.rmdir()
        return extracted
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
