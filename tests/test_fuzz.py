"""Hostile bitstreams against every registered codec: truncations, byte flips behind a valid checksum
(so each codec's own parser sees the damage), forged sizes and frame counts, forged counts in the
codecs' own headers. Every case must decode to an array of the declared shape or raise a one-line
UlbcError: no other exception, no hang, bounded memory.

Each codec's cases run in a worker subprocess (this file run as a script) that measures its own peak
RSS over the decodes and times every case. The default is small and seeded; ``pytest --long`` raises
the case counts a lot. The counts per codec are printed in pytest's terminal summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

#: Working-memory limit the workers decode under (ulbc.limits); the peak RSS over the fuzzed decodes
#: must stay within it plus SLACK_MB (decoded arrays, allocator caches, ffmpeg pipes).
WORKER_MEMORY_LIMIT = "768M"
SLACK_MB = 512
CASE_TIMEOUT_S = 60
#: Per-kind case counts (short, long).
COUNTS = {"truncate": (8, 80), "flip": (16, 300), "varint": (8, 120), "forged_size": (0, 24)}
SIZE = 32
CLIP_FRAMES = 3

#: Outcomes per codec, filled by the tests and printed by conftest's terminal summary.
FUZZ_COUNTS: dict[str, Counter] = {}


# -- the worker ----------------------------------------------------------------------------------------
def _small_options(codec_cls) -> dict:
    """Tiny training budgets for the trained codecs (quality is not the point here)."""
    wanted = {"iterations": 20, "candidates": 1, "warmup_iterations": 5, "final_iterations": 5, "n_grids": 4,
              "arm_context": 8, "preset": "lop", "progress": False, "finetune_iterations": 5, "eval_every": 10,
              "pe_levels": 8, "batch_frames": 1}
    known = set(codec_cls.option_specs)
    if "checkpoint" in known or codec_cls.name == "misc":  # stand-in checkpoints; misc's caption table
        from conftest import quick_options

        return quick_options(codec_cls.name)
    return {k: v for k, v in wanted.items() if k in known} if "iterations" in known else {}


def _sample(codec_cls) -> np.ndarray:
    from skimage.data import astronaut

    w, h = max(SIZE, codec_cls.min_size[0]), max(SIZE, codec_cls.min_size[1])
    image = astronaut()
    if codec_cls.media == "video":
        return np.ascontiguousarray(np.stack([image[100 + 2 * i : 100 + 2 * i + h, 180 + 3 * i : 180 + 3 * i + w]
                                              for i in range(CLIP_FRAMES)]))
    return np.ascontiguousarray(image[100 : 100 + h, 180 : 180 + w])


def _encode(name: str) -> bytes:
    from ulbc.codecs import CODECS, get_codec

    cls = CODECS[name]
    codec = get_codec(name, **_small_options(cls))
    rates = cls.default_rates
    rate = rates[len(rates) // 2]
    sample = _sample(cls)
    if cls.media == "video":
        return codec.encode_clip(sample, rate, seed=1)
    return codec.encode(sample, rate, seed=1)


def _body(data: bytes) -> bytes:
    return data[:-4]


def _container_bytes(codec_id: int, width: int, height: int, params: bytes, payload: bytes) -> bytes:
    """A container without the size checks of Container.to_bytes (forged sizes must be writable)."""
    from ulbc import bitstream

    body = (bitstream.MAGIC + bytes([bitstream.FORMAT_VERSION, codec_id]) + bitstream.encode_varint(width)
            + bitstream.encode_varint(height) + bitstream.encode_varint(len(params)) + params + payload)
    return bitstream.seal(body)


EXTREMES = (0, 1, 2, 127, 128, 255, 4096, (1 << 14) - 1, 1 << 16, (1 << 21) - 1, 1 << 28, (1 << 35) - 1)


def _cases(name: str, data: bytes, long: bool, rng: np.random.Generator):
    """(kind, bytes) pairs for one codec's valid file ``data``."""
    from ulbc import bitstream
    from ulbc.codecs import CODECS

    cls = CODECS[name]
    c = bitstream.parse(data)
    body = _body(data)
    n = 1 if long else 0

    def count(kind):
        return COUNTS[kind][n]

    # Truncations: of the whole file (the CRC must catch them) and behind a resealed checksum.
    for cut in rng.choice(len(data), min(len(data), 3), replace=False):
        yield "truncate", data[: int(cut)]
    for cut in rng.choice(len(body), min(len(body), count("truncate")), replace=False):
        yield "truncate", bitstream.seal(body[: max(int(cut), 1)])
    # Byte flips behind a valid CRC (bytes after the codec id; 1 to 4 bytes per case).
    for _ in range(count("flip")):
        damaged = bytearray(body)
        for pos in rng.integers(4, len(body), int(rng.integers(1, 5))):
            damaged[pos] ^= int(rng.integers(1, 256))
        yield "flip", bitstream.seal(bytes(damaged))
    # Forged width/height in the container.
    sizes = [(1, 1), (c.width + 1, c.height), (c.width, max(1, c.height - 1)), (2 * c.width, 2 * c.height),
             (64 * c.width, 64 * c.height), (16385, 16385), (100000, 100000), (1 << 20, 1 << 20), (1, 1 << 20)]
    sizes += [(int(rng.integers(1, 1 << 14)), int(rng.integers(1, 1 << 14))) for _ in range(count("forged_size"))]
    for w, h in sizes:
        yield "size", _container_bytes(c.codec_id, w, h, c.params, c.payload)
    # Forged varints at random places of the parameter block and the start of the payload.
    region = c.params + c.payload[:32]
    for _ in range(count("varint") if region else 0):
        pos = int(rng.integers(0, len(region)))
        try:
            _, end = bitstream.decode_varint(region, pos, "x")
        except Exception:
            end = pos + 1
        forged = region[:pos] + bitstream.encode_varint(int(rng.choice(EXTREMES))) + region[end:]
        split = len(c.params) + (len(forged) - len(region)) if pos < len(c.params) else len(c.params)
        params, payload = forged[:split], forged[split:] + c.payload[32:]
        yield "varint", _container_bytes(c.codec_id, c.width, c.height, params, payload)
    if cls.media == "video":
        n_frames, pos = bitstream.decode_varint(c.params, 0, "frame count")
        own = c.params[pos:]
        for frames in (0, 1, n_frames - 1, n_frames + 1, 2 * n_frames, 100000, 1 << 30, (1 << 35) - 1):
            yield "frames", _container_bytes(c.codec_id, c.width, c.height, bitstream.encode_varint(frames) + own,
                                             c.payload)
    yield from _codec_header_cases(name, c)


