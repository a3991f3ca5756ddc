"""The weights manager: registry, cache and torch hub lookup, downloads from 127.0.0.1, imports, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_download import Behaviour, FixtureServer, payload
from ulbc import weights
from ulbc.cli import main
from ulbc.errors import ConfigError, InputError
from ulbc.weights import WeightFile, WeightsMissingError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def isolate_weights(monkeypatch, cache: Path, torch_home: Path) -> None:
    """Own caches, and no inherited proxy, mirror or site registry."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "ULBC_WEIGHTS_MIRROR", "ULBC_WEIGHTS_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ULBC_WEIGHTS", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Every test gets its own caches and no inherited proxy, mirror or site registry."""
    isolate_weights(monkeypatch, tmp_path / "w", tmp_path / "torch")
    monkeypatch.setattr(weights, "DOWNLOAD_RETRIES", 1)
    monkeypatch.setattr(weights, "DOWNLOAD_BACKOFF", 0.01)
    yield
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    weights._sync_site_registry()  # drops the entries of a registry file a test pointed at


@pytest.fixture
def server():
    with FixtureServer() as srv:
        yield srv


@pytest.fixture
def entries():
    """Registers test entries (random contents); returns a maker and unregisters them afterwards."""
    made: list[str] = []

    def make(name: str, data: bytes, *, urls: tuple[str, ...] = (), prefix: int | None = None,
             size: int | None = None, aliases: tuple[str, ...] = ()) -> WeightFile:
        digest = sha(data)
        entry = WeightFile(name=name, file_name=f"{name}-{digest[:8]}.pth", urls=urls,
                           sha256=digest[:prefix] if prefix else digest, size=size, licence="test",
                           used_by=("test",), description="random bytes for tests", aliases=aliases)
        weights.register_weights(entry)
        made.append(name)
        return entry

    yield make
    for name in made:
        weights.unregister_weights(name)


