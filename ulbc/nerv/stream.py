"""Bitstreams of the ``nerv`` and ``supermask-nerv`` codecs, and the decoder.

Parameter block (after the frame count that :class:`~ulbc.codecs.base.VideoCodec` puts in front)::

    magic      2 bytes   b"NV" (nerv) or b"SM" (supermask-nerv)
    version    1 byte    FORMAT_VERSION
    arch       ...       :meth:`Architecture.to_bytes` (PE levels and base, stem width, strides,
                         channels, head kernel); H and W come from the container
    supermask-nerv only:
    seed       4 bytes   uint32 LE, seed of the frozen random weights
    init       1 byte    0 signed (±1), 1 uniform
    K          1 byte    number of nested masks, 1..MAX_LEVELS
    densities  K × 2     uint16 LE, density d_k = q_k / 65535, strictly decreasing
    biases     1 byte    1 when trained biases are in the payload, 0 for a bias-free network

Payload of ``nerv``: per layer (weights then bias) a float32 LE quantisation step, then one
:mod:`.entropy` blob of all the quantised integers (weights and biases, layer order). Pruned
weights are the integer 0, so their positions cost whatever the categorical model charges for 0.

Payload of ``supermask-nerv``::

    n_mask     varint    length of the mask blob
    mask       n_mask    :mod:`.entropy` blob of every layer's levels (0..K); the decoder checks each
                         layer's count of weights at level >= k against round(d_k · n)
    alphas     n_layers × K float16 LE, the learned scale of each mask of each layer
    biases     with the flag: per layer a float32 LE step, then an entropy blob of the integers

Decoding reads nothing but these bytes (and the container's frame count and size). Frames are
rendered one at a time in float32 and rounded to uint8, on the requested device.

Determinism. Everything entropy-decoded (integers, level tables) is exact integer work, and the
tensors the network uses are rebuilt with single IEEE operations (ints · step, W · A[v]), so the
decoded *network* is bit-identical everywhere. The encoder's reconstruction is a decode of the
written bytes on the encoder's device, so a decode on the same machine and device type (any thread
count, tested) reproduces it exactly. On another device type or BLAS/cuDNN build the float32
convolutions may round differently: a pixel can then differ by ±1 — never more, since no entropy
decoding depends on the network's output (unlike codecs with a learned entropy model). On a GPU,
rendering runs with cuDNN autotuning and TF32 off so that the device repeats its own results. The
random weights of ``supermask-nerv`` come from torch's CPU generator: identical for a given torch
version on any machine; torch does not promise the same stream across versions.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import limits
from ..bitstream import decode_varint, encode_varint
from ..errors import BitstreamError
from . import entropy
from .arch import Architecture
from .model import DENSITY_ONE, WEIGHT_INITS, frame_positions, level_multipliers, mask_counts, positional_encoding
from .model import random_weights, render

FORMAT_VERSION = 1
MAGIC = {"nerv": b"NV", "supermask": b"SM"}
MAX_LEVELS = 8
#: Largest quantisation step accepted (a float32 weight beyond 1e30 is damage, not a network).
MAX_STEP = 1e30


@dataclass(frozen=True)
class Header:
    kind: str
    arch: Architecture
    seed: int = 0
    init: str = "signed"
    density_codes: tuple[int, ...] = ()
    has_biases: bool = True


def write_header(header: Header) -> bytes:
    out = bytearray(MAGIC[header.kind] + bytes([FORMAT_VERSION]) + header.arch.to_bytes())
    if header.kind == "supermask":
        out += struct.pack("<IBB", header.seed, WEIGHT_INITS.index(header.init), len(header.density_codes))
        out += b"".join(struct.pack("<H", q) for q in header.density_codes)
        out += bytes([int(header.has_biases)])
    return bytes(out)


def strip_frame_count(kind: str, params: bytes) -> bytes:
    """The codec's own parameter block from either it or the container's parameters (frame-count
    varint in front). Unambiguous: the magic's first byte is < 0x80 and differs from its second,
    so a one-byte varint equal to it is followed by the magic's first byte, not its second."""
    magic = MAGIC[kind]
    if params[:2] == magic:
        return params
    _, pos = decode_varint(params, 0, "frame count")
    return params[pos:]