def _codec_header_cases(name: str, c):
    """Forged counts in the overfitted and NeRV codecs' own headers."""
    from ulbc import bitstream

    if name in ("coolchic", "lottery"):
        from ulbc.overfit import stream

        arch, seed, bound, nn_bytes, mask_bytes = stream.read_header(name, c.params)
        for b in (0, 1, stream.MAX_BOUND, stream.MAX_BOUND + 1, 1 << 34):
            yield "header", _container_bytes(c.codec_id, c.width, c.height,
                                             stream.write_header(arch, seed, b, nn_bytes, mask_bytes), c.payload)
        for nn in (0, nn_bytes - 1, nn_bytes + 1, len(c.payload), 1 << 34):
            yield "header", _container_bytes(c.codec_id, c.width, c.height,
                                             stream.write_header(arch, seed, bound, nn, mask_bytes), c.payload)
        if name == "lottery":
            for m in (0, mask_bytes + 1, 1 << 34):
                yield "header", _container_bytes(c.codec_id, c.width, c.height,
                                                 stream.write_header(arch, seed, bound, nn_bytes, m), c.payload)
        # The leading counts: grids, ARM context, ARM hidden layers, coarse context.
        fields, pos = [], 1
        for _ in range(4):
            value, pos = bitstream.decode_varint(c.params, pos, "field")
            fields.append(value)
        for i in range(4):
            for value in (0, 13, 41, 1 << 20):
                forged = list(fields)
                forged[i] = value
                params = c.params[:1] + b"".join(bitstream.encode_varint(v) for v in forged) + c.params[pos:]
                yield "header", _container_bytes(c.codec_id, c.width, c.height, params, c.payload)
    elif name in ("nerv", "supermask-nerv"):
        from ulbc.nerv import stream

        kind = "nerv" if name == "nerv" else "supermask"
        n_frames, pos = bitstream.decode_varint(c.params, 0, "frame count")
        own = c.params[pos:]
        header = stream.read_header(kind, own, c.width, c.height)
        arch_bytes = header.arch.to_bytes()
        start = 3
        assert own[start : start + len(arch_bytes)] == arch_bytes
        rest = own[start + len(arch_bytes) :]
        n_ch = len(header.arch.channels)
        for change in ({"pe_levels": 0}, {"pe_levels": 257}, {"stem_dim": 1 << 14}, {"stem_dim": (1 << 14) + 1},
                       {"channels": (4096,) * n_ch}, {"channels": (4097,) * n_ch}, {"head_kernel": 2},
                       {"pe_base": float("nan")}, {"pe_base": 1.0}):
            arch = dataclasses.replace(header.arch, **change)
            params = bitstream.encode_varint(n_frames) + own[:start] + arch.to_bytes() + rest
            yield "header", _container_bytes(c.codec_id, c.width, c.height, params, c.payload)
        # Steps of 1e20 overflow float32 in the network: the decoder must refuse non-finite output.
        if kind == "nerv":
            n_steps = 2 * len(header.arch.layers)
            payload = np.full(n_steps, 1e20, dtype="<f4").tobytes() + c.payload[4 * n_steps :]
            yield "header", _container_bytes(c.codec_id, c.width, c.height, c.params, payload)


