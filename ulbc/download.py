"""Resumable, checksummed HTTP(S) downloads with the standard library only.

Bytes go to ``<dest>.part`` (a stable name, so a later call can resume it with a Range request)
and reach ``dest`` by one ``os.replace`` after the sha256 matched: ``dest`` is whole or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path

from . import __version__
from .errors import DownloadError

CHUNK = 1 << 20
#: Client statuses worth another try (request timeout, rate limit); every 5xx is retried too.
RETRY_STATUSES = frozenset({408, 429})
#: Longest wait honoured from a Retry-After header (seconds).
MAX_RETRY_AFTER = 60.0
OFFLINE_HINT = (
    "this machine may be offline; point a 'local' dataset at a copy of the files instead"
)


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat for multi-GB archives."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def part_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


class _Retryable(Exception):
    """A failure another attempt may fix; ``offline`` marks connection-level failures."""

    def __init__(self, reason: str, *, offline: bool = False, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.offline = offline
        self.wait = wait


class _RangeIgnored(Exception):
    """The server refused our Range (416): the partial file cannot be continued."""


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        delay = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, delay))


def _content_range_start(value: str | None) -> int | None:
    """Start offset of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None
    spec = value.strip()[5:].strip()
    try:
        return int(spec.split("-", 1)[0])
    except ValueError:
        return None


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not (enabled and sys.stderr.isatty()),
        leave=False,
    )


def _attempt(url: str, part: Path, timeout: float, progress: bool) -> str:
    """One request: resume or restart ``part`` and stream the body into it; returns its sha256."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"ulbc/{__version__} (+urllib)", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            raise _RangeIgnored() from None
        if exc.code in RETRY_STATUSES or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {_one_line(exc.reason)}", wait=_retry_after(exc.headers)) from None
        raise DownloadError(f"{url}: HTTP {exc.code} {_one_line(exc.reason)}") from None
    except urllib.error.URLError as exc:
        raise _Retryable(f"cannot connect ({_one_line(exc.reason)})", offline=True) from None
    except (TimeoutError, socket.timeout) as exc:
        raise _Retryable(f"timed out connecting ({_one_line(exc) or 'timeout'})", offline=True) from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Retryable(f"connection failed ({_one_line(exc) or type(exc).__name__})", offline=True) from None

    with response:
        status = response.status
        resuming = status == 206 and have > 0 and _content_range_start(response.headers.get("Content-Range")) == have
        if status == 206 and not resuming:
            raise _RangeIgnored()  # a partial answer for some other offset: cannot be appended
        if status != 200 and not resuming:
            raise _Retryable(f"unexpected HTTP {status}")
        digest = hashlib.sha256()
        done = 0
        if resuming:
            # The server continues where we stopped: hash the bytes already held, then append.
            with open(part, "rb") as fh:
                while block := fh.read(CHUNK):
                    digest.update(block)
            done = have
        # A 200 answer (Range ignored or not sent) restarts the file from zero.
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = done + expected if expected is not None else None
        received = 0
        try:
            out = open(part, "ab" if resuming else "wb")
        except OSError as exc:
            raise DownloadError(f"{url}: cannot write {part} ({_one_line(exc)})") from None
        with out, _progress_bar(total, done, part.name[: -len(".part")], progress) as bar:
            while True:
                try:
                    # read1: whatever has arrived (up to CHUNK), so a kill loses little and resumes near it.
                    block = response.read1(CHUNK)
                except (TimeoutError, socket.timeout) as exc:
                    reason = _one_line(exc) or "timeout"
                    raise _Retryable(f"timed out after {done + received} bytes ({reason})") from None
                except (ConnectionError, http.client.HTTPException, OSError) as exc:
                    reason = _one_line(exc) or type(exc).__name__
                    raise _Retryable(f"connection lost after {done + received} bytes ({reason})") from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:
                    raise DownloadError(f"{url}: cannot write {part} ({_one_line(exc)})") from None
                digest.update(block)
                received += len(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received < expected:
            # http.client returns b"" on an early close instead of raising: treat it as a drop.
            raise _Retryable(f"connection closed after {done + received} of {total} bytes")
        return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60,
    progress: bool = True,
    size: int | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` and check its sha256; returns ``dest``.

    ``retries`` is the number of extra attempts after the first, waiting ``backoff * 2**attempt``
    seconds between them. ``sha256=None`` skips the hash check (callers must make that an explicit
    choice); ``size``, when given, is checked as well. A ``dest`` that already has the expected
    hash is returned without any network access.
    """
    dest = Path(dest)
    expected_hash = sha256.lower() if sha256 else None
    if dest.is_file():
        if expected_hash is not None and sha256_file(dest) == expected_hash:
            return dest
        if expected_hash is None and (size is None or dest.stat().st_size == size):
            return dest
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)

    last: _Retryable | None = None
    restarts = 0
    attempt = 0
    while attempt <= retries:
        try:
            got = _attempt(url, part, timeout, progress)
        except _RangeIgnored:
            # A .part already whole (killed before the rename) is answered 416: keep it if it verifies.
            if expected_hash is not None and part.is_file() and sha256_file(part) == expected_hash:
                return _finish(url, part, dest, expected_hash, expected_hash, size)
            # Otherwise the partial file is useless for this server: drop it and start again at once.
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            restarts += 1
            if restarts > retries + 1:
                _discard(part)
                raise DownloadError(f"{url}: server keeps refusing byte ranges; download failed") from None
            continue
        except _Retryable as exc:
            last = exc
            if attempt == retries:
                break
            delay = backoff * 2**attempt
            if exc.wait is not None:
                delay = max(delay, exc.wait)
            time.sleep(delay)
            attempt += 1
            continue
        except DownloadError:
            _discard(part)
            raise
        # Anything else (Ctrl-C, a kill) propagates and keeps the .part for the next call to resume.
        return _finish(url, part, dest, got, expected_hash, size)

    _discard(part)
    assert last is not None
    message = f"{url}: download failed after {retries + 1} attempt(s): {last.reason}"
    if last.offline:
        message += f"; {OFFLINE_HINT}"
    raise DownloadError(message)


def _discard(part: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        part.unlink()


def _finish(url: str, part: Path, dest: Path, got: str, expected: str | None, size: int | None) -> Path:
    if expected is not None and got != expected:
        _discard(part)
        raise DownloadError(f"{url}: sha256 mismatch: expected {expected}, got {got}")
    if size is not None and part.stat().st_size != size:
        actual = part.stat().st_size
        _discard(part)
        raise DownloadError(f"{url}: size mismatch: expected {size} bytes, got {actual}")
    os.replace(part, dest)
    return dest
