"""MISC (Li et al., 2024): a caption, object maps, a tiny base image and a generative decoder, in one file.

Four plug-in stages, each from a registry and each with its own options:

* ``captioner`` (:mod:`ulbc.misc.captioners`, :mod:`ulbc.misc.vlm`): the five-line answer (three objects, a sentence
  about each, the whole image);
* ``mapper`` (:mod:`ulbc.misc.mappers`): a block mask per object, or none (global-only mode);
* ``base``: any registered ulbc image codec, at the study's rate, on the image down-scaled by
  ``downscale`` per side; the paper's ``net`` mode is a learned codec here (``cheng2020-attn``), its
  ``ref`` mode a classical one (``hevc-intra``);
* ``generator`` (:mod:`ulbc.misc.generators`): ``upscale`` (a lower bound, offline) or
  ``diffusion`` (Stable Diffusion 2.1, not bit-exact across devices).

The rate knob is the base codec's (``base_rate``: a JPEG quality, a CompressAI quality, a QP).
The file holds what the decoder needs and nothing else: the object names only steer the mapper, so,
as in the paper, they are not stored.

Codec parameters (after the container header)::

    format     1 byte    PARAMS_FORMAT
    seed       4 bytes   the generator's noise (big-endian)
    objects    1 byte    masks in the file (0: no maps)
    grid       1 byte    blocks per mask side (only when objects > 0)
    text       1 byte    text coding id (ulbc.misc.text)
    generator  1 byte id + its settings (ulbc.misc.generators)

Payload: varint length + the base image's complete ulbc bitstream, the masks (one bit per block,
their size follows from objects and grid), then the coded text: with maps the objects' sentences
and the overall description, one per line; without, the overall description alone.
"""

from __future__ import annotations

import struct
from importlib import metadata
from typing import Any, Sequence

import numpy as np

from .. import bitstream
from ..errors import BitstreamError, ConfigError, InputError
from ..misc import masks as mask_coding
from ..misc import text as text_coding
from ..misc.answer import OBJECTS
from ..misc.captioners import CAPTIONERS, get_captioner
from ..misc.generators import GENERATORS, get_generator, read_generator, resize
from ..misc.mappers import MAPPERS, get_mapper
from ..misc.rate import paper_bits, paper_text
from . import register_codec
from .base import Codec, Option, PayloadResult, decode_container

PARAMS_FORMAT = 1
#: Largest down-scaling factor per side.
MAX_DOWNSCALE = 64


def _stage_options(value: Any) -> dict[str, Any]:
    return dict(value or {})


