"""CompressAI's learned image codecs: the six zoo architectures, and any checkpoint trained with them.

``bmshj2018-factorized``, ``bmshj2018-hyperprior``, ``mbt2018-mean``, ``mbt2018``,
``cheng2020-anchor`` and ``cheng2020-attn`` run the published weights of ``compressai.zoo``
(``metric``: mse or ms-ssim; the zoo's quality index is the rate knob), fetched and verified by the
weights manager (:mod:`ulbc.weights`). ``checkpoint:`` replaces them with a model of the same
architecture that a user trained; the ``compressai`` codec takes any architecture (``arch:``) and a
checkpoint. The strings are CompressAI's own (:mod:`ulbc.compressai_runtime` says how they are
made deterministic and checked); the file holds them in the ulbc container, so bpp is the file's.

Codec parameters (after the container header)::

    format      1 byte    PARAMS_FORMAT
    arch        1 byte    index in compressai_runtime.ARCHITECTURES
    quality     1 byte
    metric      1 byte    0 mse, 1 ms-ssim (zoo weights; 0 for checkpoints)
    source      1 byte    0 zoo weights, 1 weights-registry name, 2 file path
    reference   varint length + UTF-8 (sources 1 and 2): the name or the absolute path
    weights     8 bytes   start of the weight file's sha256
    checksum    4 bytes   the quantised latent's checksum
    lengths     varint    byte length of each string but the last (the payload holds them in order)

The latent's size follows from the image's (padded to a multiple of 64), so it is not stored.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .. import bitstream, weights
from ..errors import BitstreamError, ConfigError
from . import checkpoints, register_codec
from .base import Codec, Option, PayloadResult

PARAMS_FORMAT = 1
#: CompressAI's image architectures by their zoo names; the bitstream stores the index (never reorder).
ARCHITECTURES = (
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
    "bmshj2018-factorized-relu",
)
#: Architectures whose y is coded by the factorized entropy bottleneck alone (one string, no z).
FACTORIZED = ("bmshj2018-factorized", "bmshj2018-factorized-relu")
METRICS = ("mse", "ms-ssim")
SOURCE_ZOO = 0
SOURCE_REGISTRY, SOURCE_PATH = checkpoints.SOURCE_REGISTRY, checkpoints.SOURCE_PATH
_CHECKSUM_BYTES = 4
_FORMAT = "{quality}"

_COMMON_OPTIONS: dict[str, Option] = {
    "threads": Option(1, "int", low=0, help="torch CPU threads of the analysis transform (0: torch's default; "
                                              "the bytes can depend on it); the entropy side always runs on one"),
    "batch_size": Option("auto", "int", low=1, keywords=("auto",),
                         help="same-size images whose analysis transform runs together (auto: 8 on a GPU, 1 on CPU)"),
}
_CHECKPOINT_HELP = ("a weights-registry name or a file path of a model trained with CompressAI; "
                    "'{quality}' in it is replaced by the rate point")


class CompressAICodec(Codec):
    """One CompressAI architecture; subclasses fix it (``architecture``), ``compressai`` takes it
    from ``arch:``."""

    architecture: ClassVar[str] = ""
    rate_param = "quality"
    integer_rates = True
    uses_gpu = True
    # The decoder runs on the CPU with one thread: every decode of a file gives the same pixels
    # (benchmarks/compressai_determinism.py found cheng2020-attn's synthesis thread-dependent).
    gpu_decoder = False
    job_mem_mb = 6000
    # The synthesis's widest feature maps (N channels at half resolution, float32), with margin.
    decode_bytes_per_pixel = 1200

    @classmethod
    def availability(cls) -> str | None:
        missing = [name for name in ("torch", "compressai") if importlib.util.find_spec(name) is None]
        return f"needs {' and '.join(missing)}" if missing else None

    def version(self) -> str:
        return (f"compressai {metadata.version('compressai')} / torch {metadata.version('torch')} / "
                f"ulbc params {PARAMS_FORMAT}")

    def arch(self) -> str:
        return self.architecture or self.options.get("arch", "")

    # -- which weights -------------------------------------------------------------------------------
    def _reference(self, quality: int) -> str:
        return str(self.options.get("checkpoint") or "").replace(_FORMAT, str(quality))

    def weight_names(self, rate: float) -> list[str]:
        """Weights-registry files the encoder loads at ``rate`` (the study verifies them first)."""
        reference = self._reference(int(rate))
        if not reference:
            return [weights.compressai_zoo_name(self.arch(), self.options.get("metric", "mse"), int(rate))]
        return [reference] if reference in weights.registry() else []

    def checkpoint_files(self, rate: float) -> list[str]:
        reference = self._reference(int(rate))
        return [reference] if reference and reference not in weights.registry() else []

    def check_resources(self, rate: float) -> None:
        reference = self._reference(int(rate))
        if self.architecture == "" and not reference:
            raise ConfigError(f"codec {self.name!r}: needs checkpoint: ({_CHECKPOINT_HELP})")
        if not reference.isprintable():
            raise ConfigError(f"codec {self.name!r}: checkpoint {reference!r} has non-printable characters")
        if reference and reference not in weights.registry():
            path = Path(reference).expanduser()
            if not path.is_file():
                raise ConfigError(f"codec {self.name!r}: checkpoint {reference} (quality {int(rate)}) is neither a "
                                  f"file nor a registered weights name (ulbc weights list)")

    def _encoder_weights(self, quality: int) -> tuple[int, str, Path, str]:
        """(source, reference, local path, full sha256) of the weights at ``quality``."""
        reference = self._reference(quality)
        if not reference:
            name = weights.compressai_zoo_name(self.arch(), self.options["metric"], quality)
            return SOURCE_ZOO, "", weights.require(name), weights.file_sha256(name)
        return checkpoints.local_file(reference)

    # -- coding --------------------------------------------------------------------------------------
    def encode_payload(self, image, rate, *, device, seed):
        result = self.encode_payload_batch([image], rate, device=device, seeds=[seed])[0]
        return result.params, result.payload

    def encode_payload_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str,
                             seeds: Sequence[int]) -> list[PayloadResult]:
        from .. import compressai_runtime as runtime

        quality = int(rate)
        source, reference, path, sha256 = self._encoder_weights(quality)
        model = runtime.load_model(self.arch(), path, sha256, update=source != SOURCE_ZOO)
        threads = int(self.options["threads"]) or runtime.default_threads()
        if str(device).startswith("cuda"):
            import torch

            torch.backends.cudnn.benchmark = False  # one convolution algorithm: the same bytes every run
            torch.backends.cudnn.deterministic = True
        coded = runtime.encode_images(model, list(images), device=str(device), threads=threads)
        height, width = images[0].shape[:2]
        metric = METRICS.index(self.options.get("metric", "mse")) if source == SOURCE_ZOO else 0
        head = bytes([PARAMS_FORMAT, ARCHITECTURES.index(self.arch()), quality, metric, source])
        if source != SOURCE_ZOO:
            head += checkpoints.pack_reference(reference)
        head += checkpoints.weights_id(sha256)
        results = []
        for item in coded:
            params = head + item.checksum + b"".join(bitstream.encode_varint(len(s)) for s in item.strings[:-1])
            info = {"bpp_estimated": item.estimated_bits / (height * width),
                    "weights": {"file": reference or weights.compressai_zoo_name(
                        self.arch(), self.options["metric"], quality), "sha256": sha256},
                    "latent_checksum": item.checksum.hex()}
            results.append(PayloadResult(params, b"".join(item.strings), info))
        return results

    def decode_payload(self, params: bytes, payload: bytes, width: int, height: int, *, device: str) -> np.ndarray:
        from .. import compressai_runtime as runtime

        header = parse_params(params, payload, self)
        source = checkpoints.SOURCE_PATH if header["source"] == SOURCE_PATH else checkpoints.SOURCE_REGISTRY
        path, sha256 = checkpoints.named_file(source, header["label"], header["weights_id"],
                                              "checkpoint" if source == SOURCE_PATH else "weights")
        model = runtime.load_model(header["arch"], path, sha256, update=header["source"] != SOURCE_ZOO)
        return runtime.decode_image(model, header["strings"], header["checksum"], width, height,
                                    device="cpu", threads=1)


def parse_params(params: bytes, payload: bytes, codec: CompressAICodec) -> dict[str, Any]:
    """The parameter block, checked field by field before anything is loaded."""
    if len(params) < 5:
        raise BitstreamError(f"{codec.name} parameters are truncated ({len(params)} bytes)")
    version, arch_index, quality, metric, source = params[:5]
    if version != PARAMS_FORMAT:
        raise BitstreamError(f"{codec.name} parameter format {version} is not supported (this ulbc reads "
                             f"{PARAMS_FORMAT})")
    if arch_index >= len(ARCHITECTURES):
        raise BitstreamError(f"unknown CompressAI architecture index {arch_index}")
    arch = ARCHITECTURES[arch_index]
    if codec.architecture and arch != codec.architecture:
        raise BitstreamError(f"a {codec.name} bitstream names architecture {arch}")
    low, high = codec.rate_range
    if not low <= quality <= high:
        raise BitstreamError(f"quality {quality} outside {codec.name}'s [{int(low)}, {int(high)}]")
    if metric >= len(METRICS) or source not in (SOURCE_ZOO, SOURCE_REGISTRY, SOURCE_PATH):
        raise BitstreamError(f"invalid metric ({metric}) or weights source ({source}) in the parameters")
    if source == SOURCE_ZOO and not codec.architecture:
        raise BitstreamError("a compressai bitstream must name its checkpoint")
    pos, reference = 5, ""
    if source != SOURCE_ZOO:
        reference, pos = checkpoints.read_reference(params, pos)
    if pos + checkpoints.WEIGHTS_ID_BYTES + _CHECKSUM_BYTES > len(params):
        raise BitstreamError(f"{codec.name} parameters are truncated")
    weights_id = params[pos : pos + checkpoints.WEIGHTS_ID_BYTES].hex()
    checksum = params[pos + checkpoints.WEIGHTS_ID_BYTES : pos + checkpoints.WEIGHTS_ID_BYTES + _CHECKSUM_BYTES]
    pos += checkpoints.WEIGHTS_ID_BYTES + _CHECKSUM_BYTES
    n_strings = 1 if arch in FACTORIZED else 2
    lengths = []
    for index in range(n_strings - 1):
        length, pos = bitstream.decode_varint(params, pos, f"string {index} length")
        lengths.append(length)
    if pos != len(params):
        raise BitstreamError(f"{len(params) - pos} unexpected bytes after the {codec.name} parameters")
    if sum(lengths) > len(payload):
        raise BitstreamError(f"string lengths {lengths} exceed the payload's {len(payload)} bytes")
    strings, start = [], 0
    for length in lengths:
        strings.append(payload[start : start + length])
        start += length
    strings.append(payload[start:])
    if any(len(s) == 0 for s in strings):
        raise BitstreamError("an entropy-coded string is empty")
    if source == SOURCE_ZOO:
        label = weights.compressai_zoo_name(arch, METRICS[metric], quality)
    else:
        label = reference
    return dict(arch=arch, quality=quality, metric=METRICS[metric], source=source, reference=reference,
                weights_id=weights_id, checksum=checksum, strings=strings, label=label)


def _zoo_codec(arch: str, codec_id: int, qualities: int, text: str) -> type[CompressAICodec]:
    options = {
        "metric": Option("mse", "choice", choices=METRICS, help="the zoo weights' training distortion"),
        "checkpoint": Option("", "str", help=f"instead of the zoo weights: {_CHECKPOINT_HELP}"),
        **_COMMON_OPTIONS,
    }
    attributes = dict(name=arch, codec_id=codec_id, architecture=arch, default_rates=tuple(range(1, qualities + 1)),
                      rate_range=(1, qualities), option_specs=options,
                      description=f"{text} (CompressAI zoo, qualities 1-{qualities})", __module__=__name__)
    cls = type(f"CompressAI_{arch.replace('-', '_')}", (CompressAICodec,), attributes)
    return register_codec(cls)


_zoo_codec("bmshj2018-factorized", 70, 8, "Balle et al. 2018, factorized prior")
_zoo_codec("bmshj2018-hyperprior", 71, 8, "Balle et al. 2018, scale hyperprior")
_zoo_codec("mbt2018-mean", 72, 8, "Minnen et al. 2018, mean-scale hyperprior")
_zoo_codec("mbt2018", 73, 8, "Minnen et al. 2018, joint autoregressive and hyperprior")
_zoo_codec("cheng2020-anchor", 74, 6, "Cheng et al. 2020, anchor (residual blocks, autoregressive)")
_zoo_codec("cheng2020-attn", 75, 6, "Cheng et al. 2020, with attention modules")


@register_codec
class CompressAICheckpoint(CompressAICodec):
    """A checkpoint of any CompressAI image architecture: what a user trained."""

    name = "compressai"
    codec_id = 76
    default_rates = (1,)
    rate_range = (1, 255)
    option_specs = {
        "arch": Option("bmshj2018-hyperprior", "choice", choices=ARCHITECTURES,
                       help="the CompressAI architecture of the checkpoint"),
        "checkpoint": Option("", "str", help=_CHECKPOINT_HELP),
        **_COMMON_OPTIONS,
    }
    description = "a CompressAI model from a user's checkpoint (arch: and checkpoint:; quality labels rate points)"
