"""GLC's bitstream: the hyper indices bit-packed, y range-coded in the model's four passes.

The release writes no file: its rate is the Gaussian self-information of y plus 14 bits per
hyper-latent position. Here both parts are real bytes:

* **z**: one codebook index per hyper position (H/64 x W/64 of the padded image), packed
  most-significant bit first at ``index_bits`` bits each (14 for the 16384-code book): exactly the
  release's count, rounded up to a byte. The count follows from the image size, so it is not stored.
* **y**: the residuals ``round(y / step - mean)`` of the four passes, in pass order and, within a
  pass, in (channel, row, column) order, with constriction's range coder under a quantised Gaussian
  of mean 0 and scale ``sigma`` on [-K, K] (K, the largest residual, is in the parameters).

Encoder and decoder must compute the same ``sigma`` for every symbol, or the rest of the image
decodes to garbage. So the entropy side (hyper decoder, prior fusion, the passes' priors) runs on
the CPU with one thread in both, through the one function :func:`code_passes`, and every ``sigma``
is snapped to :data:`SCALE_TABLE` (64 log-spaced values) before use: an ulp of difference then
changes nothing unless it crosses a table boundary. A checksum of the symbols and scale indices
guards the rest: a decoder out of step with the encoder fails with an error instead of returning
corrupted pixels. The analysis and synthesis transforms run on the requested device; a digest of
the encoder's pixels lets the decoder say when its synthesis (another device, thread count or
library) gave other pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BitstreamError
from .model import MIN_QUANT_STEP, GLCImage, four_part_masks, gaussian_bits

#: Scales the range coder's Gaussians use: sigma is snapped to the nearest in the log domain.
SCALE_TABLE_MIN, SCALE_TABLE_MAX, SCALE_TABLE_SIZE = 0.11, 256.0, 64
SCALE_TABLE = np.exp(np.linspace(math.log(SCALE_TABLE_MIN), math.log(SCALE_TABLE_MAX), SCALE_TABLE_SIZE))
#: Largest residual the file may declare (|round(y/step - mean)|); far above what a trained model makes.
MAX_SYMBOL_BOUND = 1 << 15
CHECKSUM_BYTES = 4


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(bottom, right) replicate padding that makes the image a multiple of ``multiple``."""
    return (-height) % multiple, (-width) % multiple


