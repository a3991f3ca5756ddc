"""Safe archive extraction: good archives unpack whole, hostile ones leave nothing behind."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from ulbc.archive import archive_kind, safe_extract
from ulbc.errors import DownloadError

CONTENT = {"top.txt": b"top", "sub/a.bin": b"\x00\x01\x02", "sub/deeper/b.txt": b"bee"}


def make_zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_extracted(parent: Path, dest: Path, archive: Path) -> None:
    assert not dest.exists()
    assert sorted(p.name for p in parent.iterdir()) == [archive.name]  # no temporary folder left


def test_zip_extracts(tmp_path):
    archive = make_zip(tmp_path / "a.zip", CONTENT)
    dest = tmp_path / "out"
    files = safe_extract(archive, dest)
    assert tree(dest) == CONTENT
    assert files == sorted(dest / name for name in CONTENT)


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_extracts_detected_by_content(tmp_path, mode):
    archive = make_tar(tmp_path / "download.bin", CONTENT, mode)  # suffix says nothing
    assert archive_kind(archive) == "tar"
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert tree(dest) == CONTENT


def test_zip_detected_by_content(tmp_path):
    archive = make_zip(tmp_path / "payload.tgz", CONTENT)  # misleading suffix
    assert archive_kind(archive) == "zip"


def test_extract_into_existing_folder_merges(tmp_path):
    dest = tmp_path / "out"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "old.txt").write_bytes(b"old")
    (dest / "keep.txt").write_bytes(b"keep")
    safe_extract(make_zip(tmp_path / "a.zip", CONTENT), dest)
    got = tree(dest)
    assert got["keep.txt"] == b"keep"  # entries the archive does not have are untouched
    assert "sub/old.txt" not in got  # a top-level entry of the archive replaces the old one whole
    assert {k: got[k] for k in CONTENT} == CONTENT


@pytest.mark.parametrize("name", ["../evil", "ok/../../evil", "/abs/evil", "..\\evil", "C:/evil"])
def test_zip_refuses_escaping_names(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"x", name: b"evil"})
    dest = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        safe_extract(archive, dest)
    message = str(info.value)
    assert str(archive) in message and repr(name) in message and "\n" not in message
    assert_nothing_extracted(tmp_path, dest, archive)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/evil"])
def test_tar_refuses_escaping_names(tmp_path, name):
    archive = make_tar(tmp_path / "bad.tar.gz", {"fine.txt": b"x", name: b"evil"})
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="refusing member"):
        safe_extract(archive, dest)
    assert_nothing_extracted(tmp_path, dest, archive)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        link("escape", "../../etc/passwd"),
        link("sub/escape", "../../outside"),
        link("absolute", "/etc/passwd"),
        link("hard", "../outside", tarfile.LNKTYPE),
    ],
    ids=["symlink-up", "nested-symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_tar_refuses_links_leaving_dest(tmp_path, member):
    archive = make_tar(tmp_path / "bad.tar", {"fine.txt": b"x"}, "w", extra=[member])
    dest = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        safe_extract(archive, dest)
    assert repr(member.name) in str(info.value)
    assert_nothing_extracted(tmp_path, dest, archive)


def test_tar_allows_links_inside(tmp_path):
    members = [link("sub/alias.txt", "deeper/b.txt"), link("copy.txt", "top.txt", tarfile.LNKTYPE)]
    archive = make_tar(tmp_path / "ok.tar", CONTENT, "w", extra=members)
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert (dest / "sub" / "alias.txt").read_bytes() == b"bee"
    assert (dest / "copy.txt").read_bytes() == b"top"


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_refuses_devices_and_fifos(tmp_path, kind):
    info = tarfile.TarInfo("dev")
    info.type = kind
    archive = make_tar(tmp_path / "bad.tar", {"fine.txt": b"x"}, "w", extra=[info])
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="device or fifo"):
        safe_extract(archive, dest)
    assert_nothing_extracted(tmp_path, dest, archive)


def test_zip_refuses_symlink_leaving_dest(tmp_path):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"x"}, symlinks={"link": "../../etc/passwd"})
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="leaves the destination"):
        safe_extract(archive, dest)
    assert_nothing_extracted(tmp_path, dest, archive)


def test_not_an_archive(tmp_path):
    path = tmp_path / "plain.zip"
    path.write_bytes(b"just text, no archive")
    with pytest.raises(DownloadError, match="not a zip, tar or 7z archive"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_refused(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"big.bin": bytes(range(256)) * 400})
    bad = tmp_path / "bad.zip"
    data = good.read_bytes()
    # Corrupt the compressed body but keep the central directory: the CRC check must catch it.
    bad.write_bytes(data[:60] + bytes(len(data) // 3) + data[60 + len(data) // 3 :])
    dest = tmp_path / "out"
    with pytest.raises(DownloadError):
        safe_extract(bad, dest)
    assert not dest.exists()


def test_7z_without_py7zr_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_py7zr(name, *args, **kwargs):
        if name == "py7zr":
            raise ImportError("No module named 'py7zr'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_py7zr)
    path = tmp_path / "seq.7z"
    path.write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(64))
    assert archive_kind(path) == "7z"
    with pytest.raises(DownloadError) as info:
        safe_extract(path, tmp_path / "out")
    message = str(info.value)
    assert "pip install py7zr" in message and str(path) in message and "\n" not in message
    assert_nothing_extracted(tmp_path, tmp_path / "out", path)
