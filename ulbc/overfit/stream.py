"""Bitstream of the overfitted image codecs (inside ulbc's container, which holds width and height).

Parameter block (the container's ``params``)::

    format     1 byte    FORMAT_VERSION
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
Exp-Golomb order and codes) | masks (lottery: :mod:`.maskcoding`) | latents range-coded under the
fixed-point ARM (:mod:`.arm`), the rest of the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..bitstream import decode_varint, encode_varint
from .. import limits
from ..errors import BitstreamError, ConfigError
from .arm import QuantizedARM, decode_latents, encode_latents
from .fixedpoint import FixedPointOverflow
from .maskcoding import decode_masks, encode_masks
from .model import Architecture, OverfittedModel, reconstruct
from .nnquant import encode_params, parse_params, step_exponent
from .networks import QParams, parse_layers

FORMAT_VERSION = 1
#: Largest latent magnitude a decoder accepts (the training never gets near it).
MAX_BOUND = 1 << 15


@dataclass
class Decoded:
    arch: Architecture
    seed: int
    params: QParams
    grids: list[np.ndarray]
    masks: list[np.ndarray] | None


@dataclass(frozen=True)
class Layout:
    """Sizes of the parts of one bitstream, in bytes (for the rate split in the results)."""

    header: int
    nn: int
    mask: int
    latent: int


def write_header(arch: Architecture, seed: int, bound: int, nn_bytes: int, mask_bytes: int) -> bytes:
    out = bytearray([FORMAT_VERSION])
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


def read_header(kind: str, data: bytes) -> tuple[Architecture, int, int, int, int]:
    """-> (architecture, seed, latent bound, nn bytes, mask bytes)."""
    if not data:
        raise BitstreamError("empty parameter block")
    if data[0] != FORMAT_VERSION:
        raise BitstreamError(f"unsupported {kind} format version {data[0]} (this ulbc reads {FORMAT_VERSION})")
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
    return arch, seed, bound, nn_bytes, mask_bytes


def _split(payload: bytes, nn_bytes: int, mask_bytes: int) -> tuple[bytes, bytes, bytes]:
    if nn_bytes + mask_bytes > len(payload):
        raise BitstreamError(f"payload of {len(payload)} bytes is shorter than its declared parts")
    return payload[:nn_bytes], payload[nn_bytes : nn_bytes + mask_bytes], payload[nn_bytes + mask_bytes :]


def to_qparams(data: bytes, shapes: dict[str, tuple[int, ...]]) -> QParams:
    """Network payload -> {name: (integers as float64, step exponent)}."""
    return {n: (q.ints.to(torch.float64), step_exponent(q.step)) for n, q in parse_params(data, shapes).items()}


def encode(arch: Architecture, height: int, width: int, seed: int, network: dict[str, torch.Tensor],
           steps: dict[str, float], grids: list[np.ndarray], masks: list[np.ndarray] | None) -> tuple[bytes, bytes, Decoded]:
    """Write one model. Returns (parameter block, payload, what a decoder will read back).

    The ARM that codes the latents is built from the network payload as parsed back, so the
    encoder uses exactly the decoder's integers.
    """
    nn_payload = encode_params(network, steps)
    shapes = {n: tuple(t.shape) for n, t in network.items()}
    params = to_qparams(nn_payload, shapes)
    mask_payload = encode_masks([m.astype(np.int32) for m in masks]) if masks is not None else b""
    arm = QuantizedARM.from_params(params, arch.arm_hidden, arch.arm_context, arch.arm_coarse)
    latent_payload, bound = encode_latents(grids, arm)
    if bound > MAX_BOUND:
        raise ValueError(f"latent magnitude {bound} exceeds the format's {MAX_BOUND}")
    header = write_header(arch, seed, bound, len(nn_payload), len(mask_payload))
    return header, nn_payload + mask_payload + latent_payload, Decoded(arch, seed, params, grids, masks)


def _shapes(arch: Architecture, seed: int) -> dict[str, tuple[int, ...]]:
    # A 1x1 model has every network tensor at its real size (they do not depend on the image size).
    try:
        return OverfittedModel(arch, 1, 1, [seed]).param_shapes()
    except ConfigError as exc:  # a layer string that parses but cannot be built (e.g. a residual width)
        raise BitstreamError(f"invalid architecture in header ({exc})") from None


def decoder_memory_bytes(arch: Architecture, height: int, width: int) -> int:
    """Estimated peak memory of decoding one image: the larger of the ARM's coding plan (int64
    context indices per latent element) and the float64 synthesis (a few copies of its widest
    per-pixel tensor), plus the latent buffers. Calibrated against measured peaks (it over-estimates
    them by 5-60 %)."""
    elements = sum(h * w for h, w in arch.grid_shapes(height, width))
    plan = elements * 8 * (3 * (arch.arm_context + arch.arm_coarse) + 10)
    channels = arch.n_grids
    if arch.kind == "coolchic":
        widths = [channels]
        for spec in parse_layers(arch.synthesis):
            widths += [channels * spec.kernel**2, spec.out_channels]
            channels = spec.out_channels
        live = 0
    else:
        m1, m2, m3 = arch.lottery_shape.modulation_widths
        widths = [channels, arch.mod_channels, 27] + [h + m for h, m in zip(arch.hidden, (m1, m2, m3))]
        live = arch.mod_channels + 9 + m3  # modulation features kept through the random layers
    synthesis = height * width * 8 * (4 * max(widths) + live + 3 * arch.n_grids)
    return max(plan, synthesis) + 40 * elements


def read(kind: str, header: bytes, payload: bytes, width: int, height: int) -> Decoded:
    arch, seed, bound, nn_bytes, mask_bytes = read_header(kind, header)
    # Before anything image-sized exists: what this architecture needs at this size.
    limits.check_memory(decoder_memory_bytes(arch, height, width), f"a {width}x{height} {kind} image")
    nn_data, mask_data, latent_data = _split(payload, nn_bytes, mask_bytes)
    params = to_qparams(nn_data, _shapes(arch, seed))
    masks = None
    if kind == "lottery":
        masks = decode_masks(mask_data, arch.lottery_shape.layer_shapes)
    elif mask_data:
        raise BitstreamError("unexpected mask payload")
    try:
        grids = decode_latents(latent_data, arch.grid_shapes(height, width), bound,
                               QuantizedARM.from_params(params, arch.arm_hidden, arch.arm_context, arch.arm_coarse))
    except FixedPointOverflow as exc:
        raise BitstreamError(f"entropy model out of range ({exc})") from None
    return Decoded(arch, seed, params, grids, masks)


def decode(kind: str, header: bytes, payload: bytes, width: int, height: int, device: str = "cpu") -> np.ndarray:
    d = read(kind, header, payload, width, height)
    return render(d, height, width, device)


def render(d: Decoded, height: int, width: int, device: str = "cpu") -> np.ndarray:
    try:
        return reconstruct(d.arch, height, width, d.params, d.grids, d.masks, d.seed, device)
    except FixedPointOverflow as exc:
        raise BitstreamError(f"network out of range ({exc})") from None


def layout(kind: str, header: bytes, payload: bytes) -> Layout:
    """Byte counts of the parts, read from the header alone."""
    _, _, _, nn_bytes, mask_bytes = read_header(kind, header)
    nn_data, mask_data, latent_data = _split(payload, nn_bytes, mask_bytes)
    return Layout(len(header), len(nn_data), len(mask_data), len(latent_data))


def kept_weights(kind: str, header: bytes, payload: bytes) -> int | None:
    """LotteryCodec: how many random weights the masks keep (from the per-layer counts)."""
    if kind != "lottery":
        return None
    arch, _, _, nn_bytes, mask_bytes = read_header(kind, header)
    _, mask_data, _ = _split(payload, nn_bytes, mask_bytes)
    total, pos = 0, 0
    for i in range(len(arch.lottery_shape.layer_shapes)):
        k, pos = decode_varint(mask_data, pos, f"mask {i} count")
        total += k
    return total
