"""GLC (Jia et al., CVPR 2024): generative latent coding, below 0.04 bpp with the authors' weights.

The network is :mod:`ulbc.glc.model`, the bitstream :mod:`ulbc.glc.coding`. The rate knob is the
model's rate index (0-3: its four learned scalers ``q_enc``/``q_dec``). Images are replicate-padded
right and bottom to a multiple of 64 and cropped back. ``checkpoint`` names the weights: the
registered release file (``glc-image``, imported by hand: ``ulbc weights import GLC_image.pth.tar``)
or a file, e.g. one of ``ulbc train glc``; ``config`` gives the network sizes it must fit.

Codec parameters (after the container header)::

    format      1 byte    PARAMS_FORMAT
    config      1 byte    index in ulbc.glc.config.CONFIG_IDS
    rate        1 byte    rate index
    source      1 byte    1 weights-registry name, 2 file path
    reference   varint length + UTF-8: the name or the absolute path
    weights     8 bytes   start of the weight file's sha256
    bound       varint    K: residuals lie in [-K, K]
    checksum    4 bytes   of the decoded symbols and scale indices
    pixels      4 bytes   digest of the encoder's decoded pixels

Payload: the packed hyper indices (their size follows from the image's), then y's range coder words.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import bitstream, weights
from ..errors import BitstreamError, ConfigError
from ..glc.config import CONFIG_IDS, CONFIGS
from . import checkpoints, register_codec
from .base import Codec, Option, PayloadResult, torch_and_constriction_missing

PARAMS_FORMAT = 1
DEFAULT_CHECKPOINT = "glc-image"
_CHECKSUM_BYTES = 4
_MODEL_CACHE_SIZE = 2
_models: OrderedDict[tuple[str, str, str], Any] = OrderedDict()


class _Loaded:
    """A GLC model on the CPU (eval mode: the entropy side) and copies on other devices."""

    def __init__(self, net, config: str, path: Path, sha256: str) -> None:
        self.net, self.config, self.path, self.sha256 = net, config, path, sha256
        self._on_device: dict[str, Any] = {}

    def on(self, device: str):
        if device == "cpu":
            return self.net
        if device not in self._on_device:
            import copy

            self._on_device[device] = copy.deepcopy(self.net).to(device).eval()
        return self._on_device[device]


def load_model(config: str, path: Path, sha256: str) -> _Loaded:
    """The model of ``config`` with the weights in ``path`` (kept for the next call)."""
    from ..glc.model import GLCImage, load_weights, read_checkpoint

    key = (config, str(path), sha256)
    if key in _models:
        _models.move_to_end(key)
        return _models[key]
    import torch

    net = GLCImage(CONFIGS[config])
    with torch.no_grad():
        load_weights(net, read_checkpoint(path), path, config)
    loaded = _Loaded(net.eval().requires_grad_(False), config, path, sha256)
    _models[key] = loaded
    while len(_models) > _MODEL_CACHE_SIZE:
        _models.popitem(last=False)
    return loaded


def synthesis_threads(device: str) -> int:
    """Torch threads of the synthesis: one on the CPU, where the kernels' rounding depends on the
    thread count (2 threads gave other pixels than 1 on a 2-core machine), so that every CPU decode
    of a file gives the encoder's pixels whatever the core count."""
    import torch

    return 1 if device == "cpu" else torch.get_num_threads()