def read_header(kind: str, params: bytes, width: int, height: int) -> Header:
    """Parse and validate a parameter block (without the frame count)."""
    params = bytes(params)
    magic = MAGIC[kind]
    if params[:2] != magic:
        raise BitstreamError(f"parameter block does not start with {magic!r}")
    if len(params) < 3 or params[2] != FORMAT_VERSION:
        raise BitstreamError(f"unsupported {kind} format version (this ulbc reads {FORMAT_VERSION})")
    arch, pos = Architecture.from_bytes(params, 3, height, width)
    if kind == "nerv":
        header = Header(kind, arch)
    else:
        if pos + 6 > len(params):
            raise BitstreamError("truncated supermask header")
        seed, init_code, n_levels = struct.unpack_from("<IBB", params, pos)
        pos += 6
        if init_code >= len(WEIGHT_INITS):
            raise BitstreamError(f"unknown weight initialisation code {init_code}")
        if not 1 <= n_levels <= MAX_LEVELS:
            raise BitstreamError(f"{n_levels} masks declared, 1..{MAX_LEVELS} allowed")
        if pos + 2 * n_levels + 1 > len(params):
            raise BitstreamError("truncated supermask densities")
        codes = struct.unpack_from(f"<{n_levels}H", params, pos)
        pos += 2 * n_levels
        if not (0 < codes[-1] and codes[0] <= DENSITY_ONE and all(a > b for a, b in zip(codes, codes[1:]))):
            raise BitstreamError(f"mask densities {codes} are not strictly decreasing in (0, 1]")
        flag = params[pos]
        pos += 1
        if flag > 1:
            raise BitstreamError(f"bias flag {flag} is neither 0 nor 1")
        header = Header(kind, arch, seed, WEIGHT_INITS[init_code], tuple(codes), bool(flag))
    if pos != len(params):
        raise BitstreamError(f"{len(params) - pos} unexpected bytes after the {kind} header")
    return header


# -- quantisation -------------------------------------------------------------------------------------
def quantize_symmetric(tensor: torch.Tensor, bits: int) -> tuple[np.ndarray, float]:
    """Per-tensor symmetric uniform quantisation: step = max|t| / (2^(bits-1) - 1) (a float32), zero
    point 0 so that pruned weights stay exactly 0. Returns (int64 array, step)."""
    t = tensor.detach().to("cpu", torch.float32).reshape(-1)
    q_max = 2 ** (bits - 1) - 1
    amax = float(t.abs().max()) if t.numel() else 0.0
    step = float(np.float32(amax / q_max))
    if step == 0.0:  # all zero (or so small that the step underflows): every weight is 0
        return np.zeros(t.numel(), dtype=np.int64), 0.0
    ints = torch.round(t / torch.tensor(step, dtype=torch.float32)).clamp(-q_max, q_max).to(torch.int64)
    return ints.numpy(), step


def dequantize(ints: np.ndarray, step: float, shape: Sequence[int]) -> torch.Tensor:
    """ints · step in float32 (one IEEE multiply per value: identical everywhere)."""
    return (torch.from_numpy(np.asarray(ints, dtype=np.int64)).to(torch.float32)
            * torch.tensor(step, dtype=torch.float32)).reshape(tuple(shape))


def _read_steps(data: bytes, pos: int, count: int, what: str) -> tuple[list[float], int]:
    if pos + 4 * count > len(data):
        raise BitstreamError(f"truncated {what}: {count} quantisation steps expected")
    steps = list(struct.unpack_from(f"<{count}f", data, pos))
    if not all(math.isfinite(s) and 0.0 <= s <= MAX_STEP for s in steps):
        raise BitstreamError(f"malformed {what}: quantisation step out of range")
    return steps, pos + 4 * count


def _decode_blob(data: bytes, sizes: Sequence[int], what: str) -> list[np.ndarray]:
    arrays = entropy.decode_int_arrays(data, sizes, what)
    for a in arrays:
        if a.size and int(np.abs(a).max()) > entropy.MAX_ALPHABET:
            raise BitstreamError(f"malformed {what}: integer beyond ±{entropy.MAX_ALPHABET}")
    return arrays


