"""``<base>+adapter``: one CompressAI bitstream, two decodes (Zhu et al., ICIP 2024).

The encoder is the base codec's (``cheng2020-anchor`` and the other zoo architectures, or a user's
checkpoint); the file also names the dynamic adaptation network g_t that ``ulbc train adapter``
trained for that codec. ``ulbc decode`` gives x̂ for viewing, exactly the base codec's decode;
``ulbc decode --for machine`` gives x̄ = g_t(x̂) for the task network. A study measures both
(``target`` human and machine in the rows; the machine rows' method is ``<method>@machine``).

Codec parameters (after the container header)::

    format      1 byte    ADAPTER_PARAMS_FORMAT
    source      1 byte    1 weights-registry name, 2 file path
    reference   varint length + UTF-8: the adapter's name or absolute path
    adapter     8 bytes   start of the adapter checkpoint's sha256
    base        the rest: the base codec's parameters (ulbc.codecs.compressai_zoo)

The adapter must have been trained for this architecture and quality, on the very codec weights the
encoder uses (its header records their sha256); with a fine-tuned codec (``--finetune-codec``) the
adapter file is also the codec's checkpoint, so ``checkpoint:`` must name the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import bitstream, weights
from ..errors import BitstreamError, ConfigError, InputError
from . import checkpoints, register_codec
from .base import Option
from .compressai_zoo import _CHECKPOINT_HELP, _COMMON_OPTIONS, METRICS, SOURCE_PATH, SOURCE_REGISTRY, CompressAICodec

ADAPTER_PARAMS_FORMAT = 1
_ADAPTER_ID_BYTES = checkpoints.WEIGHTS_ID_BYTES
_FORMAT = "{quality}"
_ADAPTER_HELP = ("the dynamic adapter checkpoint made by `ulbc train adapter` for this codec (a weights-registry "
                 "name or a file path; '{quality}' in it is replaced by the rate point)")


class AdapterCodec(CompressAICodec):
    """A CompressAI codec whose file also names a dynamic adapter for machine-vision decoding."""

    targets = ("human", "machine")

    def version(self) -> str:
        return f"{super().version()} / adapter params {ADAPTER_PARAMS_FORMAT}"

    # -- which adapter -------------------------------------------------------------------------------
    def _adapter_reference(self, quality: int) -> str:
        return str(self.options.get("adapter") or "").replace(_FORMAT, str(quality))

    def weight_names(self, rate: float) -> list[str]:
        reference = self._adapter_reference(int(rate))
        return super().weight_names(rate) + ([reference] if reference in weights.registry() else [])

    def checkpoint_files(self, rate: float) -> list[str]:
        reference = self._adapter_reference(int(rate))
        files = super().checkpoint_files(rate)
        if reference and reference not in weights.registry() and reference not in files:
            files.append(reference)
        return files

    def check_resources(self, rate: float) -> None:
        super().check_resources(rate)
        reference = self._adapter_reference(int(rate))
        if not reference:
            raise ConfigError(f"codec {self.name!r}: needs adapter: ({_ADAPTER_HELP})")
        if not reference.isprintable():
            raise ConfigError(f"codec {self.name!r}: adapter {reference!r} has non-printable characters")
        if reference in weights.registry():
            return  # the study verifies registered files before any job
        path = Path(reference).expanduser()
        if not path.is_file():
            raise ConfigError(f"codec {self.name!r}: adapter {reference} (quality {int(rate)}) is neither a file "
                              f"nor a registered weights name (ulbc weights list)")
        try:
            self._check_trained_for(_read_header(path), int(rate), path)
        except InputError as exc:
            raise ConfigError(f"codec {self.name!r}: {exc}") from None

    def _check_trained_for(self, header: dict[str, Any], quality: int, path: Path) -> None:
        base = header.get("base") or {}
        if base.get("architecture") != self.arch() or base.get("quality") != quality:
            raise InputError(f"adapter {path} was trained for {base.get('architecture')} quality "
                             f"{base.get('quality')}, not {self.arch()} quality {quality}")

    def _adapter_file(self, quality: int) -> tuple[int, str, Path, str]:
        """(source, reference, local path, full sha256) of the adapter at ``quality``."""
        return checkpoints.local_file(self._adapter_reference(quality), "adapter")

    # -- coding --------------------------------------------------------------------------------------
    def encode_payload_batch(self, images, rate, *, device, seeds):
        quality = int(rate)
        source, reference, path, sha256 = self._adapter_file(quality)
        header = _read_header(path)
        self._check_trained_for(header, quality, path)
        _, _, _, codec_sha256 = self._encoder_weights(quality)
        finetuned = bool((header.get("training") or {}).get("finetune_codec"))
        if finetuned and codec_sha256 != sha256:
            raise ConfigError(f"adapter {path} was trained with its codec fine-tuned: set checkpoint: to the same "
                              f"file, whose codec weights it holds")
        if not finetuned and (header.get("base") or {}).get("sha256") != codec_sha256:
            raise ConfigError(f"adapter {path} was trained on codec weights of sha256 "
                              f"{str((header.get('base') or {}).get('sha256'))[:16]}..., not on this method's "
                              f"({codec_sha256[:16]}...)")
        encoded = reference.encode("utf-8")
        block = (bytes([ADAPTER_PARAMS_FORMAT, source]) + bitstream.encode_varint(len(encoded)) + encoded
                 + bytes.fromhex(sha256)[:_ADAPTER_ID_BYTES])
        results = super().encode_payload_batch(images, rate, device=device, seeds=seeds)
        for result in results:
            result.params = block + result.params
            result.info["adapter"] = {"file": reference, "sha256": sha256, "steps_done": header.get("steps_done"),
                                      "task": (header.get("task") or {}).get("architecture")}
        return results

    def decode_payload(self, params: bytes, payload: bytes, width: int, height: int, *, device: str) -> np.ndarray:
        _, rest = parse_adapter_params(params, self.name)
        return super().decode_payload(rest, payload, width, height, device=device)

    def adapt_payload(self, params: bytes, payload: bytes, image: np.ndarray) -> np.ndarray:
        """x̄ = g_t(x̂) with the adapter the file names (checked against its sha256)."""
        from ..adapter.network import apply_adapter, load_adapter

        adapter, _ = parse_adapter_params(params, self.name)
        path, _ = checkpoints.named_file(adapter["source"], adapter["reference"], adapter["adapter_id"], "adapter")
        loaded = load_adapter(path)
        base = loaded.header.get("base") or {}
        if base.get("architecture") != self.arch():
            raise BitstreamError(f"adapter {path} was trained for {base.get('architecture')}, not {self.arch()}")
        return apply_adapter(loaded, image, threads=1)


def parse_adapter_params(params: bytes, codec_name: str) -> tuple[dict[str, Any], bytes]:
    """The adapter block (format, source, reference, sha256 prefix) and the base parameters after it."""
    if len(params) < 3:
        raise BitstreamError(f"{codec_name} parameters are truncated ({len(params)} bytes)")
    version, source = params[0], params[1]
    if version != ADAPTER_PARAMS_FORMAT:
        raise BitstreamError(f"{codec_name} adapter parameter format {version} is not supported (this ulbc reads "
                             f"{ADAPTER_PARAMS_FORMAT})")
    if source not in (SOURCE_REGISTRY, SOURCE_PATH):
        raise BitstreamError(f"invalid adapter source {source} in the parameters")
    reference, pos = checkpoints.read_reference(params, 2, "adapter", following=_ADAPTER_ID_BYTES)
    adapter_id = params[pos : pos + _ADAPTER_ID_BYTES].hex()
    return dict(source=source, reference=reference, adapter_id=adapter_id), params[pos + _ADAPTER_ID_BYTES :]


def _read_header(path: Path) -> dict[str, Any]:
    from ..adapter.network import read_checkpoint

    return read_checkpoint(path)["header"]


def _adapter_codec(arch: str, codec_id: int, qualities: int) -> type[AdapterCodec]:
    options = {
        "adapter": Option("", "str", help=_ADAPTER_HELP),
        "metric": Option("mse", "choice", choices=METRICS, help="the zoo weights' training distortion"),
        "checkpoint": Option("", "str", help=f"instead of the zoo weights: {_CHECKPOINT_HELP}"),
        **_COMMON_OPTIONS,
    }
    attributes = dict(name=f"{arch}+adapter", codec_id=codec_id, architecture=arch,
                      default_rates=tuple(range(1, qualities + 1)), rate_range=(1, qualities), option_specs=options,
                      description=f"{arch} decoded for viewing, and through a dynamic adapter for a vision "
                                  f"model (Zhu et al., ICIP 2024)", __module__=__name__)
    cls = type(f"Adapter_{arch.replace('-', '_')}", (AdapterCodec,), attributes)
    return register_codec(cls)


_adapter_codec("bmshj2018-factorized", 77, 8)
_adapter_codec("bmshj2018-hyperprior", 78, 8)
_adapter_codec("mbt2018-mean", 79, 8)
_adapter_codec("mbt2018", 80, 8)
_adapter_codec("cheng2020-anchor", 81, 6)
_adapter_codec("cheng2020-attn", 82, 6)
