"""MISC's decoders: from the base image (and the text and masks) to the output image.

* ``upscale``: no generative model, the base image up-sampled to the output size. It ignores the
  text and the masks: a lower bound for what the generator adds, and a pipeline that runs offline.
  Results label it ``misc (upscale, lower bound)``.
* ``diffusion``: Stable Diffusion 2.1 steered by the base image, local passes per object mask then
  a global pass (:mod:`ulbc.misc.diffusion`). Not bit-exact across devices.

A generator is chosen at the encoder and written into the file with all its settings
(:meth:`Generator.to_bytes`), so the decoder reads it from the file alone.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import BitstreamError
from ..options import Option, check_options
from .stages import StageRegistry

GENERATORS = StageRegistry("MISC generator")
_BY_ID: dict[int, type["Generator"]] = {}


def register_generator(cls: type["Generator"]) -> type["Generator"]:
    if cls.generator_id in _BY_ID:
        raise ValueError(f"generator id {cls.generator_id} of {cls.name!r} already used")
    _BY_ID[cls.generator_id] = GENERATORS.register(cls)
    return cls


def get_generator(name: str, options: dict[str, Any]) -> "Generator":
    cls = GENERATORS.lookup(name)
    return cls(check_options(f"MISC generator {name!r}", cls.option_specs, options))


def read_generator(data: bytes, pos: int) -> tuple["Generator", int]:
    """The generator stored at ``pos`` and the position after its settings."""
    if pos >= len(data):
        raise BitstreamError("the MISC parameters end before the generator")
    cls = _BY_ID.get(data[pos])
    if cls is None:
        raise BitstreamError(f"unknown MISC generator id {data[pos]}")
    size = cls.settings_bytes
    if pos + 1 + size > len(data):
        raise BitstreamError(f"the {cls.name} generator's settings are truncated")
    return cls.from_settings(data[pos + 1 : pos + 1 + size]), pos + 1 + size


class Generator(ABC):
    name: ClassVar[str]
    #: Stable id stored in files; never reuse or change one.
    generator_id: ClassVar[int]
    option_specs: ClassVar[dict[str, Option]] = {}
    #: Size of the settings that follow the id in a file.
    settings_bytes: ClassVar[int]
    #: Whether two decodes on different kinds of device give the same pixels.
    exact_across_devices: ClassVar[bool] = True
    #: Whether its jobs should ask for a GPU (a CPU still decodes, slowly).
    needs_gpu: ClassVar[bool] = False
    #: What a reader of the results must know about this decoder (the study's notes say it).
    note: ClassVar[str] = ""
    #: A short form of the note for the method's label in plots and tables ("" when none is needed).
    tag: ClassVar[str] = ""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def to_bytes(self) -> bytes:
        settings = self.settings()
        assert len(settings) == self.settings_bytes
        return bytes([self.generator_id]) + settings

    @abstractmethod
    def settings(self) -> bytes:
        """The options the decoder needs, packed."""

    @classmethod
    @abstractmethod
    def from_settings(cls, data: bytes) -> "Generator":
        """The generator of :meth:`settings`; BitstreamError when they are not valid."""

    def weight_names(self) -> list[str]:
        return []

    def label(self) -> str:
        return self.name

    @abstractmethod
    def generate(self, base: np.ndarray, width: int, height: int, texts: Sequence[str], masks: np.ndarray | None,
                 seed: int, device: str) -> np.ndarray:
        """The (height, width, 3) uint8 output from the decoded base image."""


_RESAMPLING = ("bicubic", "lanczos", "bilinear", "nearest")


def resize(image: np.ndarray, width: int, height: int, method: str = "bicubic") -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    filters = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    return np.asarray(Image.fromarray(image).resize((width, height), filters[method]))


@register_generator
class Upscale(Generator):
    name = "upscale"
    generator_id = 1
    settings_bytes = 1
    note = "decoded by up-sampling the base image, without MISC's generative model: a lower bound"
    tag = "upscale, lower bound"
    option_specs = {"resample": Option("bicubic", "choice", choices=_RESAMPLING, help="up-sampling filter (PIL)")}

    def settings(self) -> bytes:
        return bytes([_RESAMPLING.index(self.options["resample"])])

    @classmethod
    def from_settings(cls, data: bytes) -> "Upscale":
        if data[0] >= len(_RESAMPLING):
            raise BitstreamError(f"unknown up-sampling filter {data[0]}")
        return cls({"resample": _RESAMPLING[data[0]]})

    def label(self) -> str:
        return "upscale, lower bound"

    def generate(self, base, width, height, texts, masks, seed, device):
        return resize(base, width, height, self.options["resample"])


_DIFFUSION_SETTINGS = struct.Struct(">BBBBeee")  # config, flags, steps, local steps, 3 x float16


@register_generator
class Diffusion(Generator):
    name = "diffusion"
    generator_id = 2
    settings_bytes = _DIFFUSION_SETTINGS.size + 4  # + the weights' digest
    exact_across_devices = False
    needs_gpu = True
    note = ("decoded by Stable Diffusion: the same file gives the same pixels on the same kind of device, "
            "not bit-exact across devices (a GPU and a CPU decode differ)")
    option_specs = {
        "config": Option("sd21-base", "choice", choices=("sd21-base", "tiny"),
                         help="networks and their weights: sd21-base (Stable Diffusion 2.1-base) or tiny (tests)"),
        "control": Option(False, "bool", help="also steer every step with the configuration's restoration "
                                              "ControlNet (weights misc-restoration-control)"),
        "steps": Option(40, "int", low=1, high=255, help="DDIM steps of the global pass (the paper: 40)"),
        "guidance": Option(7.0, "float", low=0, high=30, help="classifier-free guidance of the global pass"),
        "strength": Option(0.6, "float", low=0, high=1, help="how far the base image's latent is noised "
                                                             "(1: from pure noise, for use with control)"),
        "local_steps": Option(3, "int", low=0, high=255, help="DDIM steps of each object's local pass "
                                                              "(the paper: 3; 0: no local passes)"),
        "local_guidance": Option(3.5, "float", low=0, high=30, help="guidance of the local passes"),
        "color_fix": Option(True, "bool", help="keep the base image's low frequencies (DiffBIR's colour fix)"),
    }

    def __init__(self, options, digest: bytes | None = None) -> None:
        super().__init__(options)
        self._digest = digest

    def _config(self):
        from .diffusion import CONFIGS

        return CONFIGS[self.options["config"]]

    def weight_names(self) -> list[str]:
        from .diffusion import weight_names

        return weight_names(self._config(), self.options["control"])

    def settings(self) -> bytes:
        from .diffusion import CONFIG_IDS, weights_digest

        o = self.options
        head = _DIFFUSION_SETTINGS.pack(CONFIG_IDS.index(o["config"]), int(o["control"]) | int(o["color_fix"]) << 1,
                                        o["steps"], o["local_steps"], o["guidance"], o["strength"],
                                        o["local_guidance"])
        return head + weights_digest(self._config(), o["control"])

    @classmethod
    def from_settings(cls, data: bytes) -> "Diffusion":
        import math

        from .diffusion import CONFIG_IDS

        config, flags, steps, local_steps, guidance, strength, local_guidance = \
            _DIFFUSION_SETTINGS.unpack(data[: _DIFFUSION_SETTINGS.size])
        if config >= len(CONFIG_IDS):
            raise BitstreamError(f"unknown diffusion configuration id {config}")
        if flags > 3:
            raise BitstreamError(f"unknown diffusion flags {flags:#x}")
        if steps < 1:
            raise BitstreamError("the diffusion pass has 0 steps")
        for value, low, high in ((guidance, 0, 30), (strength, 0, 1), (local_guidance, 0, 30)):
            if not math.isfinite(value) or not low <= value <= high:
                raise BitstreamError(f"diffusion setting {value} outside [{low}, {high}]")
        options = {"config": CONFIG_IDS[config], "control": bool(flags & 1), "color_fix": bool(flags & 2),
                   "steps": steps, "local_steps": local_steps, "guidance": guidance, "strength": strength,
                   "local_guidance": local_guidance}
        return cls(options, digest=data[_DIFFUSION_SETTINGS.size :])

    def label(self) -> str:
        return f"diffusion {self.options['config']}"

    def generate(self, base, width, height, texts, masks, seed, device):
        from .diffusion import Schedule, generate, weights_digest

        config = self._config()
        if self._digest is not None and weights_digest(config, self.options["control"]) != self._digest:
            names = ", ".join(self.weight_names())
            raise BitstreamError(f"the diffusion weights here ({names}) are not the ones the file was made for")
        o = self.options
        schedule = Schedule(o["steps"], o["guidance"], o["strength"], o["local_steps"], o["local_guidance"],
                            o["color_fix"])
        guide = resize(base, width, height)
        local_masks = masks if o["local_steps"] > 0 else None
        local_texts = texts if local_masks is not None else texts[-1:]
        import torch

        from ..compressai_runtime import torch_threads

        if str(device).startswith("cuda"):
            torch.backends.cudnn.benchmark = False  # one convolution algorithm: the same pixels every run
            torch.backends.cudnn.deterministic = True
        # One CPU thread: the kernels' rounding depends on the thread count, and the sampler amplifies it.
        with torch_threads(1 if device == "cpu" else torch.get_num_threads()):
            return generate(config, o["control"], schedule, guide, local_texts, local_masks, seed, device)

