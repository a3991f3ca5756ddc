"""The one interface every ulbc method implements, image codecs now and video codecs later."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from .. import bitstream, limits
from ..errors import BitstreamError, ConfigError, EncodeError, InputError, UlbcError
from ..options import OPTION_KINDS, Option, check_options, format_rate  # noqa: F401 - re-exported

#: Images a GPU encodes together when a codec's ``batch_size`` option is ``auto``.
AUTO_GPU_BATCH = 8

@dataclass
class PayloadResult:
    """What a codec's encoder produced for one image, before the container is put around it."""

    params: bytes
    payload: bytes
    #: Encoder-side facts worth keeping with the result (JSON-serialisable): training time, the rate
    #: the optimiser estimated, and so on.
    info: dict[str, Any] = field(default_factory=dict)
    #: The encoder's own reconstruction (H, W, 3) uint8, when it computes one.
    reconstruction: np.ndarray | None = None


@dataclass
class EncodeResult:
    data: bytes  # the complete bitstream file
    info: dict[str, Any]
    reconstruction: np.ndarray | None


#: Training steps per item from which an overfitted or INR codec's run counts as paper-like (the
#: papers train 10^4-10^5 per image or clip); below it the method's label says "demo".
PAPER_BUDGET_ITERATIONS = 10_000


def training_budget_tags(iterations: int) -> tuple[str, ...]:
    """Label tags of a per-item trained codec: its budget, marked demo below the paper-like one."""
    return (f"{iterations} it, demo",) if iterations < PAPER_BUDGET_ITERATIONS else (f"{iterations} it",)


