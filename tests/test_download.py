"""Resumable, checksummed downloads against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO
from ulbc.download import download, part_path, sha256_file
from ulbc.errors import DownloadError


@dataclass
class Behaviour:
    drop_after: int | None = None  # send this many body bytes, then cut the connection (once)
    fail_500: int = 0  # answer 500 this many times first
    status: int | None = None  # always answer this status (e.g. 404)
    ignore_range: bool = False  # answer 200 with the whole body even when a Range was sent
    stall_after: int | None = None  # send this many body bytes, then hang until the server stops (once)


@dataclass
class FixtureServer:
    """A threaded HTTP server serving in-memory files, with switchable misbehaviour per path."""

    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                state.requests.append((path, self.headers.get("Range")))
                rule = state.behaviour.setdefault(path, Behaviour())
                if rule.fail_500 > 0:
                    rule.fail_500 -= 1
                    return self._send_status(500)
                if rule.status is not None or path not in state.files:
                    return self._send_status(rule.status or 404)
                data = state.files[path]
                start = 0
                header = self.headers.get("Range")
                if header and not rule.ignore_range:
                    start = int(header.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(data):
                        return self._send_status(416)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if rule.drop_after is not None:
                    cut, rule.drop_after = rule.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if rule.stall_after is not None:
                    cut, rule.stall_after = rule.stall_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    state.release.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _send_status(self, code: int) -> None:
                body = f"status {code}\n".encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> "FixtureServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Requests must reach 127.0.0.1 directly, never an inherited HTTP proxy."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    with FixtureServer() as srv:
        yield srv


def payload(n: int = 300_000, seed: int = 1) -> bytes:
    """Deterministic incompressible bytes (larger than one read chunk would be pointless here)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_good_download_verifies_hash(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "out" / "f.bin"
    got = download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert got == dest
    assert dest.read_bytes() == data
    assert sha256_file(dest) == sha(data)
    assert leftovers(dest.parent) == ["f.bin"]
    assert server.requests == [("/f.bin", None)]


def test_resume_after_dropped_connection_sends_range(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    server.behaviour["/f.bin"] = Behaviour(drop_after=100_000)
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha(data), retries=2, backoff=0.01, progress=False)
    assert dest.read_bytes() == data
    assert server.requests[0] == ("/f.bin", None)
    assert server.requests[1] == ("/f.bin", "bytes=100000-")
    assert leftovers(tmp_path) == ["f.bin"]


def test_partial_file_from_a_killed_run_is_resumed(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(data[:123_456])  # what a killed process leaves behind
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert server.requests == [("/f.bin", "bytes=123456-")]
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()


def test_killed_process_leaves_only_part_and_next_call_resumes(server, tmp_path):
    data = payload(400_000)
    server.files["/f.bin"] = data
    server.behaviour["/f.bin"] = Behaviour(stall_after=150_000)
    dest = tmp_path / "f.bin"
    code = (
        "import sys; from ulbc.download import download; "
        "download(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, server.url("/f.bin"), str(dest), sha(data)], env=env)
    try:
        deadline = time.monotonic() + 20
        part = part_path(dest)
        while not (part.exists() and part.stat().st_size >= 150_000):
            assert proc.poll() is None, "the download ended instead of stalling"
            assert time.monotonic() < deadline, "no partial data arrived"
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.kill()
        proc.wait(10)
    assert leftovers(tmp_path) == ["f.bin.part"]  # never the final name
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert server.requests[-1] == ("/f.bin", "bytes=150000-")
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == ["f.bin"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    server.files["/f.bin"] = data
    server.behaviour["/f.bin"] = Behaviour(ignore_range=True)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"stale bytes that must not survive")
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert server.requests[0][1] is not None  # a Range was asked for...
    assert dest.read_bytes() == data  # ...and the 200 answer replaced the stale prefix


def test_complete_part_answered_416_is_kept(server, tmp_path):
    data = payload(5000)
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(data)  # killed between the last byte and the rename
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert dest.read_bytes() == data
    assert len(server.requests) == 1


def test_retries_on_500_then_succeeds(server, tmp_path):
    data = payload(10_000)
    server.files["/f.bin"] = data
    server.behaviour["/f.bin"] = Behaviour(fail_500=2)
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha(data), retries=3, backoff=0.01, progress=False)
    assert dest.read_bytes() == data
    assert len(server.requests) == 3


def test_exhausted_retries_leave_nothing(server, tmp_path):
    server.files["/f.bin"] = payload(1000)
    server.behaviour["/f.bin"] = Behaviour(fail_500=10)
    url = server.url("/f.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "f.bin", sha(b""), retries=2, backoff=0.01, progress=False)
    message = str(info.value)
    assert url in message and "HTTP 500" in message and "3 attempt" in message
    assert "\n" not in message
    assert len(server.requests) == 3
    assert leftovers(tmp_path) == []


def test_checksum_mismatch(server, tmp_path):
    data = payload(20_000)
    server.files["/f.bin"] = data
    wrong = "0" * 64
    url = server.url("/f.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "f.bin", wrong, progress=False)
    message = str(info.value)
    assert message == f"{url}: sha256 mismatch: expected {wrong}, got {sha(data)}"
    assert leftovers(tmp_path) == []


def test_404_is_final_and_one_line(server, tmp_path):
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "m.bin", "0" * 64, retries=3, backoff=0.01, progress=False)
    message = str(info.value)
    assert url in message and "404" in message and "\n" not in message
    assert len(server.requests) == 1  # a 404 is not retried
    assert leftovers(tmp_path) == []


def test_existing_good_dest_makes_no_request(server, tmp_path):
    data = payload(4000)
    dest = tmp_path / "f.bin"
    dest.write_bytes(data)
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert server.requests == []


def test_existing_bad_dest_is_replaced(server, tmp_path):
    data = payload(4000)
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"corrupt")
    download(server.url("/f.bin"), dest, sha(data), progress=False)
    assert dest.read_bytes() == data


def test_connection_refused_mentions_offline_and_local(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x.bin", "0" * 64, retries=1, backoff=0.01, timeout=5, progress=False)
    message = str(info.value)
    assert url in message and "offline" in message and "local" in message and "\n" not in message
    assert leftovers(tmp_path) == []


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        download("ftp://example.org/x", tmp_path / "x", "0" * 64, progress=False)


def test_sha256_file_chunked(tmp_path):
    data = payload(3 * 1024 + 7)
    path = tmp_path / "d"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1000) == sha(data)


def test_size_check_without_hash(server, tmp_path):
    data = payload(2048)
    server.files["/f.bin"] = data
    with pytest.raises(DownloadError, match="size mismatch"):
        download(server.url("/f.bin"), tmp_path / "f.bin", None, size=999, progress=False)
    assert leftovers(tmp_path) == []
    got = download(server.url("/f.bin"), tmp_path / "f.bin", None, size=len(data), progress=False)
    assert got.read_bytes() == data