@register_codec
class GLC(Codec):
    name = "glc"
    codec_id = 83
    rate_param = "q"  # the release's q_index: files and labels read q0-q3
    integer_rates = True
    default_rates = (0, 1, 2, 3)
    rate_range = (0, 3)
    uses_gpu = True
    # The synthesis (the VQ-VAE generator) is most of the decode; the entropy side stays on the CPU.
    gpu_decoder = True
    min_size = (1, 1)
    job_mem_mb = 8000
    # The generator's widest feature maps (128 channels at full resolution, float32, a few alive).
    decode_bytes_per_pixel = 3000
    option_specs = {
        "config": Option("glc-image", "choice", choices=CONFIG_IDS,
                         help="network sizes: glc-image (the authors' release) or glc-tiny (tests and demos)"),
        "checkpoint": Option(DEFAULT_CHECKPOINT, "str",
                             help="a weights-registry name or a file path of a GLC checkpoint of that config "
                                  "(the release's, or one of `ulbc train glc`)"),
        "threads": Option(0, "int", low=0, help="torch CPU threads of the analysis transform (0: torch's "
                                                "default; the bytes can depend on it); the entropy side and the "
                                                "synthesis always run on one"),
        "batch_size": Option("auto", "int", low=1, keywords=("auto",),
                             help="same-size images whose analysis transform runs together (auto: 8 on a "
                                  "GPU, 1 on CPU); the entropy side and the synthesis take one image at a time"),
    }
    description = ("GLC, generative latent coding in a VQ-VAE latent (CVPR 2024; rate index 0-3, "
                   "about 0.02-0.04 bpp with the release weights)")

    @classmethod
    def availability(cls) -> str | None:
        return torch_and_constriction_missing()

    def version(self) -> str:
        return (f"torch {metadata.version('torch')} / constriction {metadata.version('constriction')} / "
                f"ulbc glc params {PARAMS_FORMAT}")

    # -- which weights -------------------------------------------------------------------------------
    def _reference(self) -> str:
        return str(self.options["checkpoint"])

    def weight_names(self, rate: float) -> list[str]:
        reference = self._reference()
        return [reference] if reference in weights.registry() else []

    def checkpoint_files(self, rate: float) -> list[str]:
        reference = self._reference()
        return [] if reference in weights.registry() else [reference]

    def check_resources(self, rate: float) -> None:
        reference = self._reference()
        if not reference or not reference.isprintable():
            raise ConfigError(f"codec {self.name!r}: checkpoint {reference!r} is empty or has non-printable characters")
        if reference not in weights.registry() and not Path(reference).expanduser().is_file():
            raise ConfigError(f"codec {self.name!r}: checkpoint {reference} is neither a file nor a registered "
                              f"weights name (ulbc weights list)")

    # -- coding --------------------------------------------------------------------------------------
    def encode_payload(self, image, rate, *, device, seed):
        result = self.encode_payload_batch([image], rate, device=device, seeds=[seed])[0]
        return result.params, result.payload

    def _threads(self) -> int:
        from ..compressai_runtime import default_threads

        return int(self.options["threads"]) or default_threads()

    def encode_payload_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str,
                             seeds: Sequence[int]) -> list[PayloadResult]:
        import torch

        from ..compressai_runtime import torch_threads
        from ..glc import coding

        config = self.options["config"]
        cfg = CONFIGS[config]
        rate_index = int(rate)
        source, reference, path, sha256 = checkpoints.local_file(self._reference())
        model = load_model(config, path, sha256)
        device = str(device)
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = False  # one convolution algorithm: the same bytes every run
            torch.backends.cudnn.deterministic = True
        height, width = images[0].shape[:2]
        x = coding.image_to_input(list(images), cfg.pad_multiple)
        with torch.no_grad():
            with torch_threads(self._threads()):
                y = model.on(device).analysis(x.to(device), rate_index).to("cpu", torch.float32)
            coded = []
            with torch_threads(1):
                for index in range(len(images)):
                    coded.append(coding.encode_latent(model.net, y[index : index + 1].contiguous()))
            # One image at a time, as the decoder runs it: its pixels are then the decoder's.
            with torch_threads(synthesis_threads(device)):
                x_hats = [model.on(device).synthesis(c.y_hat.to(device), rate_index) for c in coded]
        head = bytes([PARAMS_FORMAT, CONFIG_IDS.index(config), rate_index, source])
        head += checkpoints.pack_reference(reference) + checkpoints.weights_id(sha256)
        results = []
        for index, item in enumerate(coded):
            reconstruction = coding.output_to_image(x_hats[index], height, width)
            params = (head + bitstream.encode_varint(item.symbol_bound) + item.checksum
                      + coding.pixel_digest(reconstruction))
            info = {"bpp_estimated": (item.estimated_bits_y + item.z_bits) / (height * width),
                    "z_bits": item.z_bits, "y_bytes": len(item.y), "symbol_bound": item.symbol_bound,
                    "weights": {"file": reference, "sha256": sha256}, "latent_checksum": item.checksum.hex()}
            results.append(PayloadResult(params, item.z + item.y, info, reconstruction))
        return results

    def decode_payload(self, params: bytes, payload: bytes, width: int, height: int, *, device: str) -> np.ndarray:
        import torch

        from ..compressai_runtime import torch_threads
        from ..glc import coding

        header = parse_params(params, payload, width, height)
        path, sha256 = checkpoints.named_file(header["source"], header["reference"], header["weights_id"])
        model = load_model(header["config"], path, sha256)
        with torch_threads(1):
            y_hat = coding.decode_latent(model.net, header["z"], header["y"], header["bound"], header["checksum"],
                                         header["latent_shape"])
        device = str(device)
        with torch.no_grad(), torch_threads(synthesis_threads(device)):
            x_hat = model.on(device).synthesis(y_hat.to(device), header["rate"])
        image = coding.output_to_image(x_hat, height, width)
        if coding.pixel_digest(image) != header["pixels"]:
            # The latent is exact (its checksum matched): only the synthesis differs, by rounding.
            print(f"ulbc: warning: glc: these decoded pixels differ from the encoder's (synthesis on {device}; "
                  f"the encoder's ran on another kind of device or library build); the latent itself decoded "
                  f"exactly", file=sys.stderr)
        return image

    def bitstream_stats(self, params, payload, width, height):
        return {"bits_latent": 8.0 * len(payload), "bits_nn": 0.0}