def image_to_input(images: list[np.ndarray], multiple: int) -> torch.Tensor:
    """(B, 3, H', W') float32 in [-1, 1], replicate-padded right and bottom as the release does."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0).mul(2.0).sub(1.0)
    bottom, right = pad_amounts(x.shape[2], x.shape[3], multiple)
    return F.pad(x, (0, right, 0, bottom), mode="replicate") if bottom or right else x.contiguous()


def output_to_image(x_hat: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 from one decoded (1, 3, H', W') image in [-1, 1], cropped to the original."""
    pixels = ((x_hat[0, :, :height, :width].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().contiguous().numpy()


def pixel_digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=CHECKSUM_BYTES).digest()


# -- z: fixed-length indices ------------------------------------------------------------------------
def z_bytes(positions: int, bits: int) -> int:
    return (positions * bits + 7) // 8


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """Indices (any shape, each < 2**bits) packed most-significant bit first, zero-padded to a byte."""
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise ValueError(f"an index is outside [0, {1 << bits})")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((flat[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_indices(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` indices of :func:`pack_indices`; BitstreamError when ``data`` is not their size
    or its padding bits are not zero."""
    if len(data) != z_bytes(count, bits):
        raise BitstreamError(f"the hyper indices take {len(data)} bytes, expected {z_bytes(count, bits)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if stream[count * bits :].any():
        raise BitstreamError("the padding bits after the hyper indices are not zero")
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return stream[: count * bits].reshape(count, bits).astype(np.int64) @ weights


# -- y: the four passes -----------------------------------------------------------------------------
def snap_scales(scales: torch.Tensor) -> torch.Tensor:
    """Index in :data:`SCALE_TABLE` of each scale (nearest in the log domain), as int64."""
    step = (math.log(SCALE_TABLE_MAX) - math.log(SCALE_TABLE_MIN)) / (SCALE_TABLE_SIZE - 1)
    position = (torch.log(scales.double().clamp_min(SCALE_TABLE_MIN)) - math.log(SCALE_TABLE_MIN)) / step
    return position.round().clamp(0, SCALE_TABLE_SIZE - 1).to(torch.int64)


@dataclass
class PassesResult:
    y_hat: torch.Tensor  # (1, N, h, w) the de-quantised latent the synthesis reads
    checksum: bytes  # of every symbol and scale index, in coding order
    estimated_bits: float  # the release's Gaussian estimate of y (unsnapped scales)


#: ``code(pass_index, scale_indices, means, y_scaled)`` -> that pass's residual symbols (int32, 1-D).
PassCoder = Callable[[int, np.ndarray, torch.Tensor, "torch.Tensor | None"], np.ndarray]


def code_passes(model: GLCImage, indices: torch.Tensor, shape: tuple[int, int], code: PassCoder,
                y: torch.Tensor | None = None) -> PassesResult:
    """Run the entropy side of one latent (CPU, float32, the caller holds one torch thread) and
    hand each pass's scales and means to ``code``, which encodes (``y`` given) or decodes the
    pass's symbols. Encoder and decoder both come through here, so they compute the same floats."""
    height, width = shape
    with torch.no_grad():
        params = model.hyper_params(indices)
        if params.shape[2:] != (height, width):
            raise BitstreamError(f"the hyper prior has size {tuple(params.shape[2:])}, y {height}x{width}")
        quant_step, scales, means = params.chunk(3, 1)
        reduced = model.y_spatial_prior_reduction(params)
        step = quant_step.clamp_min(MIN_QUANT_STEP)
        y_scaled = y / step if y is not None else None
        channels = model.cfg.N
        masks = four_part_masks(channels, height, width)
        y_hat_scaled = torch.zeros(1, channels, height, width)
        digest = hashlib.blake2b(digest_size=CHECKSUM_BYTES)
        estimated = 0.0
        for index, mask in enumerate(masks):
            if index:
                scales, means = model.pass_params(index, y_hat_scaled, reduced)
            where = mask.unsqueeze(0)
            scale_indices = snap_scales(scales[where]).numpy().astype(np.uint8)
            means_here = means[where]
            symbols = code(index, scale_indices, means_here, y_scaled[where] if y_scaled is not None else None)
            if symbols.shape != (int(where.sum()),):
                raise BitstreamError(f"pass {index} decoded {symbols.shape[0]} symbols, expected {int(where.sum())}")
            digest.update(symbols.astype("<i4").tobytes())
            digest.update(scale_indices.tobytes())
            q = torch.from_numpy(symbols.astype(np.float32))
            if y is not None:
                estimated += float(gaussian_bits(q.double(), scales[where].double()).sum())
            update = torch.zeros_like(y_hat_scaled)
            update[where] = q + means_here
            y_hat_scaled = y_hat_scaled + update
    return PassesResult(y_hat_scaled * step, digest.digest(), estimated)


def _gaussians(symbol_bound: int):
    import constriction

    return constriction.stream.model.QuantizedGaussian(-symbol_bound, symbol_bound)


def _scales_of(scale_indices: np.ndarray) -> np.ndarray:
    return SCALE_TABLE[scale_indices.astype(np.int64)]


@dataclass
class EncodedLatent:
    z: bytes
    y: bytes
    symbol_bound: int
    checksum: bytes
    y_hat: torch.Tensor
    estimated_bits_y: float
    z_bits: int


def encode_latent(model: GLCImage, y: torch.Tensor) -> EncodedLatent:
    """Code one latent y (1, N, h, w) on the CPU (one torch thread held by the caller)."""
    import constriction

    cfg = model.cfg
    height, width = y.shape[2:]
    with torch.no_grad():
        indices = model.hyper_indices(y)
    symbols_of: list[np.ndarray] = []
    scales_of: list[np.ndarray] = []

    def take(index, scale_indices, means, y_scaled):
        rounded = torch.round(y_scaled - means).numpy()
        largest = float(np.abs(rounded).max()) if rounded.size else 0.0
        if not largest <= MAX_SYMBOL_BOUND:  # checked as floats: no int32 wrap-around, NaN caught
            raise ValueError(f"a residual of {largest:g} exceeds the coder's bound {MAX_SYMBOL_BOUND} "
                             f"(is the model trained?)")
        symbols_of.append(rounded.astype(np.int32))
        scales_of.append(scale_indices)
        return symbols_of[-1]

    passes = code_passes(model, indices, (height, width), take, y=y)
    bound = max(1, max((int(np.abs(s).max()) for s in symbols_of if s.size), default=1))
    encoder = constriction.stream.queue.RangeEncoder()
    gaussians = _gaussians(bound)
    for symbols, scale_indices in zip(symbols_of, scales_of):
        if symbols.size:
            encoder.encode(symbols, gaussians, np.zeros(symbols.size), _scales_of(scale_indices))
    words = encoder.get_compressed()
    positions = indices.numel()
    return EncodedLatent(z=pack_indices(indices.numpy(), cfg.index_bits), y=words.astype("<u4").tobytes(),
                         symbol_bound=bound, checksum=passes.checksum, y_hat=passes.y_hat,
                         estimated_bits_y=passes.estimated_bits, z_bits=positions * cfg.index_bits)


def decode_latent(model: GLCImage, z: bytes, y: bytes, symbol_bound: int, checksum: bytes,
                  latent_shape: tuple[int, int]) -> torch.Tensor:
    """ŷ (1, N, h, w) from the two parts; BitstreamError when the symbols or scales differ from
    the encoder's (its checksum) or the range-coded data does not end where the symbols do."""
    import constriction

    cfg = model.cfg
    height, width = latent_shape
    hyper = (height // 4, width // 4)
    codes = unpack_indices(z, hyper[0] * hyper[1], cfg.index_bits)
    if codes.size and codes.max() >= cfg.codebook_size:
        raise BitstreamError(f"a hyper index ({int(codes.max())}) is outside the {cfg.codebook_size}-code book")
    if len(y) % 4:
        raise BitstreamError(f"the range-coded part has {len(y)} bytes, not whole 32-bit words")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(y, dtype="<u4").astype(np.uint32))
    gaussians = _gaussians(symbol_bound)

    def take(index, scale_indices, means, y_scaled):
        if not scale_indices.size:
            return np.zeros(0, dtype=np.int32)
        try:
            symbols = decoder.decode(gaussians, np.zeros(scale_indices.size), _scales_of(scale_indices))
        except AssertionError:  # constriction's word for data its model cannot have produced
            raise BitstreamError(f"the range-coded part is invalid (pass {index} of 4)") from None
        return np.asarray(symbols, dtype=np.int32)

    indices = torch.from_numpy(codes).reshape(1, *hyper)
    passes = code_passes(model, indices, (height, width), take)
    if passes.checksum != checksum:
        raise BitstreamError("the decoded latent does not match the encoder's checksum: this decoder's GLC entropy "
                             "model is out of step with the encoder's (other weights, torch version or "
                             "floating-point platform), or the file is damaged; refusing to return corrupted pixels")
    if not decoder.maybe_exhausted():
        raise BitstreamError("the range-coded part holds data after its last symbol")
    return passes.y_hat
