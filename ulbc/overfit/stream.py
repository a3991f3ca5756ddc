"""Writing and reading the overfitted codecs' bitstreams with the torch models (the encoder, and the
reference decoder that specifies the compiled one in :mod:`.fastdecode`). The layout itself is in
:mod:`.format`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import limits
from ..errors import BitstreamError
from .arm import QuantizedARM, decode_latents, encode_latents
from .fixedpoint import FixedPointOverflow
from .format import (  # noqa: F401 (re-exported)
    FORMAT_VERSION,
    MAX_BOUND,
    Layout,
    kept_weights,
    layout,
    masks_of,
    network_shapes,
    parse_header,
    parse_param_ints,
    read_header,
    split_payload,
    write_header,
)
from .maskcoding import encode_masks
from .model import Architecture, reconstruct
from .nnquant import encode_params
from .networks import QParams, parse_layers


@dataclass
class Decoded:
    arch: Architecture
    seed: int
    params: QParams
    grids: list[np.ndarray]
    masks: list[np.ndarray] | None
    version: int = FORMAT_VERSION


def to_qparams(data: bytes, shapes: dict[str, tuple[int, ...]]) -> QParams:
    """Network payload -> {name: (integers as float64, step exponent)}."""
    return {n: (torch.from_numpy(ints.astype(np.float64)), e) for n, (ints, e, _) in parse_param_ints(data, shapes).items()}


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
    h = parse_header(kind, header)
    arch, seed = h.arch, h.seed
    # Before anything image-sized exists: what this architecture needs at this size.
    limits.check_memory(decoder_memory_bytes(arch, height, width), f"a {width}x{height} {kind} image")
    nn_data, mask_data, latent_data = split_payload(payload, h.nn_bytes, h.mask_bytes)
    params = to_qparams(nn_data, network_shapes(arch))
    masks = masks_of(kind, arch, mask_data)
    try:
        grids = decode_latents(latent_data, arch.grid_shapes(height, width), h.bound,
                               QuantizedARM.from_params(params, arch.arm_hidden, arch.arm_context, arch.arm_coarse),
                               h.version)
    except FixedPointOverflow as exc:
        raise BitstreamError(f"entropy model out of range ({exc})") from None
    return Decoded(arch, seed, params, grids, masks, h.version)


def decode(kind: str, header: bytes, payload: bytes, width: int, height: int, device: str = "cpu") -> np.ndarray:
    d = read(kind, header, payload, width, height)
    return render(d, height, width, device)


def render(d: Decoded, height: int, width: int, device: str = "cpu") -> np.ndarray:
    try:
        return reconstruct(d.arch, height, width, d.params, d.grids, d.masks, d.seed, device, d.version)
    except FixedPointOverflow as exc:
        raise BitstreamError(f"network out of range ({exc})") from None
