"""The coolchic and lottery codecs end to end: the file alone decodes, in a fresh process and with one
or two threads (and on a GPU when there is one), to exactly the encoder's own reconstruction; the
rate split read from the file; batched encoding; training safeguards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ulbc import bitstream
from ulbc.codecs import decode_bitstream, get_codec
from ulbc.imageio import load_rgb, save_png
from ulbc.overfit.model import Architecture, OverfittedModel
from ulbc.overfit.training import TrainConfig, train
from ulbc.runner import encode_batches

from conftest import QUICK_OPTIONS


@pytest.fixture(scope="module")
def crop(photo) -> np.ndarray:
    return np.ascontiguousarray(photo[16:64, 32:96])


def _ulbc(*args, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "ulbc", *args], capture_output=True, text=True, env=env, check=True)


@pytest.mark.parametrize("name", ["lottery", "coolchic"])
def test_fresh_process_decode_is_exactly_the_encoders_reconstruction(tmp_path, crop, name):
    source, stream, recon = tmp_path / "crop.png", tmp_path / "crop.ulb", tmp_path / "encoder.png"
    save_png(crop, source)
    out = _ulbc("encode", str(source), str(stream), "--codec", name, "--rate", "0.001", "--device", "cpu",
                "--options", json.dumps(QUICK_OPTIONS[name]), "--recon", str(recon))
    report = json.loads(out.stdout)
    assert report["bytes"] == stream.stat().st_size and report["encoder"]["iterations"] == 150
    encoder_image = load_rgb(recon)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for threads in (1, 2):
            decoded = tmp_path / f"decoded-{device}-{threads}.png"
            _ulbc("decode", str(stream), str(decoded), "--device", device, threads=threads)
            diff = np.abs(load_rgb(decoded).astype(int) - encoder_image.astype(int))
            assert diff.max() == 0, (device, threads)
    psnr = 10 * math.log10(255**2 / np.mean((encoder_image.astype(float) - crop) ** 2))
    assert psnr > 24


def test_rate_split_and_complexity_read_from_the_file(crop):
    for name in ("lottery", "coolchic"):
        codec = get_codec(name, **QUICK_OPTIONS[name])
        data = codec.encode(crop, 1e-3, seed=3)
        container = bitstream.parse(data)
        stats = codec.bitstream_stats(container.params, container.payload, container.width, container.height)
        parts = stats["bits_nn"] + stats["bits_mask"] + stats["bits_latent"]
        header_bits = 8 * len(data) - parts
        assert 0 < header_bits <= 8 * 40, header_bits  # container + parameter block: a few dozen bytes
        assert stats["bits_nn"] > 0 and stats["bits_latent"] > 0
        assert (stats["bits_mask"] > 0) == (name == "lottery")
        assert 100 < stats["macs_per_pixel"] < 20_000


def test_lottery_mask_ratio_sets_mask_bits_and_complexity(crop):
    rates = {}
    for keep in (0.5, 1.0):
        codec = get_codec("lottery", **{**QUICK_OPTIONS["lottery"], "keep_ratio": keep})
        container = bitstream.parse(codec.encode(crop, 1e-3))
        rates[keep] = codec.bitstream_stats(container.params, container.payload, container.width, container.height)
    # An all-ones mask is four counts and no coded bits; a half mask costs about n * H_b(0.5) bits.
    assert rates[1.0]["bits_mask"] <= 8 * 8
    assert rates[0.5]["bits_mask"] > 1500
    assert rates[0.5]["macs_per_pixel"] < rates[1.0]["macs_per_pixel"]


def test_batched_encoding_of_same_size_images(crop):
    codec = get_codec("coolchic", **{**QUICK_OPTIONS["coolchic"], "batch_size": 2})
    images = [crop, np.ascontiguousarray(crop[::-1])]
    results = codec.encode_batch(images, 1e-3, seeds=[1, 2], names=["a", "b"])
    assert len(results) == 2 and results[0].data != results[1].data
    for image, result in zip(images, results):
        assert result.info["batch"] == 2
        _, decoded = decode_bitstream(result.data)
        assert np.array_equal(decoded, result.reconstruction)
        assert 10 * math.log10(255**2 / np.mean((decoded.astype(float) - image) ** 2)) > 24


def test_runner_groups_items_by_size():
    class Row:
        def __init__(self, item, w, h):
            self.item, self.width, self.height = item, w, h

    rows = [Row("a", 4, 4), Row("b", 8, 4), Row("c", 4, 4), Row("d", 4, 4), Row("e", 8, 4)]
    assert [[r.item for r in b] for b in encode_batches(rows, 2)] == [["a", "c"], ["d"], ["b", "e"]]
    assert [[r.item for r in b] for b in encode_batches(rows, 1)] == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_a_model_that_diverges_is_restored_without_touching_the_others():
    target = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    target[1, 0, 0, 0] = float("nan")  # model 1's loss is NaN at every step
    arch = Architecture("coolchic", n_grids=3, arm_context=4)
    cfg = TrainConfig(iterations=40, candidates=1, final_iterations=0, eval_every=10)
    result = train(lambda s: OverfittedModel(arch, 8, 8, s), target, [1, 2], 1e-3, cfg, torch.device("cpu"))
    assert result.nan_restores >= 40
    initial = OverfittedModel(arch, 8, 8, [1, 2])
    for (name, p), q in zip(result.model.named_parameters(), initial.parameters()):
        assert torch.equal(p[1], q[1]), name  # back to where it started
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(result.model.parameters(), initial.parameters()))
    assert math.isfinite(result.best_loss[0]) and not math.isfinite(result.best_loss[1])


def test_training_lowers_the_rd_cost(crop):
    target = torch.from_numpy(crop).float()[None] / 255
    arch = Architecture("lottery", n_grids=4, arm_context=8)
    costs = []
    for iterations in (2, 120):
        cfg = TrainConfig(iterations=iterations, candidates=1, final_iterations=0, eval_every=20)
        result = train(lambda s: OverfittedModel(arch, *crop.shape[:2], s, 0.7), target, [0], 1e-3, cfg,
                       torch.device("cpu"))
        costs.append(result.best_loss[0])
    assert costs[1] < 0.5 * costs[0]


@pytest.mark.parametrize("name", ["coolchic", "lottery"])
def test_forged_huge_sizes_are_refused_before_anything_is_allocated(name, monkeypatch):
    import time
    import tracemalloc

    from ulbc.errors import BitstreamError
    from ulbc.overfit import DECODER_ENV, stream

    tiny = {**QUICK_OPTIONS[name], "iterations": 10, "final_iterations": 2, "n_grids": 3}
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    c = bitstream.parse(get_codec(name, **tiny).encode(image, 1e-2))
    # The reference decoder's own estimate (the compiled decoder needs less: tests/test_fastdecode.py).
    monkeypatch.setenv(DECODER_ENV, "reference")

    def forged(width, height):
        return bitstream.Container(c.codec_id, width, height, c.params, c.payload).to_bytes()

    cases = {(100000, 100000): r"^f: header claims 100000x100000 \(1e10 pixels\), over the decode limit",
             (30000, 30000): r"header claims 30000x30000 \(9e8 pixels\)",
             # Under the pixel limit, but over the default memory limit: for any such codec (the shared
             # check), and for this header's architecture (the decoder's own estimate).
             (16000, 16000): r"header claims 16000x16000, which needs an estimated .* GiB of decoder memory",
             (8000, 8000): rf"header claims a 8000x8000 {name} image, which needs an estimated .* GiB of decoder"}
    for (width, height), message in cases.items():
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(BitstreamError, match=message):
            decode_bitstream(forged(width, height), name="f")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.perf_counter() - start < 5 and peak < 50 << 20, (width, height, peak)
    # The estimate follows the architecture, and the limit its environment variable.
    arch = stream.read_header(name, c.params)[0]
    assert stream.decoder_memory_bytes(arch, 512, 512) < stream.decoder_memory_bytes(arch, 1024, 1024)
    monkeypatch.setenv("ULBC_DECODE_MAX_MEMORY", "1M")
    with pytest.raises(BitstreamError, match="ULBC_DECODE_MAX_MEMORY"):
        decode_bitstream(forged(256, 256), name="f")
    monkeypatch.delenv("ULBC_DECODE_MAX_MEMORY")
    assert decode_bitstream(forged(16, 16))[1].shape == (16, 16, 3)


def test_a_header_whose_synthesis_cannot_be_built_is_a_bitstream_error():
    # Found by tests/test_fuzz.py --long: a flipped channel count before a residual layer.
    from ulbc.errors import BitstreamError
    from ulbc.overfit import stream

    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tiny = {**QUICK_OPTIONS["coolchic"], "iterations": 5, "final_iterations": 1, "n_grids": 2}
    c = bitstream.parse(get_codec("coolchic", **tiny).encode(image, 1e-2))
    arch, seed, bound, nn_bytes, _ = stream.read_header("coolchic", c.params)
    layers = arch.synthesis.split(",")
    layers[1] = "73" + layers[1][layers[1].index("-"):]  # the residual layer after it must keep 73 channels
    import dataclasses

    bad = dataclasses.replace(arch, synthesis=",".join(layers))  # parses; only building the network fails
    params = stream.write_header(bad, seed, bound, nn_bytes, 0)
    with pytest.raises(BitstreamError, match="invalid architecture in header .*residual layer must keep 73"):
        decode_bitstream(bitstream.Container(c.codec_id, 8, 8, params, c.payload).to_bytes())