# -- nerv ---------------------------------------------------------------------------------------------
def encode_dense(arch: Architecture, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 bits: int) -> tuple[bytes, list[torch.Tensor], list[torch.Tensor], list[np.ndarray]]:
    """Quantise and code a dense NeRV. Returns (payload, the dequantised weights and biases as the
    encoder computes them, the integers in payload order)."""
    steps, ints, tensors = [], [], []
    for w, b in zip(weights, biases):
        for tensor in (w, b):
            q, step = quantize_symmetric(tensor, bits)
            steps.append(step)
            ints.append(q)
            tensors.append(dequantize(q, step, tensor.shape))
    payload = struct.pack(f"<{len(steps)}f", *steps) + entropy.encode_int_arrays(ints)
    return payload, tensors[0::2], tensors[1::2], ints


def parse_dense(arch: Architecture, payload: bytes) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    n = 2 * len(arch.layers)
    steps, pos = _read_steps(payload, 0, n, "NeRV payload")
    shapes = [s for layer in arch.layers for s in (layer.weight_shape, (layer.out_features,))]
    arrays = _decode_blob(payload[pos:], [math.prod(s) for s in shapes], "NeRV payload")
    tensors = [dequantize(a, step, shape) for a, step, shape in zip(arrays, steps, shapes)]
    return tensors[0::2], tensors[1::2]


# -- supermask-nerv -----------------------------------------------------------------------------------
def quantize_biases(biases: Sequence[torch.Tensor], bits: int) -> tuple[list[np.ndarray], list[float]]:
    pairs = [quantize_symmetric(b, bits) for b in biases]
    return [q for q, _ in pairs], [s for _, s in pairs]


def encode_supermask(header: Header, levels: Sequence[np.ndarray], alphas: np.ndarray,
                     bias_ints: Sequence[np.ndarray] | None,
                     bias_steps: Sequence[float] | None) -> tuple[bytes, dict[str, int]]:
    """Payload of a supermask NeRV: levels (int arrays per layer), α (n_layers × K, written as
    float16) and the quantised biases (or None). Returns (payload, bytes of the mask and NN parts)."""
    mask = entropy.encode_int_arrays(levels)
    alpha_bytes = np.asarray(alphas, dtype="<f2").tobytes()
    bias_bytes = b""
    if bias_ints is not None:
        bias_bytes = struct.pack(f"<{len(bias_steps)}f", *bias_steps) + entropy.encode_int_arrays(bias_ints)
    head = encode_varint(len(mask))
    split = {"mask": len(head) + len(mask), "nn": len(alpha_bytes) + len(bias_bytes)}
    return head + mask + alpha_bytes + bias_bytes, split


def parse_supermask(header: Header, payload: bytes) -> tuple[list[np.ndarray], np.ndarray, list[torch.Tensor] | None]:
    arch, n_levels = header.arch, len(header.density_codes)
    n_mask, pos = decode_varint(payload, 0, "mask length")
    if pos + n_mask > len(payload):
        raise BitstreamError(f"truncated supermask payload: the masks need {n_mask} bytes, {len(payload) - pos} left")
    sizes = [layer.n_weights for layer in arch.layers]
    levels = entropy.decode_int_arrays(payload[pos : pos + n_mask], sizes, "mask levels")
    for i, (v, n) in enumerate(zip(levels, sizes)):
        if v.size and (v.min() < 0 or v.max() > n_levels):
            raise BitstreamError(f"mask levels of layer {i} outside 0..{n_levels}")
        for k, count in enumerate(mask_counts(n, header.density_codes)):
            if int(np.count_nonzero(v > k)) != count:
                raise BitstreamError(f"layer {i}: mask {k + 1} holds {int(np.count_nonzero(v > k))} weights, "
                                     f"its density says {count}")
    pos += n_mask
    n_alpha = len(arch.layers) * n_levels
    if pos + 2 * n_alpha > len(payload):
        raise BitstreamError("truncated supermask payload: mask scales missing")
    alphas = np.frombuffer(payload, dtype="<f2", count=n_alpha, offset=pos).astype(np.float32)
    if not np.isfinite(alphas).all():
        raise BitstreamError("malformed supermask payload: non-finite mask scale")
    pos += 2 * n_alpha
    biases = None
    if header.has_biases:
        steps, pos = _read_steps(payload, pos, len(arch.layers), "supermask biases")
        arrays = _decode_blob(payload[pos:], [layer.out_features for layer in arch.layers], "supermask biases")
        biases = [dequantize(a, s, (a.size,)) for a, s in zip(arrays, steps)]
    elif pos != len(payload):
        raise BitstreamError(f"malformed supermask payload: {len(payload) - pos} trailing bytes")
    return levels, alphas.reshape(len(arch.layers), n_levels), biases