@register_codec
class MISC(Codec):
    name = "misc"
    codec_id = 84
    rate_param = "base_rate"
    # The default base codec's (jpeg) qualities; another base takes its own rates from the config.
    default_rates = (5, 10, 20, 35, 50)
    # What the usual bases accept (qualities, QPs, distances); the base codec checks each rate itself.
    rate_range = (0, 100)
    uses_gpu = True
    gpu_decoder = True
    wants_item_names = True
    job_mem_mb = 8000
    decode_bytes_per_pixel = 4000  # a diffusion decoder's activations at full resolution
    option_specs = {
        "captioner": Option("table", "choice", choices=tuple(sorted(CAPTIONERS)),
                            help="who writes the five-line answer: table (answers prepared beforehand), "
                                 "openai-compatible (a chat endpoint with vision input) or transformers (a "
                                 "local vision-language model)"),
        "captioner_options": Option({}, "mapping", help="the captioner's options (table: path; openai-compatible: "
                                                        "url, model, api_key_env, ...; transformers: weights)"),
        "mapper": Option("none", "choice", choices=tuple(sorted(MAPPERS)),
                         help="object maps: none (global-only) or clip-surgery (CLIP ViT-B/16)"),
        "mapper_options": Option({}, "mapping", help="the mapper's options (clip-surgery: grid, threshold, ...)"),
        "base": Option("jpeg", "str", help="the registered ulbc image codec of the base image (jpeg, "
                                           "cheng2020-attn, hevc-intra, ...); the rate is its rate"),
        "base_options": Option({}, "mapping", help="the base codec's own options"),
        "downscale": Option(4, "int", low=1, high=MAX_DOWNSCALE,
                            help="the base image is the image shrunk by this factor per side (Lanczos)"),
        "generator": Option("upscale", "choice", choices=tuple(sorted(GENERATORS)),
                            help="the decoder: upscale (no generative model: a lower bound) or diffusion "
                                 "(Stable Diffusion 2.1, not bit-exact across devices)"),
        "generator_options": Option({}, "mapping", help="the generator's options (diffusion: config, steps, "
                                                        "guidance, strength, local_steps, control, ...)"),
        "text": Option("auto", "choice", choices=text_coding.CHOICES,
                       help="text coding: utf8, deflate, brotli, or auto (the shortest of them)"),
    }
    description = ("MISC, LMM-driven semantic compression: caption + object maps + a tiny base image (any "
                   "ulbc codec) + a generative decoder (upscale lower bound or Stable Diffusion 2.1)")

    @classmethod
    def source_modules(cls) -> tuple[str, ...]:
        # Any image codec can be the base: the digest covers all of them.
        from . import CODECS

        return tuple(dict.fromkeys([cls.__module__, *(c.__module__ for c in CODECS.values() if c.media == "image")]))

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from . import CODECS

        base = self.options["base"]
        if base not in CODECS:
            raise ConfigError(f"codec {self.name!r}: base {base!r} is not a registered codec")
        cls = CODECS[base]
        if cls.media != "image" or base == self.name:
            raise ConfigError(f"codec {self.name!r}: base {base!r} is not an image codec MISC can embed")
        self._base_name = base
        self._base: Codec | None = None
        self.mapper = get_mapper(self.options["mapper"], _stage_options(self.options["mapper_options"]))
        self.generator = get_generator(self.options["generator"], _stage_options(self.options["generator_options"]))
        self._captioner = None

    def label_tags(self):
        return (self.generator.tag,) if self.generator.tag else ()

    # -- stages ---------------------------------------------------------------------------------------
    @property
    def base(self) -> Codec:
        if self._base is None:
            from . import get_codec

            self._base = get_codec(self._base_name, **_stage_options(self.options["base_options"]))
        return self._base

    @property
    def captioner(self):
        if self._captioner is None:
            self._captioner = get_captioner(self.options["captioner"],
                                            **_stage_options(self.options["captioner_options"]))
        return self._captioner

    def version(self) -> str:
        return (f"ulbc misc params {PARAMS_FORMAT} / base {self.base.name} {self.base.version()} / "
                f"{self.mapper.version()} / {self.generator.label()} / brotli {metadata.version('brotli')}")

    def check_rate(self, rate: float) -> float:
        try:
            return self.base.check_rate(rate)
        except ConfigError as exc:
            raise ConfigError(f"codec {self.name!r}: the rate is the base codec's ({exc})") from None

    def rate_label(self, rate: float) -> str:
        return self.base.rate_label(rate)

    def job_needs(self) -> tuple[bool, int, int]:
        # A generative decoder wants a GPU and memory; the lower bound needs only what its base needs.
        from . import CODECS

        base = CODECS[self._base_name]
        if self.generator.needs_gpu:
            return True, max(self.job_mem_mb, base.job_mem_mb), max(self.job_runtime, base.job_runtime)
        return base.uses_gpu, base.job_mem_mb, base.job_runtime

    def weight_names(self, rate: float) -> list[str]:
        names = [*self.base.weight_names(rate), *self.mapper.weight_names(), *self.generator.weight_names()]
        return list(dict.fromkeys(names))

    def check_resources(self, rate: float) -> None:
        self.base.check_resources(rate)
        if self.options["captioner"] == "table":
            self.captioner  # noqa: B018 - reads and checks the table now, before any job runs

    def checkpoint_files(self, rate: float) -> list[str]:
        files = list(self.base.checkpoint_files(rate))
        if self.options["captioner"] == "table" and "path" in self.options["captioner_options"]:
            files.append(str(self.options["captioner_options"]["path"]))
        return files

    def base_size(self, width: int, height: int) -> tuple[int, int]:
        factor = int(self.options["downscale"])
        return max(1, -(-width // factor)), max(1, -(-height // factor))

    # -- coding ---------------------------------------------------------------------------------------
    def encode_payload(self, image, rate, *, device, seed):
        result = self.encode_payload_batch([image], rate, device=device, seeds=[seed], names=["<image>"])[0]
        return result.params, result.payload

    def encode_payload_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str, seeds: Sequence[int],
                             names: Sequence[str] = ()) -> list[PayloadResult]:
        names = list(names) or ["<image>"] * len(images)
        return [self._encode_one(image, rate, device, seed, name) for image, seed, name in zip(images, seeds, names)]

    def _encode_one(self, image: np.ndarray, rate: float, device: str, seed: int, name: str) -> PayloadResult:
        height, width = image.shape[:2]
        answer = self.captioner.describe(image, name)
        maps = self.mapper.maps(image, answer)
        if maps is not None and maps.shape[0] != OBJECTS:
            raise InputError(f"{name}: the mapper gave {maps.shape[0]} masks for {OBJECTS} objects")
        base_w, base_h = self.base_size(width, height)
        small = resize(image, base_w, base_h, "lanczos")
        base = self.base.encode_result(small, rate, device=device, seed=seed, name=name)
        texts = paper_text(answer, maps is not None)
        text_id, text_bytes = text_coding.encode_text("\n".join(texts), self.options["text"])
        params = bytes([PARAMS_FORMAT]) + struct.pack(">I", seed & 0xFFFFFFFF)
        params += bytes([maps.shape[0], maps.shape[1]]) if maps is not None else bytes([0])
        params += bytes([text_id]) + self.generator.to_bytes()
        mask_bytes = mask_coding.pack_masks(maps) if maps is not None else b""
        payload = bitstream.encode_varint(len(base.data)) + base.data + mask_bytes + text_bytes
        # The paper counts the base image's estimated bits where its codec has an estimate (net mode),
        # the real file's otherwise (ref mode).
        base_bits = base.info.get("bpp_estimated")
        base_bits = base_bits * base_w * base_h if base_bits is not None else 8 * len(base.data)
        grid = maps.shape[1] if maps is not None else mask_coding.GRID
        characters = sum(len(t) for t in texts)
        info = {
            "bpp_paper": paper_bits(base_bits, texts, using_maps=maps is not None, grid=grid) / (width * height),
            "base": {"codec": self.base.name, "width": base_w, "height": base_h, "bytes": len(base.data),
                     **({"weights": base.info["weights"]} if base.info.get("weights") else {})},
            "objects": list(answer.objects),
            "mask_bits": 8 * len(mask_bytes),
            "text_characters": characters,
            "text_bytes": len(text_bytes),
            "text_coding": text_coding.method_name(text_id),
            "text_bits_per_character": 8 * len(text_bytes) / max(characters, 1),
            "generator": self.generator.label(),
            "exact_across_devices": self.generator.exact_across_devices,
            "note": self.generator.note,
        }
        if base.info.get("weights"):
            info["weights"] = base.info["weights"]
        return PayloadResult(params, payload, info)

    def decode_payload(self, params: bytes, payload: bytes, width: int, height: int, *, device: str) -> np.ndarray:
        parsed = parse_params(params, payload, width, height)
        base_image = _decode_base(parsed["base"], width, height, device)
        return parsed["generator"].generate(base_image, width, height, parsed["texts"], parsed["masks"],
                                            parsed["seed"], device)


def _decode_base(data: bytes, width: int, height: int, device: str) -> np.ndarray:
    from . import codec_for_id

    container = bitstream.parse(data, "the base image")
    if container.width > width or container.height > height:
        raise BitstreamError(f"the base image ({container.width}x{container.height}) is larger than the image "
                             f"({width}x{height})")
    codec = codec_for_id(container.codec_id, "the base image")
    if codec.name == MISC.name or codec.media != "image":
        raise BitstreamError(f"the base image is a {codec.name} bitstream, not an image codec's")
    return decode_container(container, codec, device=device if codec.gpu_decoder else "cpu", name="the base image")


def parse_params(params: bytes, payload: bytes, width: int, height: int) -> dict[str, Any]:
    """The parameters and the payload's parts, checked before anything is decoded."""
    if len(params) < 7:
        raise BitstreamError(f"misc parameters are truncated ({len(params)} bytes)")
    if params[0] != PARAMS_FORMAT:
        raise BitstreamError(f"misc parameter format {params[0]} is not supported (this ulbc reads {PARAMS_FORMAT})")
    (seed,) = struct.unpack(">I", params[1:5])
    objects = params[5]
    pos = 6
    grid = 0
    if objects:
        if objects != OBJECTS:
            raise BitstreamError(f"the file declares {objects} masks, MISC makes {OBJECTS}")
        grid = params[pos]
        pos += 1
        if not 1 <= grid <= mask_coding.MAX_GRID:
            raise BitstreamError(f"mask grid {grid} outside 1-{mask_coding.MAX_GRID}")
    if pos >= len(params):
        raise BitstreamError("misc parameters end before the text coding")
    text_id = params[pos]
    generator, end = read_generator(params, pos + 1)
    if end != len(params):
        raise BitstreamError(f"misc parameters have {len(params) - end} bytes after the generator's settings")
    base_size, start = bitstream.decode_varint(payload, 0, "base bitstream length")
    mask_size = mask_coding.mask_bytes(objects, grid) if objects else 0
    if start + base_size + mask_size > len(payload):
        raise BitstreamError(f"the base bitstream ({base_size} bytes) and the masks ({mask_size} bytes) do not fit "
                             f"the {len(payload)}-byte payload")
    base = payload[start : start + base_size]
    masks = None
    if objects:
        masks = mask_coding.unpack_masks(payload[start + base_size : start + base_size + mask_size], objects, grid)
    text = text_coding.decode_text(text_id, payload[start + base_size + mask_size :])
    texts = text.split("\n")
    expected = OBJECTS + 1 if objects else 1
    if len(texts) != expected:
        raise BitstreamError(f"the text has {len(texts)} line(s), expected {expected}")
    return dict(seed=seed, masks=masks, texts=texts, generator=generator, base=base)

