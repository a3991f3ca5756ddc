"""The nerv and supermask-nerv codecs end to end: the file alone decodes, in this process and in a fresh
one, to exactly the encoder's frames; damaged files give a clean BitstreamError; the rate split read
from the file; the rate knobs; option checks."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from ulbc import bitstream
from ulbc.codecs import decode_bitstream, get_codec
from ulbc.errors import BitstreamError, ConfigError
from ulbc.nerv import stream
from ulbc.nerv.arch import Architecture

QUICK = {"iterations": 40, "finetune_iterations": 10, "eval_every": 10, "pe_levels": 16, "progress": False}
CODECS = ("nerv", "supermask-nerv")


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """Four 32x48 crops of a real photo, shifted a few pixels per frame to simulate motion."""
    from skimage.data import astronaut

    image = astronaut()
    return np.ascontiguousarray(np.stack([image[100 + 3 * i : 132 + 3 * i, 180 + 2 * i : 228 + 2 * i]
                                          for i in range(4)]))


@pytest.fixture(scope="module")
def encoded(clip) -> dict:
    torch.set_num_threads(1)
    return {name: get_codec(name, **QUICK).encode_clip_result(clip, 6, seed=11) for name in CODECS}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


def _rewrap(data: bytes, params: bytes | None = None, payload: bytes | None = None) -> bytes:
    """The same container with other params/payload and a valid CRC, so damage reaches the decoder."""
    c = bitstream.parse(data)
    return bitstream.Container(c.codec_id, c.width, c.height, c.params if params is None else params,
                               c.payload if payload is None else payload).to_bytes()


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_is_exactly_the_encoders_reconstruction(encoded, clip, name):
    result = encoded[name]
    codec, frames = decode_bitstream(result.data)
    assert codec.name == name
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert np.array_equal(frames, result.reconstruction)
    info = result.info
    assert info["iterations"] == 50 and info["cpu_s"] > 0 and info["train_s"] > 0
    # Training works: far above the untrained network (the clip's frames are not trivial).
    assert info["decoded_psnr"] == pytest.approx(_psnr(frames, clip), abs=1e-3)
    assert info["decoded_psnr"] > info["initial_psnr"] + 6


@pytest.mark.parametrize("name", CODECS)
def test_fresh_process_decode_matches_with_one_and_two_threads(tmp_path, encoded, name):
    path = tmp_path / "clip.ulb"
    path.write_bytes(encoded[name].data)
    script = ("import sys, numpy as np; from ulbc.codecs import read_and_decode; "
              "np.save(sys.argv[2], read_and_decode(sys.argv[1])[1])")
    for threads in (1, 2):
        out = tmp_path / f"decoded-{threads}.npy"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-c", script, str(path), str(out)], check=True, env=env)
        assert np.array_equal(np.load(out), encoded[name].reconstruction), threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", CODECS)
def test_gpu_encode_decodes_identically_on_the_gpu(clip, name):
    result = get_codec(name, **QUICK).encode_clip_result(clip, 6, device="cuda")
    _, again = decode_bitstream(result.data, device="cuda")
    assert np.array_equal(again, result.reconstruction)
    _, on_cpu = decode_bitstream(result.data, device="cpu")
    # Across devices only float rounding differs (no entropy decoding depends on it): ±1 at most.
    assert np.abs(on_cpu.astype(int) - result.reconstruction).max() <= 1


def test_rate_split_and_complexity_read_from_the_file(encoded):
    for name in CODECS:
        data = encoded[name].data
        c = bitstream.parse(data)
        codec = get_codec(name)
        stats = codec.bitstream_stats(c.params, c.payload, c.width, c.height)
        # The codec's own parameter block (frame count stripped) gives the same answer.
        own = stream.strip_frame_count(codec.kind, c.params)
        assert own != c.params and codec.bitstream_stats(own, c.payload, c.width, c.height) == stats
        assert stats["bits_latent"] == 0
        header_bits = 8 * len(data) - stats["bits_nn"] - stats["bits_mask"]
        assert 0 < header_bits <= 8 * 48, header_bits  # container, frame count, architecture, mask header
        assert (stats["bits_mask"] > 0) == (name == "supermask-nerv") and stats["bits_nn"] > 0
        info = encoded[name].info
        assert stats["bits_nn"] == info["bits_nn"] and stats["bits_mask"] == info["bits_mask"]
        assert stats["macs_per_pixel"] == pytest.approx(info["macs_per_pixel"], abs=0.1)
        assert 100 < stats["macs_per_pixel"] < 10_000


def test_the_same_seed_gives_the_same_file(clip, encoded):
    again = get_codec("supermask-nerv", **QUICK).encode_clip_result(clip, 6, seed=11)
    assert again.data == encoded["supermask-nerv"].data
    other = get_codec("supermask-nerv", **QUICK).encode_clip_result(clip, 6, seed=12)
    assert other.data != again.data


@pytest.mark.parametrize("name", CODECS)
def test_every_truncation_is_a_bitstream_error(encoded, name):
    data = encoded[name].data
    for cut in range(len(data)):  # the container's CRC
        with pytest.raises(BitstreamError):
            decode_bitstream(data[:cut])
    c = bitstream.parse(data)
    for cut in range(len(c.params)):  # behind a valid CRC: the codec's own checks
        with pytest.raises(BitstreamError):
            decode_bitstream(_rewrap(data, params=c.params[:cut]))
    step = max(1, len(c.payload) // 400)
    for cut in list(range(0, len(c.payload), step)) + [len(c.payload) - 1]:
        with pytest.raises(BitstreamError):
            decode_bitstream(_rewrap(data, payload=c.payload[:cut]))


@pytest.mark.parametrize("name", CODECS)
def test_byte_flips_are_caught_or_decode_cleanly(encoded, clip, name):
    data = encoded[name].data
    c = bitstream.parse(data)
    rng = np.random.default_rng(5)
    for pos in rng.choice(len(data), 40, replace=False):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(BitstreamError):
            decode_bitstream(bytes(damaged))
    body = c.params + c.payload
    errors = 0
    for pos in rng.choice(len(body), 80, replace=False):
        damaged = bytearray(body)
        damaged[pos] ^= int(rng.integers(1, 256))
        cut = len(c.params)
        try:
            _, frames = decode_bitstream(_rewrap(data, bytes(damaged[:cut]), bytes(damaged[cut:])))
        except BitstreamError:
            errors += 1
            continue
        # A flip the format cannot see (e.g. in a float) still decodes to frames of the right size.
        assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert errors > 0


def test_headers_asking_for_huge_sizes_are_rejected(encoded):
    data = encoded["nerv"].data
    c = bitstream.parse(data)
    huge = Architecture(c.height, c.width, 256, 1.25, 16384, (2, 2, 2), (4096, 4096, 4096, 4096), 3)
    params = bitstream.encode_varint(4) + stream.MAGIC["nerv"] + bytes([stream.FORMAT_VERSION]) + huge.to_bytes()
    with pytest.raises(BitstreamError, match="parameters|feature map"):
        decode_bitstream(_rewrap(data, params=params))
    # A frame count that would need terabytes of output.
    own = stream.strip_frame_count("nerv", c.params)
    with pytest.raises(BitstreamError, match="frames, over the decode limit"):
        decode_bitstream(_rewrap(data, params=bitstream.encode_varint(1 << 30) + own))
    # Strides far beyond the frame, absurd channel and level fields.
    bad = Architecture(c.height, c.width, 16, 1.25, 8, (8, 8, 8, 8, 8, 8), (4,) * 7, 3)
    with pytest.raises(BitstreamError, match="stride"):
        decode_bitstream(_rewrap(data, params=bitstream.encode_varint(4) + own[:3] + bad.to_bytes()))
    sm = bitstream.parse(encoded["supermask-nerv"].data)
    sm_own = stream.strip_frame_count("supermask", sm.params)
    tail = len(sm_own) - 1 - 2 * 3 - 6  # seed, init, K, 3 densities, bias flag
    corrupt_k = sm_own[:tail + 5] + bytes([200]) + sm_own[tail + 6 :]
    with pytest.raises(BitstreamError, match="masks declared"):
        decode_bitstream(_rewrap(encoded["supermask-nerv"].data, params=bitstream.encode_varint(4) + corrupt_k))
    rising = sm_own[:tail + 6] + struct.pack("<3H", 100, 200, 300) + sm_own[-1:]
    with pytest.raises(BitstreamError, match="decreasing"):
        decode_bitstream(_rewrap(encoded["supermask-nerv"].data, params=bitstream.encode_varint(4) + rising))


def test_more_mask_levels_and_higher_density_cost_more_bits(clip):
    quick = {**QUICK, "iterations": 10, "finetune_iterations": 0}
    sizes = {}
    for densities in ([0.25], [0.5], [0.5, 0.25], [0.5, 0.25, 0.1], [0.8, 0.5, 0.25, 0.1]):
        codec = get_codec("supermask-nerv", **quick, densities=densities)
        sizes[str(densities)] = codec.encode_clip_result(clip, 6).info["bits_mask"]
    assert list(sizes.values()) == sorted(sizes.values()), sizes
    for name in CODECS:
        codec = get_codec(name, **quick)
        bits = [len(codec.encode_clip(clip, width)) for width in codec.default_rates[:3]]
        assert bits == sorted(bits) and bits[0] < bits[-1], (name, bits)


def test_bias_free_uniform_single_mask_variant_round_trips(clip):
    codec = get_codec("supermask-nerv", **{**QUICK, "iterations": 10}, train_biases=False, weight_init="uniform",
                      densities=[0.4])
    result = codec.encode_clip_result(clip, 6)
    _, frames = decode_bitstream(result.data)
    assert np.array_equal(frames, result.reconstruction)
    c = bitstream.parse(result.data)
    header = stream.read_header("supermask", stream.strip_frame_count("supermask", c.params), c.width, c.height)
    assert header.init == "uniform" and not header.has_biases and len(header.density_codes) == 1
    # Without biases the NN part is just one float16 scale per layer.
    assert codec.bitstream_stats(c.params, c.payload, c.width, c.height)["bits_nn"] == 16 * len(header.arch.layers)


def test_a_single_image_is_a_one_frame_clip(clip):
    codec = get_codec("nerv", **{**QUICK, "iterations": 5, "finetune_iterations": 0})
    data = codec.encode(clip[0], 4)
    _, frames = decode_bitstream(data)
    assert frames.shape == (1, *clip.shape[1:])


@pytest.mark.parametrize("name, options", [
    ("nerv", {"sparsity": 1.0}),
    ("nerv", {"iterations": 0}),
    ("nerv", {"quant_bits": 1}),
    ("nerv", {"head_kernel": 5}),
    ("nerv", {"pe_base": 1.0}),
    ("nerv", {"lr": "fast"}),
    ("nerv", {"progress": "yes"}),
    ("nerv", {"densities": [0.5]}),  # a supermask-nerv option
    ("supermask-nerv", {"densities": [0.2, 0.5]}),
    ("supermask-nerv", {"densities": [0.5, 0.0]}),
    ("supermask-nerv", {"densities": [1.5]}),
    ("supermask-nerv", {"densities": []}),
    ("supermask-nerv", {"densities": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}),
    ("supermask-nerv", {"weight_init": "gaussian"}),
    ("supermask-nerv", {"train_biases": 1}),
    ("supermask-nerv", {"score_lr": -1}),
])
def test_bad_options_are_config_errors(name, options):
    with pytest.raises(ConfigError):
        get_codec(name, **options)


@pytest.mark.parametrize("rate", [0, 7.5, 5000, float("nan")])
def test_bad_widths_are_config_errors(clip, rate):
    with pytest.raises(ConfigError):
        get_codec("nerv", **QUICK).encode_clip(clip, rate)


def test_forged_frame_counts_are_refused_quickly(encoded, monkeypatch):
    import time

    data = encoded["nerv"].data
    c = bitstream.parse(data)
    own = stream.strip_frame_count("nerv", c.params)
    # 100000 frames of 32x48 fit in 4 GiB of output, but not in the frame limit: refused at once.
    start = time.perf_counter()
    with pytest.raises(BitstreamError, match=r"^f: header claims 100000 frames, over the decode limit of 10000"):
        decode_bitstream(_rewrap(data, params=bitstream.encode_varint(100000) + own), name="f")
    assert time.perf_counter() - start < 2
    # The limits are the shared ones (ulbc.limits), set by environment variables.
    monkeypatch.setenv("ULBC_DECODE_MAX_FRAMES", "3")
    with pytest.raises(BitstreamError, match="ULBC_DECODE_MAX_FRAMES"):
        decode_bitstream(data)
    monkeypatch.delenv("ULBC_DECODE_MAX_FRAMES")
    arch = stream.read_header("nerv", own, c.width, c.height).arch
    assert stream.decoder_memory_bytes(arch, 8) > stream.decoder_memory_bytes(arch, 4) > 4 * c.width * c.height * 3
    monkeypatch.setenv("ULBC_DECODE_MAX_MEMORY", str(stream.decoder_memory_bytes(arch, 4) - 1))
    with pytest.raises(BitstreamError, match="from this network, which needs an estimated"):
        decode_bitstream(data)


def test_non_finite_network_output_is_an_error_not_black_pixels(encoded):
    # Both codecs render through stream.render_frames; a dense network is the simplest to damage:
    # every quantisation step at 1e20 makes the layers overflow float32 (inf - inf = NaN).
    data = encoded["nerv"].data
    c = bitstream.parse(data)
    arch = stream.read_header("nerv", stream.strip_frame_count("nerv", c.params), c.width, c.height).arch
    n_steps = 2 * len(arch.layers)
    damaged = _rewrap(data, payload=np.full(n_steps, 1e20, dtype="<f4").tobytes() + c.payload[4 * n_steps :])
    with pytest.raises(BitstreamError, match=r"decoder produced non-finite values in frame 0"):
        decode_bitstream(damaged)
