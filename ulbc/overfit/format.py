"""Bitstream layout of the overfitted image codecs (inside ulbc's container, which holds width and height).

Parameter block (the container's ``params``)::

    format     1 byte    FORMAT_VERSION (1 is still read: its latents are coded by constriction)
    n_grids    varint    latent grids
    arm_ctx    varint    ARM context size
    arm_hidden varint    ARM hidden layers
    arm_coarse varint    ARM context values taken from the next coarser grid
    coolchic:  varint layer count, then per layer: varint output channels and one flag byte
               (bit 0: 3x3 kernel, bit 1: residual, bit 2: ReLU)
    lottery:   4 bytes seed of the random network (big-endian), varint modulation channels,
               3 varints hidden widths
    bound      varint    every latent lies in [-bound, bound]
    nn_bytes   varint    length of the network payload
    lottery:   varint    length of the mask payload

Payload: network parameters (:func:`.nnquant.encode_params`: per tensor its step exponent,
Exp-Golomb order and codes) | masks (lottery: :mod:`.maskcoding`) | latents coded under the
fixed-point ARM, the rest of the payload (format 2: rANS words, :mod:`.rans`; format 1:
constriction's range coder).

This module reads and writes the layout without torch (the compiled decoder uses it as is).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..bitstream import decode_varint, encode_varint
from ..errors import BitstreamError, ConfigError
from .arch import Architecture, param_shapes, parse_layers
from .expgolomb import MAX_ORDER, BitReader
from .maskcoding import decode_masks

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: Largest latent magnitude a decoder accepts (the training never gets near it).
MAX_BOUND = 1 << 15


@dataclass(frozen=True)
class Layout:
    """Sizes of the parts of one bitstream, in bytes (for the rate split in the results)."""

    header: int
    nn: int
    mask: int
    latent: int


def write_header(arch: Architecture, seed: int, bound: int, nn_bytes: int, mask_bytes: int,
                 version: int = FORMAT_VERSION) -> bytes:
    out = bytearray([version])
    out += encode_varint(arch.n_grids) + encode_varint(arch.arm_context) + encode_varint(arch.arm_hidden)
    out += encode_varint(arch.arm_coarse)
    if arch.kind == "coolchic":
        layers = parse_layers(arch.synthesis)
        out += encode_varint(len(layers))
        for spec in layers:
            flags = (spec.kernel == 3) | (spec.residual << 1) | (spec.relu << 2)
            out += encode_varint(spec.out_channels) + bytes([flags])
    else:
        out += struct.pack(">I", seed) + encode_varint(arch.mod_channels)
        out += b"".join(encode_varint(h) for h in arch.hidden)
    out += encode_varint(bound) + encode_varint(nn_bytes)
    if arch.kind == "lottery":
        out += encode_varint(mask_bytes)
    return bytes(out)


@dataclass(frozen=True)
class Header:
    arch: Architecture
    seed: int
    bound: int
    nn_bytes: int
    mask_bytes: int
    version: int


def read_header(kind: str, data: bytes) -> tuple[Architecture, int, int, int, int]:
    """-> (architecture, seed, latent bound, nn bytes, mask bytes)."""
    h = parse_header(kind, data)
    return h.arch, h.seed, h.bound, h.nn_bytes, h.mask_bytes


def parse_header(kind: str, data: bytes) -> Header:
    if not data:
        raise BitstreamError("empty parameter block")
    if data[0] not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported {kind} format version {data[0]} (this ulbc reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    n_grids, pos = decode_varint(data, 1, "n_grids")
    ctx, pos = decode_varint(data, pos, "ARM context")
    hidden_layers, pos = decode_varint(data, pos, "ARM hidden layers")
    coarse, pos = decode_varint(data, pos, "ARM coarse context")
    seed, fields = 0, {}
    if kind == "coolchic":
        n_layers, pos = decode_varint(data, pos, "synthesis layer count")
        if not 1 <= n_layers <= 16:
            raise BitstreamError(f"synthesis layer count {n_layers} is out of range")
        parts = []
        for i in range(n_layers):
            out_channels, pos = decode_varint(data, pos, f"synthesis layer {i} channels")
            if pos >= len(data) or data[pos] > 7:
                raise BitstreamError(f"synthesis layer {i} flags are missing or invalid")
            flags = data[pos]
            pos += 1
            parts.append(f"{out_channels}-{3 if flags & 1 else 1}-{'residual' if flags & 2 else 'linear'}-"
                         f"{'relu' if flags & 4 else 'none'}")
        fields["synthesis"] = ",".join(parts)
    else:
        if pos + 4 > len(data):
            raise BitstreamError("truncated parameter block (seed)")
        seed = struct.unpack(">I", data[pos : pos + 4])[0]
        mod, pos = decode_varint(data, pos + 4, "modulation channels")
        widths = []
        for i in range(3):
            w, pos = decode_varint(data, pos, f"hidden width {i}")
            widths.append(w)
        fields.update(mod_channels=mod, hidden=tuple(widths))
    bound, pos = decode_varint(data, pos, "latent bound")
    nn_bytes, pos = decode_varint(data, pos, "network payload length")
    mask_bytes = 0
    if kind == "lottery":
        mask_bytes, pos = decode_varint(data, pos, "mask payload length")
    if pos != len(data):
        raise BitstreamError(f"{len(data) - pos} unexpected bytes at the end of the parameter block")
    if bound > MAX_BOUND:
        raise BitstreamError(f"latent bound {bound} is out of range")
    if not 1 <= ctx <= 40:
        raise BitstreamError(f"ARM context size {ctx} is out of range")
    try:
        arch = Architecture(kind, n_grids=n_grids, arm_context=ctx, arm_hidden=hidden_layers, arm_coarse=coarse,
                            **fields)
    except (ConfigError, TypeError) as exc:
        raise BitstreamError(f"invalid architecture in header ({exc})") from None
    return Header(arch, seed, bound, nn_bytes, mask_bytes, data[0])


def split_payload(payload: bytes, nn_bytes: int, mask_bytes: int) -> tuple[bytes, bytes, bytes]:
    if nn_bytes + mask_bytes > len(payload):
        raise BitstreamError(f"payload of {len(payload)} bytes is shorter than its declared parts")
    return payload[:nn_bytes], payload[nn_bytes : nn_bytes + mask_bytes], payload[nn_bytes + mask_bytes :]


def layout(kind: str, header: bytes, payload: bytes) -> Layout:
    """Byte counts of the parts, read from the header alone."""
    h = parse_header(kind, header)
    nn_data, mask_data, latent_data = split_payload(payload, h.nn_bytes, h.mask_bytes)
    return Layout(len(header), len(nn_data), len(mask_data), len(latent_data))


def kept_weights(kind: str, header: bytes, payload: bytes) -> int | None:
    """LotteryCodec: how many random weights the masks keep (from the per-layer counts)."""
    if kind != "lottery":
        return None
    h = parse_header(kind, header)
    _, mask_data, _ = split_payload(payload, h.nn_bytes, h.mask_bytes)
    total, pos = 0, 0
    for i in range(len(h.arch.lottery_shape.layer_shapes)):
        k, pos = decode_varint(mask_data, pos, f"mask {i} count")
        total += k
    return total


def masks_of(kind: str, arch: Architecture, mask_data: bytes) -> list[np.ndarray] | None:
    """LotteryCodec's decoded masks (:mod:`.maskcoding`); None for coolchic, which carries none."""
    if kind == "lottery":
        return decode_masks(mask_data, arch.lottery_shape.layer_shapes)
    if mask_data:
        raise BitstreamError("unexpected mask payload")
    return None