class CaseTimeout(BaseException):
    """Raised by the alarm in a case that runs too long (BaseException: no codec may swallow it)."""


def _on_alarm(signum, frame):
    raise CaseTimeout()


def _peak_rss_mb() -> float:
    try:
        text = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux clear_refs), so the peak covers the decodes only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(name: str, long: bool, seed: int) -> dict:
    import torch

    from ulbc.codecs import decode_bitstream
    from ulbc.errors import UlbcError

    torch.set_num_threads(1)
    data = _encode(name)
    rng = np.random.default_rng(seed)
    cases = list(_cases(name, data, long, rng))
    _, reference = decode_bitstream(data)  # warm-up: the libraries' own first-use allocations
    signal.signal(signal.SIGALRM, _on_alarm)
    reset = _reset_peak_rss()
    baseline = _peak_rss_mb()
    outcomes, failures, slowest = Counter(), [], 0.0
    for index, (kind, blob) in enumerate(cases):
        start = time.perf_counter()
        signal.alarm(CASE_TIMEOUT_S)
        try:
            try:
                _, decoded = decode_bitstream(blob, name=f"case{index}")
            finally:
                signal.alarm(0)
        except CaseTimeout:
            outcome = "timeout"
            failures.append(f"{kind} case {index}: no result after {CASE_TIMEOUT_S} s")
        except UlbcError as exc:
            outcome = type(exc).__name__
            if "\n" in str(exc) or not str(exc).startswith(f"case{index}: "):
                failures.append(f"{kind} case {index}: {outcome} not one line naming the file: {str(exc)[:300]!r}")
        except BaseException as exc:  # what the test exists to find
            outcome = f"other:{type(exc).__name__}"
            failures.append(f"{kind} case {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        else:
            outcome = "decoded"
            from ulbc import bitstream

            c = bitstream.parse(blob)
            expected = (c.height, c.width, 3)
            if decoded.ndim == 4:
                expected = (decoded.shape[0],) + expected
            if decoded.shape != expected or decoded.dtype != np.uint8:
                outcome = "other:bad-shape"
                failures.append(f"{kind} case {index}: decoded {decoded.dtype} {decoded.shape}, header says {expected}")
        slowest = max(slowest, time.perf_counter() - start)
        outcomes[outcome] += 1
    return {"codec": name, "cases": len(cases), "outcomes": dict(outcomes), "failures": failures,
            "peak_mb": round(_peak_rss_mb(), 1), "baseline_mb": round(baseline, 1), "peak_was_reset": reset,
            "slowest_s": round(slowest, 2), "reference_shape": list(reference.shape)}


# -- the tests -----------------------------------------------------------------------------------------
def _codec_names() -> list[str]:
    from ulbc.codecs import CODECS

    return sorted(CODECS)


def _run_worker(name: str, long: bool, seed: int) -> dict:
    env = {**os.environ, "ULBC_DECODE_MAX_MEMORY": WORKER_MEMORY_LIMIT, "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    timeout = (3000 if long else 600)
    proc = subprocess.run([sys.executable, __file__, name, "long" if long else "short", str(seed)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"fuzz worker for {name} died (status {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", _codec_names())
def test_hostile_bitstreams_decode_or_fail_in_one_line(name, request):
    from ulbc.codecs import CODECS

    reason = CODECS[name].availability()
    if reason:
        pytest.skip(f"{name}: {reason}")
    long = request.config.getoption("--long", default=False)
    report = _run_worker(name, long, seed=sum(map(ord, name)))
    counts = Counter(report["outcomes"])
    counts["cases"] = report["cases"]
    FUZZ_COUNTS[name] = counts
    FUZZ_COUNTS[name]["peak_mb"] = int(report["peak_mb"] - report["baseline_mb"])
    assert not report["failures"], "\n".join(report["failures"][:20])
    limit_mb = int(WORKER_MEMORY_LIMIT[:-1])
    grown = report["peak_mb"] - report["baseline_mb"]
    assert grown <= limit_mb + SLACK_MB, f"{name}: peak RSS grew {grown:.0f} MB over the fuzzed decodes"
    assert sum(v for k, v in counts.items() if k.endswith("Error")) > 0, "no case was refused: the cases are too weak"


def format_table(counts: dict[str, Counter]) -> list[str]:
    """One row per codec: cases, decoded, each UlbcError class, other, peak RSS growth."""
    classes = sorted({k for c in counts.values() for k in c if k.endswith("Error") and not k.startswith("other:")})
    others = sorted({k for c in counts.values() for k in c if k.startswith("other:") or k == "timeout"})
    head = ["codec", "cases", "decoded", *classes, "other", "peak+MB"]
    rows = [head]
    for name in sorted(counts):
        c = counts[name]
        rows.append([name, str(c["cases"]), str(c["decoded"]), *(str(c[k]) for k in classes),
                     str(sum(c[k] for k in others)), str(c["peak_mb"])])
    total = ["total", str(sum(c["cases"] for c in counts.values())),
             str(sum(c["decoded"] for c in counts.values())),
             *(str(sum(c[k] for c in counts.values())) for k in classes),
             str(sum(c[k] for c in counts.values() for k in others)), ""]
    rows.append(total)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
            for r in rows]


def test_the_cli_reports_hostile_files_in_one_line(tmp_path):
    """Through the real command line: non-zero status, exactly one stderr line, no traceback."""
    from ulbc import bitstream
    from ulbc.codecs import CODECS

    valid = CODECS["jpeg"]().encode(_sample(CODECS["jpeg"]), 50)
    body = bytearray(_body(valid))
    body[len(body) - len(bitstream.parse(valid).payload) + 1] ^= 0xFF  # the JPEG's start-of-image marker
    files = {
        "truncated": valid[:-7],
        "flipped": bitstream.seal(bytes(body)),
        "not-ulbc": b"GIF89a" + bytes(40),
        # Refused from the header alone, before the codec parses anything (no payload needed).
        "coolchic-1e10": _container_bytes(CODECS["coolchic"].codec_id, 100000, 100000, b"\x01", b""),
        "nerv-100000-frames": _container_bytes(CODECS["nerv"].codec_id, 128, 96,
                                               bitstream.encode_varint(100000) + b"NV\x01", b""),
    }
    for label, blob in files.items():
        path = tmp_path / f"{label}.ulb"
        path.write_bytes(blob)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ulbc", "decode", str(path), str(tmp_path / f"{label}.png")],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, label
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (label, proc.stderr[-2000:])
        assert str(path) in lines[0], (label, lines[0])
        assert time.perf_counter() - start < 60, label
        if label == "coolchic-1e10":
            assert "header claims 100000x100000 (1e10 pixels), over the decode limit" in lines[0]
        if label == "nerv-100000-frames":
            assert "100000 frames" in lines[0]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(worker(sys.argv[1], sys.argv[2] == "long", int(sys.argv[3]))))