def parse_params(params: bytes, payload: bytes, width: int, height: int) -> dict[str, Any]:
    """The parameter block and the payload's two parts, checked field by field before anything is
    loaded or allocated."""
    from ..glc.coding import MAX_SYMBOL_BOUND, z_bytes

    if len(params) < 5:
        raise BitstreamError(f"glc parameters are truncated ({len(params)} bytes)")
    version, config_index, rate, source = params[:4]
    if version != PARAMS_FORMAT:
        raise BitstreamError(f"glc parameter format {version} is not supported (this ulbc reads {PARAMS_FORMAT})")
    if config_index >= len(CONFIG_IDS):
        raise BitstreamError(f"unknown GLC configuration index {config_index}")
    config = CONFIG_IDS[config_index]
    cfg = CONFIGS[config]
    if rate >= cfg.n_rates:
        raise BitstreamError(f"rate index {rate} outside {config}'s 0-{cfg.n_rates - 1}")
    if source not in (checkpoints.SOURCE_REGISTRY, checkpoints.SOURCE_PATH):
        raise BitstreamError(f"invalid weights source {source} in the parameters")
    reference, pos = checkpoints.read_reference(params, 4)
    if pos + checkpoints.WEIGHTS_ID_BYTES > len(params):
        raise BitstreamError("glc parameters are truncated")
    weights_id = params[pos : pos + checkpoints.WEIGHTS_ID_BYTES].hex()
    bound, pos = bitstream.decode_varint(params, pos + checkpoints.WEIGHTS_ID_BYTES, "symbol bound")
    if not 1 <= bound <= MAX_SYMBOL_BOUND:
        raise BitstreamError(f"symbol bound {bound} outside [1, {MAX_SYMBOL_BOUND}]")
    if pos + 2 * _CHECKSUM_BYTES != len(params):
        raise BitstreamError(f"glc parameters have {len(params) - pos} bytes after the symbol bound, "
                             f"expected {2 * _CHECKSUM_BYTES}")
    checksum = params[pos : pos + _CHECKSUM_BYTES]
    pixels = params[pos + _CHECKSUM_BYTES :]
    padded = ((height + cfg.pad_multiple - 1) // cfg.pad_multiple, (width + cfg.pad_multiple - 1) // cfg.pad_multiple)
    positions = padded[0] * padded[1]
    z_size = z_bytes(positions, cfg.index_bits)
    if z_size > len(payload):
        raise BitstreamError(f"a {width}x{height} image has {positions} hyper indices ({z_size} bytes), "
                             f"but the payload has {len(payload)} bytes")
    latent_shape = (padded[0] * 4, padded[1] * 4)
    return dict(config=config, rate=rate, source=source, reference=reference, weights_id=weights_id, bound=bound,
                checksum=checksum, pixels=pixels, z=payload[:z_size], y=payload[z_size:], latent_shape=latent_shape)