def supermask_weights(header: Header, levels: Sequence[np.ndarray], alphas: np.ndarray) -> list[torch.Tensor]:
    """W ⊙ A[v] per layer (float32, on the CPU), the random W regenerated from the header's seed."""
    out = []
    for layer, w, v, a in zip(header.arch.layers, random_weights(header.arch, header.seed, header.init), levels,
                              torch.from_numpy(np.ascontiguousarray(alphas, dtype=np.float32))):
        multipliers = level_multipliers(a)
        out.append(w * multipliers[torch.from_numpy(np.asarray(v, dtype=np.int64)).reshape(layer.weight_shape)])
    return out


# -- decoding -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN without autotuning or TF32 while rendering, so a device repeats its own results."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


def decoder_memory_bytes(arch: Architecture, n_frames: int) -> int:
    """Estimated peak memory of a decode: the uint8 frames, the network (entropy-decoded int64
    arrays, float32 tensors and their copy on the device), and a few copies of one frame's largest
    feature map (conv output, pixel shuffle, activation)."""
    network = 32 * (arch.n_weights + arch.n_biases)
    return n_frames * arch.height * arch.width * 3 + network + 4 * 4 * max(arch.feature_sizes())


def check_output_size(n_frames: int, arch: Architecture) -> None:
    """The shared decode limits (:mod:`ulbc.limits`) applied to this network and frame count."""
    limits.check_claim(arch.width, arch.height, n_frames, video=True)
    limits.check_memory(decoder_memory_bytes(arch, n_frames),
                        f"{n_frames} frames of {arch.width}x{arch.height} from this network")


def render_frames(arch: Architecture, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                  n_frames: int, device: str | torch.device) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, rendered one frame at a time (so a frame never depends on how many
    others are rendered with it)."""
    dev = torch.device(device)
    check_output_size(n_frames, arch)
    pe = positional_encoding(frame_positions(n_frames), arch.pe_levels, arch.pe_base).to(dev)
    w_dev = [w.to(dev) for w in weights]
    b_dev = [None if b is None else b.to(dev) for b in biases]
    frames = np.empty((n_frames, arch.height, arch.width, 3), dtype=np.uint8)
    with torch.no_grad(), deterministic(dev):
        for i in range(n_frames):
            out = render(arch, w_dev, b_dev, pe[i : i + 1])[0]
            if not bool(torch.isfinite(out).all()):
                # Damaged weights (e.g. an overflowing layer): no frame is better than a black one.
                raise BitstreamError(f"decoder produced non-finite values in frame {i} of {n_frames} "
                                     f"(the network in the file is damaged)")
            out = out.mul(255).round().clamp(0, 255).to(torch.uint8)
            frames[i] = out.permute(1, 2, 0).cpu().numpy()
    return frames


def decoder_tensors(header: Header, payload: bytes) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The weights and biases a payload describes (CPU float32)."""
    if header.kind == "nerv":
        return parse_dense(header.arch, payload)
    levels, alphas, biases = parse_supermask(header, payload)
    return supermask_weights(header, levels, alphas), biases or [None] * len(header.arch.layers)


def decode(kind: str, params: bytes, payload: bytes, width: int, height: int, n_frames: int,
           device: str | torch.device) -> np.ndarray:
    """Decode a ``kind`` bitstream's parameter block and payload to (T, H, W, 3) uint8 frames."""
    header = read_header(kind, params, width, height)
    check_output_size(n_frames, header.arch)  # before parsing anything large
    weights, biases = decoder_tensors(header, bytes(payload))
    return render_frames(header.arch, weights, biases, n_frames, device)


@dataclass(frozen=True)
class Layout:
    """Bytes of each part of a payload."""

    nn: int
    mask: int


def layout(kind: str, params: bytes, payload: bytes, width: int, height: int) -> Layout:
    header = read_header(kind, params, width, height)
    if header.kind == "nerv":
        return Layout(nn=len(payload), mask=0)
    n_mask, pos = decode_varint(payload, 0, "mask length")
    mask = min(len(payload), pos + n_mask)
    return Layout(nn=len(payload) - mask, mask=mask)