class Codec(ABC):
    """A compression method: image in, self-describing bitstream out, and back.

    Subclasses set the class attributes and implement :meth:`encode_payload` / :meth:`decode_payload`.
    Everything the decoder needs beyond the payload goes in the returned ``params`` bytes: decoding
    reads the bitstream file and nothing else.
    """

    #: Name used in the config and on the command line.
    name: ClassVar[str]
    #: Stable one-byte id stored in every bitstream; never reuse or change one.
    codec_id: ClassVar[int]
    #: Name of the rate knob (quality, qp, distance, ratio, crf, lambda).
    rate_param: ClassVar[str]
    #: Default rate grid, 5-7 points spanning roughly 0.1-2 bpp on Kodak, lowest rate first.
    default_rates: ClassVar[tuple[float, ...]]
    #: Inclusive range of valid rate values.
    rate_range: ClassVar[tuple[float, float]]
    #: Whether the method benefits from a GPU (the workflow then requests one).
    uses_gpu: ClassVar[bool] = False
    #: Whether its decoder runs on the GPU too when one is asked for (False: always on the CPU).
    gpu_decoder: ClassVar[bool] = True
    #: Whether several items may decode at once in threads of one process (a shard's decode job then
    #: uses all its cores); such decoders release the GIL and share no mutable state.
    threadsafe_decoder: ClassVar[bool] = False
    #: "image" now; "video" for clip codecs.
    media: ClassVar[str] = "image"
    #: Who each decode is for: "human" (viewing) always; "machine" where the file also names a
    #: network that adapts the decoded image for a vision model (:meth:`adapt_payload`).
    targets: ClassVar[tuple[str, ...]] = ("human",)
    #: Smallest (width, height) the codec accepts.
    min_size: ClassVar[tuple[int, int]] = (1, 1)
    #: Floors on the per-job resources (MB, minutes) that the codec needs at its default settings; a
    #: method's own ``resources`` still override them.
    job_mem_mb: ClassVar[int] = 0
    job_runtime: ClassVar[int] = 0
    #: Decoder working memory per decoded pixel beyond its uint8 output, for the size check made
    #: before decoding (:mod:`ulbc.limits`): library buffers and copies for the classical codecs.
    decode_bytes_per_pixel: ClassVar[float] = 16
    #: Whether the rate knob takes whole numbers only (a quality or QP); 12.0 is whole, 12.5 is not.
    integer_rates: ClassVar[bool] = False
    #: The encoder options, each declared once: default, accepted values, help. A config may
    #: override them per method; every given value is checked against its declaration.
    option_specs: ClassVar[dict[str, Option]] = {}
    #: The defaults of :attr:`option_specs` (derived from it, never declared on its own).
    option_defaults: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""
    #: Whether :meth:`encode_payload_batch` takes the items' names (``names=``): for encoders that
    #: look an item up by name, such as MISC's table of captions.
    wants_item_names: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "option_defaults" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: declare options in option_specs; option_defaults is derived from it")
        cls.option_defaults = {key: spec.default for key, spec in cls.option_specs.items()}

    def __init__(self, **options: Any) -> None:
        self.options = check_options(f"codec {self.name!r}", self.option_specs, options)

    # -- description -------------------------------------------------------------------------------
    @classmethod
    def source_modules(cls) -> tuple[str, ...]:
        """The modules whose code makes this codec's bitstreams (with what they import): its results'
        code digest (:func:`ulbc.provenance.code_digest`) hashes them."""
        return (cls.__module__,)

    @classmethod
    def availability(cls) -> str | None:
        """``None`` when usable here, else a one-line reason (missing tool or library)."""
        return None

    def version(self) -> str:
        """Version string of the underlying library or tool, recorded with every result row."""
        return "unknown"

    def label_tags(self) -> tuple[str, ...]:
        """What changes the meaning of this method's results, shown beside its name in plots and
        tables: a demo-sized training budget, intra or inter coding, the chroma format."""
        return ()

    def job_needs(self) -> tuple[bool, int, int]:
        """(GPU wanted, memory floor in MB, runtime floor in minutes) of this codec's jobs with its
        options; the class attributes unless the options change them."""
        return self.uses_gpu, self.job_mem_mb, self.job_runtime

    def weight_names(self, rate: float) -> list[str]:
        """Weights-registry files (:mod:`ulbc.weights`) the codec loads at ``rate``: the study
        verifies (or fetches) them before its jobs run."""
        return []

    def check_resources(self, rate: float) -> None:
        """ConfigError (one line) when a file the encoder needs at ``rate`` cannot be there: a
        checkpoint that does not exist. Weights-registry files are checked by the study."""

    def checkpoint_files(self, rate: float) -> list[str]:
        """Other local files the encoder reads at ``rate`` (a user's checkpoint): inputs of the
        encode jobs, so that a changed file re-encodes."""
        return []

    def rate_label(self, rate: float) -> str:
        return f"{self.rate_param}{format_rate(rate)}"

    def check_rate(self, rate: float) -> float:
        lo, hi = self.rate_range
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not lo <= rate <= hi:
            raise ConfigError(f"codec {self.name!r}: {self.rate_param}={rate!r} outside [{lo}, {hi}]")
        if self.integer_rates and not float(rate).is_integer():
            # The encoder takes whole numbers: 12.2 and 12.7 would be two rate points of one stream.
            raise ConfigError(f"codec {self.name!r}: {self.rate_param} must be a whole number, got {rate!r}")
        return rate

    # -- coding --------------------------------------------------------------------------------------
    @abstractmethod
    def encode_payload(self, image: np.ndarray, rate: float, *, device: str, seed: int) -> tuple[bytes, bytes]:
        """Encode an (H, W, 3) uint8 RGB image; return ``(params, payload)``."""

    @abstractmethod
    def decode_payload(self, params: bytes, payload: bytes, width: int, height: int, *, device: str) -> np.ndarray:
        """Decode back to an (H, W, 3) uint8 RGB array."""

    def batch_size(self, device: str = "cpu") -> int:
        """How many same-size images the encoder takes together on ``device`` (1: one at a time):
        the codec's ``batch_size`` option where it declares one, whose ``auto`` is
        :data:`AUTO_GPU_BATCH` on a GPU and 1 on the CPU (where one image at a time is fastest)."""
        batch = self.options.get("batch_size", 1)
        if batch == "auto":
            return AUTO_GPU_BATCH if str(device).startswith("cuda") else 1
        return int(batch)

    def encode_payload_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str,
                             seeds: Sequence[int]) -> list[PayloadResult]:
        """Encode same-size images together; the default encodes them one by one."""
        return [PayloadResult(*self.encode_payload(img, rate, device=device, seed=s)) for img, s in zip(images, seeds)]

    def adapt_payload(self, params: bytes, payload: bytes, image: np.ndarray) -> np.ndarray:
        """The machine decode from the human one (codecs whose ``targets`` include "machine")."""
        raise BitstreamError(f"{self.name} has no decode for machines (only the <base>+adapter codecs do)")

    def bitstream_stats(self, params: bytes, payload: bytes, width: int, height: int) -> dict[str, float]:
        """Facts read from a bitstream (rate split, decoder MAC/pixel); empty when the codec has none."""
        return {}

    def _check_image(self, image: np.ndarray, name: str) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"{name}: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        min_w, min_h = self.min_size
        if width < min_w or height < min_h:
            raise InputError(f"{name}: {width}x{height} is smaller than {self.name}'s minimum {min_w}x{min_h}")

    def encode_batch(self, images: Sequence[np.ndarray], rate: float, *, device: str = "cpu",
                     seeds: Sequence[int], names: Sequence[str]) -> list[EncodeResult]:
        """Encode images of one size into complete bitstreams; an error names the first image."""
        for image, name in zip(images, names):
            self._check_image(image, name)
        if len({img.shape for img in images}) > 1:
            raise InputError(f"{names[0]}: a batch must hold images of one size")
        rate = self.check_rate(rate)
        label = names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more in its batch)"
        try:
            if self.wants_item_names:
                results = self.encode_payload_batch(images, rate, device=device, seeds=seeds, names=names)
            else:
                results = self.encode_payload_batch(images, rate, device=device, seeds=seeds)
        except UlbcError as exc:
            raise type(exc)(f"{label}: {exc}") from None
        except (ValueError, OSError, RuntimeError, MemoryError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EncodeError(f"{label}: {self.name} encoder failed ({first})") from None
        height, width = images[0].shape[:2]
        return [EncodeResult(bitstream.Container(self.codec_id, width, height, r.params, r.payload).to_bytes(),
                             r.info, r.reconstruction) for r in results]

    def encode_result(self, image: np.ndarray, rate: float, *, device: str = "cpu", seed: int = 0,
                      name: str = "<image>") -> EncodeResult:
        return self.encode_batch([image], rate, device=device, seeds=[seed], names=[name])[0]

    def encode(self, image: np.ndarray, rate: float, *, device: str = "cpu", seed: int = 0, name: str = "<image>") -> bytes:
        """Encode ``image`` at ``rate`` into a complete ulbc bitstream (container included)."""
        return self.encode_result(image, rate, device=device, seed=seed, name=name).data


#: What a codec's decoder may raise on damaged input besides BitstreamError; reported as one line.
DECODER_FAILURES = (ValueError, OSError, RuntimeError, EOFError, IndexError, KeyError, OverflowError, MemoryError)


def decode_container(container: bitstream.Container, codec: Codec, *, device: str = "cpu", name: str = "<bitstream>") -> np.ndarray:
    """Run ``codec``'s decoder on a parsed container and check what it returns: an (H, W, 3) image,
    or (T, H, W, 3) frames for a video codec."""
    if isinstance(codec, VideoCodec):
        return codec.decode_clip_container(container, device=device, name=name)
    try:
        limits.check_claim(container.width, container.height, working_bytes_per_pixel=codec.decode_bytes_per_pixel)
        image = codec.decode_payload(container.params, container.payload, container.width, container.height, device=device)
    except BitstreamError as exc:
        raise BitstreamError(f"{name}: {exc}") from None
    except DECODER_FAILURES as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BitstreamError(f"{name}: {codec.name} decoder failed ({first})") from None
    expected = (container.height, container.width, 3)
    if image.shape != expected or image.dtype != np.uint8:
        raise BitstreamError(
            f"{name}: {codec.name} decoded {image.dtype} {image.shape}, header says {expected}"
        )
    return image


def adapt_container(container: bitstream.Container, codec: Codec, image: np.ndarray, *,
                    name: str = "<bitstream>") -> np.ndarray:
    """The machine decode of a file from its human decode ``image``, checked like the decode."""
    if "machine" not in codec.targets:
        raise BitstreamError(f"{name}: {codec.name} has no decode for machines (only the <base>+adapter codecs do)")
    try:
        adapted = codec.adapt_payload(container.params, container.payload, image)
    except (BitstreamError, InputError) as exc:
        raise BitstreamError(f"{name}: {exc}") from None
    except DECODER_FAILURES as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BitstreamError(f"{name}: {codec.name} machine decode failed ({first})") from None
    if adapted.shape != image.shape or adapted.dtype != np.uint8:
        raise BitstreamError(f"{name}: {codec.name}'s adapter gave {adapted.dtype} {adapted.shape}, "
                             f"expected {image.shape}")
    return adapted


def torch_and_constriction_missing() -> str | None:
    """Availability of the codecs built on PyTorch and constriction: None, or why not."""
    try:
        import constriction  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return f"needs torch and constriction ({exc})"
    return None


class VideoCodec(Codec):
    """A codec whose item is a clip: (T, H, W, 3) uint8 RGB frames in, one bitstream out.

    Subclasses implement :meth:`encode_clip_payload` and :meth:`decode_clip_payload`. The base class
    stores the frame count (a varint) in front of the codec's own parameters, so every video
    bitstream says how many frames it holds; ``bpp = 8 * bytes / (frames * H * W)``. A single image
    is coded as a one-frame clip, so video codecs also run on image datasets.
    """

    media = "video"
    #: Frame rate handed to encoders that need one (it does not change the bits per pixel).
    nominal_fps: ClassVar[int] = 25

    @abstractmethod
    def encode_clip_payload(self, frames: np.ndarray, rate: float, *, device: str, seed: int) -> PayloadResult:
        """Encode (T, H, W, 3) uint8 frames; return params, payload, encoder info and (optionally) the
        encoder's own reconstruction (T, H, W, 3)."""

    @abstractmethod
    def decode_clip_payload(self, params: bytes, payload: bytes, width: int, height: int, n_frames: int, *,
                            device: str) -> np.ndarray:
        """Decode back to (n_frames, H, W, 3) uint8 frames."""

    # Images are one-frame clips.
    def encode_payload(self, image, rate, *, device, seed):
        result = self.encode_clip_payload(image[None], rate, device=device, seed=seed)
        return result.params, result.payload

    def decode_payload(self, params, payload, width, height, *, device):
        return self.decode_clip_payload(params, payload, width, height, 1, device=device)[0]

    def _check_clip(self, frames: np.ndarray, name: str) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise InputError(f"{name}: expected (T, H, W, 3) uint8 RGB frames, got {frames.dtype} {frames.shape}")
        if frames.shape[0] < 1:
            raise InputError(f"{name}: the clip has no frames")
        self._check_image(frames[0], name)

    def encode_clip_result(self, frames: np.ndarray, rate: float, *, device: str = "cpu", seed: int = 0,
                           name: str = "<clip>") -> EncodeResult:
        """Encode a clip into a complete bitstream (container included)."""
        self._check_clip(frames, name)
        rate = self.check_rate(rate)
        try:
            result = self.encode_clip_payload(np.ascontiguousarray(frames), rate, device=device, seed=seed)
        except UlbcError as exc:
            raise type(exc)(f"{name}: {exc}") from None
        except (ValueError, OSError, RuntimeError, MemoryError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EncodeError(f"{name}: {self.name} encoder failed ({first})") from None
        n_frames, height, width = frames.shape[:3]
        params = bitstream.encode_varint(n_frames) + result.params
        data = bitstream.Container(self.codec_id, width, height, params, result.payload).to_bytes()
        return EncodeResult(data, result.info, result.reconstruction)

    def encode_clip(self, frames: np.ndarray, rate: float, *, device: str = "cpu", seed: int = 0,
                    name: str = "<clip>") -> bytes:
        return self.encode_clip_result(frames, rate, device=device, seed=seed, name=name).data

    def encode_batch(self, images, rate, *, device="cpu", seeds, names):
        # An image handed to a video codec is a one-frame clip (with the frame count in front).
        return [self.encode_clip_result(img[None] if img.ndim == 3 else img, rate, device=device, seed=s, name=n)
                for img, s, n in zip(images, seeds, names)]

    def decode_clip_container(self, container: bitstream.Container, *, device: str = "cpu",
                              name: str = "<bitstream>") -> np.ndarray:
        try:
            n_frames, pos = bitstream.decode_varint(container.params, 0, "frame count")
        except BitstreamError as exc:
            raise BitstreamError(f"{name}: {exc}") from None
        if n_frames < 1:
            raise BitstreamError(f"{name}: the bitstream declares {n_frames} frames")
        try:
            limits.check_claim(container.width, container.height, n_frames,
                               working_bytes_per_pixel=self.decode_bytes_per_pixel, video=True)
            frames = self.decode_clip_payload(container.params[pos:], container.payload, container.width,
                                              container.height, n_frames, device=device)
        except BitstreamError as exc:
            raise BitstreamError(f"{name}: {exc}") from None
        except DECODER_FAILURES as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BitstreamError(f"{name}: {self.name} decoder failed ({first})") from None
        expected = (n_frames, container.height, container.width, 3)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise BitstreamError(f"{name}: {self.name} decoded {frames.dtype} {frames.shape}, header says {expected}")
        return frames