def network_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The transmitted tensors' shapes, or a BitstreamError for an architecture that parses but
    cannot be built (e.g. a residual layer that changes the width)."""
    try:
        return param_shapes(arch)
    except ConfigError as exc:
        raise BitstreamError(f"invalid architecture in header ({exc})") from None


# -- the network payload ----------------------------------------------------------------------------
#: Largest step exponent (step = 2^-64) that keeps ints * step a normal float32 for any |int| >= 1.
MAX_STEP_EXPONENT = 64
#: float32 represents every integer up to this magnitude exactly (the training's float path).
FLOAT32_EXACT_INT = 1 << 24


def parse_param_ints(data: bytes, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[np.ndarray, int, int]]:
    """Network payload (:func:`.nnquant.encode_params`) -> {name: (int64 integers, step exponent e,
    Exp-Golomb order)}, every field checked."""
    data = bytes(data)
    n_tensors, pos = decode_varint(data, 0, "NN parameter count")
    if n_tensors != len(shapes):
        raise BitstreamError(f"NN payload holds {n_tensors} tensors, the decoder expects {len(shapes)}")
    result: dict[str, tuple[np.ndarray, int, int]] = {}
    for name in sorted(shapes):
        if pos + 2 > len(data):
            raise BitstreamError(f"truncated NN payload: header of tensor {name!r} is missing")
        exponent, order = data[pos], data[pos + 1]
        if exponent > MAX_STEP_EXPONENT:
            raise BitstreamError(f"malformed NN payload: step exponent {exponent} of {name!r} is out of range")
        if order > MAX_ORDER:
            raise BitstreamError(f"malformed NN payload: Exp-Golomb order {order} of {name!r} is out of range")
        n_bytes, pos = decode_varint(data, pos + 2, f"NN payload length of {name!r}")
        if pos + n_bytes > len(data):
            raise BitstreamError(f"truncated NN payload: tensor {name!r} needs {n_bytes} bytes, {len(data) - pos} left")
        shape = tuple(int(s) for s in shapes[name])
        count = math.prod(shape)
        reader = BitReader(data[pos : pos + n_bytes], what=f"NN payload of {name!r}")
        ints = reader.read_signed_exp_golomb(count, order)
        reader.expect_padding()
        if count and int(np.abs(ints).max()) > FLOAT32_EXACT_INT:
            raise BitstreamError(f"malformed NN payload: integer of {name!r} beyond 2^24")
        pos += n_bytes
        result[name] = (ints.reshape(shape), int(exponent), int(order))
    if pos != len(data):
        raise BitstreamError(f"malformed NN payload: {len(data) - pos} trailing bytes")
    return result
