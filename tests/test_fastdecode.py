"""The compiled decoder of the overfitted codecs (ulbc.overfit.fastdecode) against the reference
decoder that specifies it (ulbc.overfit.stream): pixels equal on a corpus of bitstreams, in fresh
processes with one and several threads, without torch; damaged inputs refused alike; and the
integer entropy coder (ulbc.overfit.rans) it shares with the encoder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ulbc import bitstream
from ulbc.codecs import decode_bitstream, get_codec
from ulbc.errors import BitstreamError
from ulbc.overfit import DECODER_ENV, fastdecode, rans, stream
from ulbc.overfit import format as layout

DATA = Path(__file__).parent / "data"

#: (codec, options, (height, width), λ): both codecs, odd and degenerate sizes, the three Cool-chic
#: presets, coarse ARM contexts, no ARM hidden layer, LotteryCodec's mask at two keep ratios.
CORPUS = [
    ("coolchic", {"preset": "lop"}, (23, 37), 1e-3),
    ("coolchic", {"preset": "mop", "arm_context": 12}, (32, 48), 1e-4),
    ("coolchic", {"preset": "hop", "n_grids": 7, "arm_context": 16}, (31, 50), 4e-4),
    ("coolchic", {"preset": "mop", "arm_coarse": 5, "arm_hidden": 1}, (17, 40), 4e-3),
    ("coolchic", {"preset": "lop", "arm_hidden": 0, "arm_coarse": 9, "n_grids": 3}, (1, 1), 2e-2),
    ("coolchic", {"synthesis": "24-3-linear-relu,3-1-linear-none,3-3-residual-relu"}, (9, 30), 1e-3),
    ("lottery", {}, (29, 31), 1e-3),
    ("lottery", {"arm_coarse": 9, "n_grids": 3, "keep_ratio": 0.6}, (1, 9), 1e-3),
    ("lottery", {"mod_channels": 8, "hidden": [12, 8, 6], "arm_context": 4}, (24, 19), 1e-2),
]


def _image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 70 * np.sin(x / 4.0), 128 + 60 * np.cos(y / 3.0), (x * y * 5) % 255], -1)
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fastdecode-corpus")
    paths = []
    for i, (name, extra, (h, w), lam) in enumerate(CORPUS):
        options = {"iterations": 40, "candidates": 1, "warmup_iterations": 5, "final_iterations": 10, "n_grids": 5,
                   "arm_context": 8, "progress": False, **extra}
        path = folder / f"{i:02d}-{name}.ulb"
        path.write_bytes(get_codec(name, **options).encode(_image(h, w, i), lam, seed=i))
        paths.append(path)
    return paths


def _reference(data: bytes) -> np.ndarray:
    c = bitstream.parse(data, "x")
    name = "coolchic" if c.codec_id == 40 else "lottery"
    return stream.decode(name, c.params, c.payload, c.width, c.height)


def _compiled(data: bytes) -> np.ndarray:
    c = bitstream.parse(data, "x")
    name = "coolchic" if c.codec_id == 40 else "lottery"
    return fastdecode.decode(name, c.params, c.payload, c.width, c.height)


def test_corpus_decodes_to_the_reference_pixels(corpus):
    kinds = set()
    for path in corpus:
        data = path.read_bytes()
        c = bitstream.parse(data, path.name)
        assert c.params[0] == layout.FORMAT_VERSION == 2
        reference, compiled = _reference(data), _compiled(data)
        assert compiled.dtype == np.uint8 and compiled.shape == (c.height, c.width, 3)
        assert int(np.abs(reference.astype(int) - compiled).max()) == 0, path.name
        kinds.add(path.name.split("-", 1)[1])
    assert kinds == {"coolchic.ulb", "lottery.ulb"}


_WORKER = r"""
import hashlib, json, sys
from ulbc.codecs import decode_bitstream
out = {p: hashlib.sha256(decode_bitstream(open(p, "rb").read(), name=p)[1].tobytes()).hexdigest() for p in sys.argv[1:]}
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_fresh_process_with_one_or_more_threads_gives_the_same_pixels_without_torch(corpus, threads):
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    env.pop(DECODER_ENV, None)
    run = subprocess.run([sys.executable, "-c", _WORKER, *map(str, corpus)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got.pop("torch_loaded") is False
    for path in corpus:
        assert got[str(path)] == hashlib.sha256(_reference(path.read_bytes()).tobytes()).hexdigest(), path.name


def test_the_reference_decoder_is_selectable(corpus, monkeypatch):
    data = corpus[0].read_bytes()
    calls = []
    real = stream.decode
    monkeypatch.setattr(stream, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(DECODER_ENV, "reference")
    reference = decode_bitstream(data)[1]
    assert calls
    monkeypatch.setenv(DECODER_ENV, "compiled")
    assert np.array_equal(decode_bitstream(data)[1], reference) and len(calls) == 1
    monkeypatch.setenv(DECODER_ENV, "fast")
    with pytest.raises(Exception, match="ULBC_OVERFIT_DECODER='fast': expected one of compiled, reference"):
        decode_bitstream(data)


@pytest.mark.parametrize("name,digest", [
    ("coolchic", "43c84fe5f52bce6d3c961ad7263d57d735a46800c0e4c589beb4c60ccef4f0a4"),
    ("lottery", "a7cd5004a40cc39443332e954bc2d0ba00aa65fa5422e87e7db317bbf3a5715d"),
])
def test_format_1_files_still_decode_to_their_pixels(name, digest, monkeypatch):
    # Written by ulbc before format 2 (constriction's float range coder, torch-built random network);
    # the digests are of the pixels that ulbc decoded then.
    data = (DATA / f"{name}_format1.ulb").read_bytes()
    assert bitstream.parse(data, name).params[0] == 1
    for decoder in ("compiled", "reference"):
        monkeypatch.setenv(DECODER_ENV, decoder)
        assert hashlib.sha256(decode_bitstream(data)[1].tobytes()).hexdigest() == digest


def _mutations(data: bytes, rng: np.random.Generator):
    """Truncations and byte flips of the codec's own bytes behind a valid container checksum, and
    forged header fields."""
    c = bitstream.parse(data, "x")
    name = "coolchic" if c.codec_id == 40 else "lottery"

    def sealed(params, payload, width=c.width, height=c.height):
        return bitstream.Container(c.codec_id, width, height, params, payload).to_bytes()

    for cut in sorted(set(rng.integers(0, len(c.payload), 4).tolist()) | {len(c.payload) - 1, len(c.payload) - 4}):
        yield "truncated payload", sealed(c.params, c.payload[: max(cut, 0)])
    for _ in range(10):
        payload = bytearray(c.payload)
        payload[int(rng.integers(len(payload)))] ^= 1 << int(rng.integers(8))
        yield "flipped payload", sealed(c.params, bytes(payload))
    for _ in range(4):
        params = bytearray(c.params)
        params[int(rng.integers(1, len(params)))] ^= 1 << int(rng.integers(8))
        yield "flipped header", sealed(bytes(params), c.payload)
    h = layout.parse_header(name, c.params)
    for bound in (0, 1, h.bound + 1, layout.MAX_BOUND):
        yield "forged bound", sealed(layout.write_header(h.arch, h.seed, bound, h.nn_bytes, h.mask_bytes), c.payload)
    yield "forged size", sealed(c.params, c.payload, c.width + 1, c.height)
    yield "forged size", sealed(c.params, c.payload, c.width, c.height * 2)
    yield "extra words", sealed(c.params, c.payload + b"\0\0\0\0")


def test_damaged_inputs_are_refused_or_decoded_exactly_as_the_reference_does(corpus):
    rng = np.random.default_rng(0)
    outcomes = {"refused by both": 0, "same pixels": 0}
    for path in corpus[:4] + corpus[6:8]:
        for what, data in _mutations(path.read_bytes(), rng):
            results = []
            for decoder in (_reference, _compiled):
                try:
                    results.append(decoder(data))
                except BitstreamError as exc:
                    assert "\n" not in str(exc)
                    results.append(None)
            if results[0] is None or results[1] is None:
                assert results[0] is None and results[1] is None, (path.name, what)
                outcomes["refused by both"] += 1
            else:
                assert np.array_equal(results[0], results[1]), (path.name, what)
                outcomes["same pixels"] += 1
    assert outcomes["refused by both"] > 50


def test_a_forged_size_over_the_memory_estimate_is_refused_before_allocating(corpus, monkeypatch):
    data = corpus[5].read_bytes()  # a 24-channel 3x3 layer: its maps dominate the estimate
    c = bitstream.parse(data, "x")
    arch = layout.parse_header("coolchic", c.params).arch
    assert fastdecode.memory_bytes(arch, 6000, 6000) > 16 << 30 > 6000 * 6000 * 128
    forged = bitstream.Container(c.codec_id, 6000, 6000, c.params, c.payload).to_bytes()
    with pytest.raises(BitstreamError, match="6000x6000 coolchic image, which needs an estimated .* GiB"):
        decode_bitstream(forged, name="f")
    monkeypatch.setenv("ULBC_DECODE_MAX_MEMORY", "64K")
    with pytest.raises(BitstreamError, match="ULBC_DECODE_MAX_MEMORY"):
        decode_bitstream(data, name="f")


def test_a_shard_decodes_in_parallel_threads_to_the_same_pack(corpus, tmp_path):
    from ulbc.pack import PackReader, bitstream_entry, write_pack
    from ulbc.runner import decode_shard

    pack = tmp_path / "pack.zip"
    write_pack(pack, [(bitstream_entry(p.stem), p.read_bytes()) for p in corpus])
    results = []
    for workers in (1, 3):
        out, log = tmp_path / f"decoded{workers}.zip", tmp_path / f"log{workers}.parquet"
        assert decode_shard(pack, out, log, device="cpu", progress=False, workers=workers) == len(corpus)
        with PackReader(out) as reader:
            results.append({n: reader.read(n) for n in reader.names()})
        import pandas as pd

        frame = pd.read_parquet(log)
        assert list(frame["item"]) == [p.stem for p in corpus] and (frame["status"] == "ok").all()
        assert (frame["macs_per_pixel"] > 0).all()
    assert results[0] == results[1]


# -- the integer entropy coder ------------------------------------------------------------------------
def test_the_scalar_and_array_cdfs_agree_and_give_every_symbol_a_slot():
    rng = np.random.default_rng(1)
    exp_table, inverse = rans.half_exp_table(), rans.inverse_scales()
    for bound in (1, 2, 7, 300, layout.MAX_BOUND):
        j = rng.integers(-bound - 2, bound + 3, 400)
        mu = rng.integers(-(bound + 3) << 12, (bound + 3) << 12, 400)
        inv = inverse[rng.integers(0, inverse.size, 400)]
        array = rans.laplace_cum_array(j, mu, inv, bound)
        scalar = [rans.laplace_cum(int(a), int(m), int(i), bound, exp_table) for a, m, i in zip(j, mu, inv)]
        compiled = [rans.laplace_cum_jit(int(a), int(m), int(i), bound, exp_table) for a, m, i in zip(j, mu, inv)]
        assert array.tolist() == scalar == compiled
        symbols = np.arange(-bound, bound + 2)
        for m, i in zip(mu[:5], inv[:5]):
            cum = rans.laplace_cum_array(symbols, np.full(symbols.size, m), np.full(symbols.size, i), bound)
            assert cum[0] == 0 and cum[-1] == rans.TOTAL and np.diff(cum).min() >= 1


def test_the_tables_are_the_rounded_exponentials():
    inverse, exp_table = rans.inverse_scales(), rans.half_exp_table()
    k = np.arange(rans.SCALE_INDEX_MIN, rans.SCALE_INDEX_MAX + 1)
    assert np.abs(inverse - np.exp(-k / 256) * 2.0**24).max() <= 0.5 + 1e-6
    assert np.abs(exp_table[:-1] - np.exp(-np.arange(rans.EXP_STEPS) / 256) * 2.0**29).max() <= 0.5 + 1e-6
    assert exp_table[-1] == 0 and np.diff(exp_table).max() <= 0 and np.diff(inverse).max() < 0  # non-increasing: the CDF is monotone


def test_rans_round_trip_and_damage():
    rng = np.random.default_rng(2)
    n = 5000
    values = np.round(rng.laplace(0, 3, n)).astype(np.int64)
    bound = int(np.abs(values).max())
    mu, k = rng.integers(-4096, 4096, n), rng.integers(-600, 600, n)
    starts, freqs = rans.symbol_ranges(values, mu, k, bound)
    data = rans.rans_encode(starts, freqs)
    inv = rans.inverse_scales()[k - rans.SCALE_INDEX_MIN]

    def decode(words):
        decoder = rans.RansDecoder(words)
        out = []
        for m, i in zip(mu.tolist(), inv.tolist()):
            s, low, high = rans.find_symbol(decoder.slot(), (m + 2048) >> 12, bound,
                                            lambda j: rans.laplace_cum(j, m, i, bound, rans.half_exp_table()))
            decoder.advance(low, high - low)
            out.append(s)
        return out, decoder.finished_cleanly()

    words = np.frombuffer(data, "<u4")
    assert decode(words) == (values.tolist(), True)
    # about the information content under the models, plus the 64-bit final state
    ideal = -np.log2(freqs / rans.TOTAL).sum()
    assert ideal <= 8 * len(data) <= ideal + 64 + 32
    with pytest.raises(ValueError, match="ends before the last symbol"):
        decode(words[:-1])
    assert decode(np.concatenate([words, [7]]))[1] is False