def refused_url(path: str) -> str:
    """A URL on a 127.0.0.1 port nobody listens on: connection refused, as on an offline machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- registry ------------------------------------------------------------------------------------------
def test_builtin_entries_follow_torch_hubs_file_name_hash():
    expected = {"torchvision-alexnet": "alexnet-owt-7be5be79.pth", "torchvision-vgg16": "vgg16-397923af.pth",
                "torchvision-squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
                "inception-v3-fid": "pt_inception-2015-12-05-6726825d.pth"}
    for name, file_name in expected.items():
        entry = weights.WEIGHTS[name]
        assert entry.file_name == file_name
        assert entry.full_hash and entry.check == "sha256"
        for known_as in entry.file_names:  # the digest starts with the hash in every file name
            assert known_as.rsplit("-", 1)[1].split(".")[0] == entry.sha256[:8]
        assert entry.size and entry.licence and entry.used_by and entry.urls
        assert all(url.endswith(name) for url, name in zip(entry.urls, entry.file_names))
    assert weights.WEIGHTS["inception-v3-fid"].aliases == ("weights-inception-2015-12-05-6726825d.pth",)
    assert set(weights.WEIGHTS["torchvision-vgg16"].used_by) == {"lpips", "dists"}


def test_register_refuses_existing_name_and_file_name(entries):
    entry = entries("test-dup", b"x")
    with pytest.raises(ConfigError, match="already registered"):
        weights.register_weights(entry)
    clash = WeightFile(name="test-other", file_name=entry.file_name, urls=(), sha256="0" * 64, size=None,
                       licence="test", used_by=(), description="")
    with pytest.raises(ConfigError, match="already belongs to weights 'test-dup'"):
        weights.register_weights(clash)
    with pytest.raises(ConfigError, match="hex digits"):
        WeightFile(name="test-bad", file_name="b.pth", urls=(), sha256="abc", size=None, licence="t",
                   used_by=(), description="")


def test_weights_dir_default_and_override(monkeypatch, tmp_path):
    import platformdirs

    assert weights.weights_dir() == tmp_path / "w"
    monkeypatch.delenv("ULBC_WEIGHTS")
    assert weights.weights_dir() == Path(platformdirs.user_cache_dir("ulbc")) / "weights"


def test_torch_hub_dir_matches_torch(monkeypatch, tmp_path):
    import torch

    assert weights.torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"
    assert weights.torch_hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"
    # Without torch imported the lookup follows the same $TORCH_HOME rule.
    monkeypatch.delitem(sys.modules, "torch")
    assert weights.torch_hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"


# -- lookup ----------------------------------------------------------------------------------------------
def test_require_missing_is_one_line_with_url_and_commands(entries):
    entry = entries("test-missing", b"abc", urls=("https://example.org/test-missing.pth",))
    with pytest.raises(WeightsMissingError) as info:
        weights.require("test-missing")
    message = str(info.value)
    assert "\n" not in message
    for part in (entry.file_name, "https://example.org/test-missing.pth", "ulbc weights fetch test-missing",
                 "ulbc weights import PATH", str(weights.weights_dir())):
        assert part in message
    assert weights.verify("test-missing").status == "missing"
    with pytest.raises(ConfigError, match="unknown weights 'no-such'"):
        weights.require("no-such")


def test_torch_hub_cache_is_used_in_place(entries, tmp_path):
    data = os.urandom(5000)
    entry = entries("test-hub", data, aliases=("other-copy-of-test-hub.pth",))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "other-copy-of-test-hub.pth").write_bytes(data)  # found under its alias
    assert weights.require("test-hub") == hub / "other-copy-of-test-hub.pth"
    assert weights.file_sha256("test-hub") == entry.sha256
    assert not weights.weights_dir().exists()  # used where it is, not copied
    # fetch() needs no network for it either (the entry has no URL at all).
    assert weights.fetch("test-hub") == hub / "other-copy-of-test-hub.pth"


def test_bad_file_is_reported_and_never_used(entries, tmp_path):
    data = os.urandom(4000)
    entry = entries("test-bad", data)
    cache = weights.weights_dir()
    cache.mkdir(parents=True)
    (cache / entry.file_name).write_bytes(data[:-1] + b"!")
    found = weights.verify("test-bad")
    assert found.status == "bad" and found.path == cache / entry.file_name
    assert "expected sha256" in found.problem
    with pytest.raises(WeightsMissingError, match="has sha256"):
        weights.require("test-bad")
    # A good copy in torch hub's cache wins over the bad one in ulbc's.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / entry.file_name).write_bytes(data)
    assert weights.require("test-bad") == hub / entry.file_name


def test_prefix_only_entry_verifies_the_prefix(entries):
    data = os.urandom(3000)
    entry = entries("test-prefix", data, prefix=8)
    assert entry.check == "sha256 prefix" and len(entry.sha256) == 8
    name, dest = weights.import_file(_write(weights.weights_dir().parent / "src.pth", data))
    assert name == "test-prefix"
    found = weights.verify("test-prefix")
    assert found.ok and found.check == "sha256 prefix" and found.sha256 == sha(data)
    dest.write_bytes(os.urandom(3000))
    assert weights.verify("test-prefix").status == "bad"


# -- fetch ---------------------------------------------------------------------------------------------
def test_fetch_downloads_and_verifies(server, entries):
    data = payload(200_000, seed=7)
    server.files["/w.pth"] = data
    entry = entries("test-fetch", data, urls=(server.url("/w.pth"),), size=len(data))
    path = weights.fetch("test-fetch", progress=False)
    assert path == weights.weights_dir() / entry.file_name and path.read_bytes() == data
    assert files_in(weights.weights_dir()) == [entry.file_name]
    assert weights.fetch("test-fetch", progress=False) == path  # already there: no second request
    assert len(server.requests) == 1


def test_fetch_resumes_an_interrupted_transfer(server, entries):
    data = payload(300_000, seed=8)
    server.files["/w.pth"] = data
    server.behaviour["/w.pth"] = Behaviour(drop_after=120_000)
    entries("test-resume", data, urls=(server.url("/w.pth"),))
    path = weights.fetch("test-resume", progress=False)
    assert path.read_bytes() == data
    assert server.requests == [("/w.pth", None), ("/w.pth", "bytes=120000-")]


def test_fetch_continues_a_part_left_by_a_killed_run(server, entries):
    data = payload(250_000, seed=9)
    server.files["/w.pth"] = data
    entry = entries("test-part", data, urls=(server.url("/w.pth"),))
    cache = weights.weights_dir()
    cache.mkdir(parents=True)
    (cache / f"{entry.file_name}.part").write_bytes(data[:100_000])
    assert weights.fetch("test-part", progress=False).read_bytes() == data
    assert server.requests == [("/w.pth", "bytes=100000-")]
    assert files_in(cache) == [entry.file_name]


def test_sha256_mismatch_leaves_nothing_and_says_so(server, entries):
    good = payload(50_000, seed=10)
    server.files["/w.pth"] = payload(50_000, seed=11)  # the server has some other file
    entry = entries("test-mismatch", good, urls=(server.url("/w.pth"),))
    with pytest.raises(WeightsMissingError) as info:
        weights.fetch("test-mismatch", progress=False)
    message = str(info.value)
    assert "sha256 mismatch" in message and entry.file_name in message and "\n" not in message
    assert files_in(weights.weights_dir()) == []


def test_prefix_only_download_mismatch_never_takes_the_canonical_name(server, entries):
    good = payload(40_000, seed=12)
    server.files["/w.pth"] = payload(40_000, seed=13)
    entries("test-prefix-dl", good, urls=(server.url("/w.pth"),), prefix=8)
    with pytest.raises(WeightsMissingError, match="does not start with the published"):
        weights.fetch("test-prefix-dl", progress=False)
    assert files_in(weights.weights_dir()) == []
    server.files["/w.pth"] = good
    assert weights.fetch("test-prefix-dl", progress=False).read_bytes() == good
    assert files_in(weights.weights_dir()) == [weights.WEIGHTS["test-prefix-dl"].file_name]


def test_fetch_removes_a_wrong_file_under_the_canonical_name(entries):
    entry = entries("test-wrong", os.urandom(1000), urls=(refused_url("/w.pth"),), prefix=8)
    wrong = _write(weights.weights_dir() / entry.file_name, b"not the weights")
    with pytest.raises(WeightsMissingError):
        weights.fetch("test-wrong", progress=False)
    assert not wrong.exists()


def test_offline_error_is_one_line_naming_file_url_and_import(entries):
    url = refused_url("/w.pth")
    entry = entries("test-offline", b"never served", urls=(url,))
    with pytest.raises(WeightsMissingError) as info:
        weights.fetch("test-offline", progress=False)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert entry.file_name in message and url in message and "ulbc weights import PATH" in message
    assert "local' dataset" not in message  # the datasets hint does not apply to weights
    assert files_in(weights.weights_dir()) == []


def test_mirror_is_tried_first_then_each_url(server, entries, monkeypatch):
    data = payload(30_000, seed=14)
    entry = entries("test-mirror", data, urls=(refused_url("/w.pth"), server.url("/origin/w.pth")))
    server.files[f"/mirror/{entry.file_name}"] = data
    monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url("/mirror/"))
    assert weights.fetch("test-mirror", progress=False).read_bytes() == data
    assert [path for path, _ in server.requests] == [f"/mirror/{entry.file_name}"]
    # Mirror without the file, first URL refused: the second registered URL serves it.
    weights.weights_dir().joinpath(entry.file_name).unlink()
    del server.files[f"/mirror/{entry.file_name}"]
    server.files["/origin/w.pth"] = data
    assert weights.fetch("test-mirror", progress=False).read_bytes() == data
    assert server.requests[-1][0] == "/origin/w.pth"


def test_all_failures_are_named(server, entries):
    first, second = server.url("/a.pth"), refused_url("/b.pth")
    entries("test-fails", b"z", urls=(first, second))
    with pytest.raises(WeightsMissingError) as info:
        weights.fetch("test-fails", progress=False)
    message = str(info.value)
    assert first in message and "404" in message and second in message


def test_fetch_url_override(server, entries):
    data = payload(10_000, seed=15)
    server.files["/elsewhere.pth"] = data
    entries("test-url", data, urls=(refused_url("/w.pth"),))
    assert weights.fetch("test-url", url=server.url("/elsewhere.pth"), progress=False).read_bytes() == data


# -- import ----------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_import_identifies_and_copies(entries, tmp_path):
    data = os.urandom(6000)
    entry = entries("test-import", data)
    source = _write(tmp_path / "downloads" / "some name.bin", data)
    name, dest = weights.import_file(source)
    assert name == "test-import" and dest == weights.weights_dir() / entry.file_name
    assert dest.read_bytes() == data and source.is_file()
    assert weights.require("test-import") == dest
    assert files_in(weights.weights_dir()) == [entry.file_name]


def test_import_refuses_unknown_or_wrong_file(entries, tmp_path):
    entries("test-known", os.urandom(100))
    stranger = _write(tmp_path / "stranger.pth", os.urandom(100))
    with pytest.raises(InputError, match="matches no registered weights file"):
        weights.import_file(stranger)
    with pytest.raises(InputError, match="is not weights 'test-known'"):
        weights.import_file(stranger, name="test-known")
    with pytest.raises(InputError, match="no such file"):
        weights.import_file(tmp_path / "absent.pth")
    assert files_in(weights.weights_dir()) == []


# -- $ULBC_WEIGHTS_REGISTRY ---------------------------------------------------------------------------------
def test_site_registry_adds_entries(monkeypatch, tmp_path):
    data = os.urandom(2048)
    registry = tmp_path / "site.yaml"
    registry.write_text(
        "- name: site-finetuned\n"
        "  file_name: finetuned.pth\n"
        f"  sha256: {sha(data)}\n"
        "  licence: internal\n"
        "  used_by: [lpips]\n"
        "  urls: [https://models.example.org/finetuned.pth]\n"
        "  size: 2048\n")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    assert weights.registry()["site-finetuned"].size == 2048
    name, dest = weights.import_file(_write(tmp_path / "f.pth", data))
    assert (name, dest.name) == ("site-finetuned", "finetuned.pth")
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
    assert "site-finetuned" not in weights.registry()


@pytest.mark.parametrize("content, complaint", [
    ("- name: torchvision-vgg16\n  file_name: x.pth\n  sha256: " + "a" * 64 + "\n  licence: t\n", "built-in"),
    ("- name: s\n  file_name: x.pth\n  licence: t\n", "missing sha256"),
    ("- name: s\n  file_name: x.pth\n  sha256: xyz12345\n  licence: t\n", "hex digits"),
    ("- name: s\n  file_name: x.pth\n  sha256: " + "a" * 64 + "\n  licence: t\n  colour: red\n", "unknown field"),
    ("- name: s\n  file_name: x.pth\n  sha256: " + "a" * 64 + "\n  licence: t\n  urls: ftp://x\n", "list of strings"),
    ("name: s\n", "expected a list"),
    ("- [unclosed\n", "cannot be read as YAML"),
])
def test_site_registry_bad_content_is_one_line(monkeypatch, tmp_path, content, complaint):
    registry = tmp_path / "site.yaml"
    registry.write_text(content)
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    with pytest.raises(ConfigError) as info:
        weights.registry()
    message = str(info.value)
    assert complaint in message and str(registry) in message and "\n" not in message
    assert "s" not in weights.WEIGHTS


def test_site_registry_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="nope.yaml .*no such file"):
        weights.get_weight_file("torchvision-vgg16")


# -- CLI ---------------------------------------------------------------------------------------------------
def test_cli_list_fetch_verify_record_path(server, entries, capsys, tmp_path):
    data = payload(20_000, seed=16)
    server.files["/w.pth"] = data
    entry = entries("test-cli", data, urls=(server.url("/w.pth"),))
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["test-cli"]["status"] == "missing" and rows["torchvision-vgg16"]["licence"].startswith("BSD")
    record = tmp_path / "out" / "weights.json"
    assert main(["weights", "verify", "test-cli", "--record", str(record)]) == 2
    assert "missing" in capsys.readouterr().err and not record.exists()

    assert main(["weights", "fetch", "test-cli", "--quiet"]) == 0
    dest = weights.weights_dir() / entry.file_name
    assert capsys.readouterr().out.strip() == str(dest)
    assert main(["weights", "verify", "test-cli", "--record", str(record)]) == 0
    assert "test-cli: present (sha256 ok" in capsys.readouterr().out
    assert json.loads(record.read_text()) == {"test-cli": {"file": entry.file_name, "path": str(dest),
                                                          "sha256": sha(data)}}
    assert main(["weights", "path", "test-cli"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert main(["weights", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test-cli "))
    assert "present" in line and str(dest) in line

    dest.write_bytes(b"tampered")
    assert main(["weights", "verify", "test-cli"]) == 2
    captured = capsys.readouterr()
    assert "test-cli: bad" in captured.out and captured.err.count("\n") == 1


def test_cli_import_and_errors(entries, capsys, tmp_path):
    data = os.urandom(1000)
    entry = entries("test-cli-import", data)
    source = _write(tmp_path / "x.pth", data)
    assert main(["weights", "import", str(source)]) == 0
    assert capsys.readouterr().out.strip() == f"test-cli-import: {weights.weights_dir() / entry.file_name}"
    assert main(["weights", "import", str(_write(tmp_path / "y.pth", b"other"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ulbc: error: ") and "matches no registered weights file" in err and err.count("\n") == 1
    assert main(["weights", "path", "no-such-weights"]) == 2
    assert "unknown weights 'no-such-weights'" in capsys.readouterr().err
    assert main(["weights", "fetch", "a", "b", "--url", "http://127.0.0.1:1/x"]) == 2
    assert "single NAME" in capsys.readouterr().err


def test_cli_subprocess_with_site_registry_offline(tmp_path):
    """How end-to-end tests use it: random weights registered through a YAML file, in a new process."""
    data = os.urandom(4096)
    url = refused_url("/e2e.pth")
    registry = tmp_path / "site.yaml"
    registry.write_text(f"- name: e2e-random\n  file_name: e2e-random.pth\n  sha256: {sha(data)}\n"
                        f"  licence: test\n  used_by: [lpips]\n  urls: ['{url}']\n")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(ULBC_WEIGHTS=str(tmp_path / "w"), TORCH_HOME=str(tmp_path / "torch"),
               ULBC_WEIGHTS_REGISTRY=str(registry), PYTHONPATH=str(REPO))

    def ulbc(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ulbc", "weights", *argv], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    # The CLI as `python -m ulbc` runs it, minus the waits between retries of a refused connection.
    no_retries = ("import sys; from ulbc import weights; from ulbc.cli import main; "
                  "weights.DOWNLOAD_RETRIES = 0; sys.exit(main(sys.argv[1:]))")
    offline = subprocess.run([sys.executable, "-c", no_retries, "weights", "fetch", "e2e-random", "--quiet"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 2
    assert offline.stderr.count("\n") == 1 and "Traceback" not in offline.stderr
    assert "e2e-random.pth" in offline.stderr and url in offline.stderr and "ulbc weights import PATH" in offline.stderr
    imported = ulbc("import", str(_write(tmp_path / "random.pth", data)))
    assert imported.returncode == 0, imported.stderr
    assert ulbc("path", "e2e-random").stdout.strip() == str(tmp_path / "w" / "e2e-random.pth")


def test_the_study_check_finds_a_file_by_size_without_hashing_it(entries, tmp_path, monkeypatch):
    data = payload(2000)
    entry = entries("sized", data, size=len(data))
    with pytest.raises(WeightsMissingError, match=rf"{entry.file_name}.*ulbc weights import PATH"):
        weights.require_present("sized")
    dest = weights.weights_dir() / entry.file_name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:-1])
    with pytest.raises(WeightsMissingError, match="1999 bytes, expected 2000"):
        weights.require_present("sized")
    dest.write_bytes(data)
    monkeypatch.setattr(weights, "_sha256", lambda path: pytest.fail("hashed at study-check time"))
    assert weights.require_present("sized") == dest


# -- unpinned entries (no published checksum) ------------------------------------------------------------------
def _unpinned_registry(tmp_path: Path, monkeypatch, *, size: int | None = None, urls: tuple[str, ...] = ()) -> str:
    """A site registry with one unpinned entry ('sha256: ""'); returns its name."""
    registry = tmp_path / "site.yaml"
    registry.write_text(
        "- name: site-unpinned\n"
        "  file_name: unpinned.pth.tar\n"
        '  sha256: ""\n'
        "  licence: internal\n"
        "  used_by: [glc]\n"
        + (f"  size: {size}\n" if size is not None else "")
        + (f"  urls: [{', '.join(urls)}]\n" if urls else ""))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    return "site-unpinned"


def test_glc_image_is_registered_unpinned():
    entry = weights.WEIGHTS["glc-image"]
    assert (entry.file_name, entry.urls, entry.sha256, entry.size) == ("GLC_image.pth.tar", (), "", None)
    assert not entry.pinned and not entry.full_hash and entry.check == "no published checksum"
    assert entry.used_by == ("glc",) and entry.licence.startswith("Apache-2.0")
    assert "github.com/jzyustc/GLC" in entry.description and "jzyustc/GLC" in entry.page
    assert entry.matches("0" * 64, 1) and entry.matches(sha(b"anything"), 8)
    assert weights.WEIGHTS["torchvision-vgg16"].pinned


def test_unpinned_entry_checks_the_size_only():
    entry = WeightFile(name="test-sized-unpinned", file_name="u.pth", urls=(), sha256="", size=10, licence="t",
                       used_by=(), description="")
    assert entry.matches(sha(b"x" * 10), 10) and not entry.matches(sha(b"x" * 9), 9)


def test_glc_image_missing_is_one_line_naming_the_release_page_and_import():
    with pytest.raises(WeightsMissingError) as info:
        weights.require("glc-image")
    message = str(info.value)
    assert "\n" not in message
    for part in ("GLC_image.pth.tar", "no download URL is registered", "github.com/jzyustc/GLC/releases",
                 "ulbc weights import PATH", "--name glc-image", "$ULBC_WEIGHTS_MIRROR"):
        assert part in message
    with pytest.raises(WeightsMissingError, match="ulbc weights import"):
        weights.require_present("glc-image")
    with pytest.raises(WeightsMissingError, match="ulbc weights import"):
        weights.fetch("glc-image", progress=False)  # nothing to download from
    assert weights.verify("glc-image").status == "missing"


def test_glc_image_import_by_canonical_file_name(tmp_path):
    data = os.urandom(3000)
    name, dest = weights.import_file(_write(tmp_path / "downloads" / "GLC_image.pth.tar", data))
    assert (name, dest) == ("glc-image", weights.weights_dir() / "GLC_image.pth.tar")
    assert dest.read_bytes() == data
    found = weights.verify("glc-image")
    assert found.ok and found.path == dest and found.sha256 == sha(data) and found.check == "no published checksum"
    assert weights.require("glc-image") == dest and weights.require_present("glc-image") == dest
    assert weights.file_sha256("glc-image") == sha(data)
    # Imported again (another copy of the release file): replaced, still known by its name only.
    other = os.urandom(100)
    assert weights.import_file(_write(tmp_path / "again" / "GLC_image.pth.tar", other)) == ("glc-image", dest)
    assert weights.verify("glc-image").sha256 == sha(other)


def test_glc_image_is_not_identified_by_content(tmp_path):
    stranger = _write(tmp_path / "checkpoint.pth.tar", os.urandom(500))
    with pytest.raises(InputError) as info:
        weights.import_file(stranger)
    message = str(info.value)
    assert "\n" not in message and "matches no registered weights file" in message
    assert "canonical file name" in message and "--name" in message
    assert files_in(weights.weights_dir()) == []
    # --name says which entry it is: any content is then taken.
    name, dest = weights.import_file(stranger, name="glc-image")
    assert (name, dest.name) == ("glc-image", "GLC_image.pth.tar") and dest.read_bytes() == stranger.read_bytes()
    assert weights.verify("glc-image").sha256 == sha(stranger.read_bytes())


def test_pinned_entries_still_win_by_digest_over_a_canonical_unpinned_name(entries, tmp_path):
    data = os.urandom(700)
    entries("test-pinned-first", data)
    # The content is a pinned entry's, whatever the file is called.
    assert weights.import_file(_write(tmp_path / "GLC_image.pth.tar", data))[0] == "test-pinned-first"
    assert weights.verify("glc-image").status == "missing"


def test_glc_image_in_torch_hubs_cache_is_used(tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    data = os.urandom(1234)
    _write(hub / "GLC_image.pth.tar", data)
    found = weights.verify("glc-image")
    assert found.ok and found.path == hub / "GLC_image.pth.tar" and found.sha256 == sha(data)
    assert weights.fetch("glc-image", progress=False) == hub / "GLC_image.pth.tar"  # no download needed


def test_site_registry_unpinned_entry_import_verify_and_size(monkeypatch, tmp_path):
    data = os.urandom(2048)
    name = _unpinned_registry(tmp_path, monkeypatch, size=len(data))
    entry = weights.registry()[name]
    assert entry.sha256 == "" and not entry.pinned and entry.size == 2048
    # Of the registered size but under another name: not identified.
    with pytest.raises(InputError, match="canonical file name"):
        weights.import_file(_write(tmp_path / "other.pth", data))
    # Its canonical name with the wrong size: refused, with or without --name.
    short = _write(tmp_path / "short" / "unpinned.pth.tar", data[:-1])
    with pytest.raises(InputError, match="2047 bytes.*2048 bytes"):
        weights.import_file(short)
    with pytest.raises(InputError, match="is not weights 'site-unpinned'.*2048 bytes"):
        weights.import_file(short, name=name)
    assert files_in(weights.weights_dir()) == []
    got, dest = weights.import_file(_write(tmp_path / "good" / "unpinned.pth.tar", data))
    assert (got, dest.name) == (name, "unpinned.pth.tar")
    found = weights.verify(name)
    assert found.ok and found.sha256 == sha(data)
    assert weights.require(name) == dest and weights.require_present(name) == dest
    dest.write_bytes(data + b"!")  # a file of another size under the canonical name is not used
    found = weights.verify(name)
    assert found.status == "bad" and "2049 bytes, expected 2048" in found.problem
    with pytest.raises(WeightsMissingError, match="2049 bytes, expected 2048"):
        weights.require(name)


def test_fetch_of_an_unpinned_entry(server, monkeypatch, tmp_path):
    data = payload(60_000, seed=21)
    server.files["/u.pth.tar"] = data
    name = _unpinned_registry(tmp_path, monkeypatch, urls=(server.url("/u.pth.tar"),))
    path = weights.fetch(name, progress=False)
    assert path == weights.weights_dir() / "unpinned.pth.tar" and path.read_bytes() == data
    assert files_in(weights.weights_dir()) == ["unpinned.pth.tar"]  # no staging file left
    found = weights.verify(name)
    assert found.ok and found.sha256 == sha(data)
    assert weights.fetch(name, progress=False) == path and len(server.requests) == 1


def test_fetch_of_an_unpinned_entry_refuses_another_size(server, monkeypatch, tmp_path):
    data = payload(30_000, seed=22)
    server.files["/u.pth.tar"] = data
    name = _unpinned_registry(tmp_path, monkeypatch, size=len(data) + 1, urls=(server.url("/u.pth.tar"),))
    with pytest.raises(WeightsMissingError) as info:
        weights.fetch(name, progress=False)
    message = str(info.value)
    assert "size mismatch" in message and "\n" not in message
    assert files_in(weights.weights_dir()) == []


def test_site_registry_unpinned_sha256_values(monkeypatch, tmp_path):
    registry = tmp_path / "site.yaml"
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    registry.write_text("- name: s-empty\n  file_name: e.pth\n  sha256: ''\n  licence: t\n")
    assert weights.registry()["s-empty"].check == "no published checksum"
    for index, (value, complaint) in enumerate((("zz", "hex digits"), ("", "missing sha256"))):  # '' here: null
        registry = tmp_path / f"bad{index}.yaml"  # a new file: the loaded one is not read again
        registry.write_text(f"- name: s-bad\n  file_name: b.pth\n  sha256: {value}\n  licence: t\n")
        monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
        with pytest.raises(ConfigError) as info:
            weights.registry()
        assert complaint in str(info.value) and "\n" not in str(info.value)
        assert "s-bad" not in weights.WEIGHTS


def test_cli_shows_no_published_checksum(capsys, tmp_path):
    data = os.urandom(900)
    assert main(["weights", "list", "glc-image", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["check"] == "no published checksum" and row["sha256"] is None and row["status"] == "missing"
    assert main(["weights", "import", str(_write(tmp_path / "x.bin", data)), "--name", "glc-image"]) == 0
    dest = weights.weights_dir() / "GLC_image.pth.tar"
    assert capsys.readouterr().out.strip() == f"glc-image: {dest}"
    record = tmp_path / "weights.json"
    assert main(["weights", "verify", "glc-image", "--record", str(record)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"glc-image: present (no published checksum, sha256 {sha(data)}, {dest})"
    assert json.loads(record.read_text()) == {"glc-image": {"file": "GLC_image.pth.tar", "path": str(dest),
                                                           "sha256": sha(data)}}
