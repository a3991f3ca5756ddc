"""CompressAI models at run time: loading their weights, coding a latent, checking a decode.

The codecs of :mod:`ulbc.codecs.compressai_zoo` call CompressAI's own ``compress`` and
``decompress`` so that their strings are CompressAI's, with four changes around them:

- **The entropy side runs on the CPU, on one thread.** Only the analysis transform ``g_a`` runs on
  the requested device and thread count (the codecs decode on the CPU, one thread, synthesis
  included). The hyper-decoder, the context model and the CDF lookups then compute the same floats
  in the encoder and in every decoder on the same platform, whatever the device, thread count or
  batch (CompressAI issues #279/#309/#320: a scale one ulp away picks another CDF and the rest of
  the image decodes to garbage).
- **Each item's latent is coded on its own** (batch 1), as the decoder will see it; only ``g_a``
  runs on a batch.
- **A checksum of the quantised latent** (the input of ``g_s``) is made by the encoder, which
  entropy-decodes its own strings, and checked by the decoder: a decoder out of step with the
  encoder fails with an error instead of returning corrupted blocks.
- **CompressAI's rANS decoder does not check where its input ends**, so the strings are handed to
  it with a zero tail sized by the symbol count; a forged string then reads zeros, not memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .codecs.compressai_zoo import ARCHITECTURES, FACTORIZED  # noqa: F401 - the bitstream's architecture indices
from .errors import BitstreamError, ConfigError

#: Zero-padding of the input to a multiple of this, centred, as CompressAI's eval_model does.
PAD_MULTIPLE = 64
CHECKSUM_BYTES = 4
#: Bytes of zero tail per symbol handed to the rANS decoder (it reads at most a word per symbol
#: outside bypass runs; see the module docstring).
_TAIL_BYTES_PER_SYMBOL = 16
_TAIL_MIN_BYTES = 64


def latent_downsampling(architecture: str) -> int:
    """Pixels per position of the last latent CompressAI reports the shape of (y or z)."""
    return 16 if architecture in FACTORIZED else 64


def padded_size(height: int, width: int) -> tuple[int, int]:
    up = lambda v: (v + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE  # noqa: E731
    return up(height), up(width)


def latent_shape(architecture: str, height: int, width: int) -> tuple[int, int]:
    """The ``shape`` CompressAI's compress returns for an image of this size (padded to 64)."""
    ph, pw = padded_size(height, width)
    step = latent_downsampling(architecture)
    return ph // step, pw // step


def _model_class(architecture: str):
    from compressai.models import (Cheng2020Anchor, Cheng2020Attention, FactorizedPrior, FactorizedPriorReLU,
                                   JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior, ScaleHyperprior)

    return {
        "bmshj2018-factorized": FactorizedPrior,
        "bmshj2018-factorized-relu": FactorizedPriorReLU,
        "bmshj2018-hyperprior": ScaleHyperprior,
        "mbt2018-mean": MeanScaleHyperprior,
        "mbt2018": JointAutoregressiveHierarchicalPriors,
        "cheng2020-anchor": Cheng2020Anchor,
        "cheng2020-attn": Cheng2020Attention,
    }[architecture]


# -- threads --------------------------------------------------------------------------------------------
_default_threads: list[int] = []


def default_threads() -> int:
    """torch's thread count before ulbc changed it (the synthesis uses it unless told otherwise)."""
    import torch

    if not _default_threads:
        _default_threads.append(torch.get_num_threads())
    return _default_threads[0]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    default_threads()
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# -- loading ----------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A CompressAI model on the CPU (eval mode) and its transforms on other devices."""

    architecture: str
    net: Any
    sha256: str
    path: Path
    _on_device: dict[tuple[str, str], Any] = field(default_factory=dict)

    def transform(self, which: str, device: str):
        """``g_a`` or ``g_s`` on ``device`` (the CPU one itself, else a copy made once)."""
        module = getattr(self.net, which)
        if device == "cpu":
            return module
        key = (which, device)
        if key not in self._on_device:
            import copy

            self._on_device[key] = copy.deepcopy(module).to(device).eval()
        return self._on_device[key]


_models: dict[tuple[str, str, str, bool], LoadedModel] = {}
_MODEL_CACHE_SIZE = 4


def _read_checkpoint(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file is one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: cannot be read as a PyTorch checkpoint ({first})") from None


def state_dict_of(checkpoint: Any, path: Path) -> dict:
    """The model's state dict inside a checkpoint, as CompressAI's eval_model unwraps it
    (``network``, ``state_dict`` or ``model_state_dict``), with ``module.`` prefixes (DataParallel)
    stripped and old key names renamed (compressai.zoo.load_pretrained)."""
    import torch
    from compressai.zoo.pretrained import load_pretrained

    state = checkpoint
    if isinstance(state, dict):
        for key in ("network", "state_dict", "model_state_dict"):
            if key in checkpoint:
                state = checkpoint[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no model state dict (looked at the file and its 'network', "
                          f"'state_dict' and 'model_state_dict' entries)")
    return load_pretrained(state)


def load_model(architecture: str, path: Path, sha256: str, *, update: bool) -> LoadedModel:
    """Build ``architecture`` from the weights in ``path`` (cached per process).

    ``update``: recompute the entropy models' CDFs (``update(force=True)``), as CompressAI's
    evaluation does for training checkpoints; the zoo's files carry their CDFs and are used as
    they are, as ``compressai.zoo`` does.
    """
    import torch

    key = (architecture, str(path), sha256, update)
    if key in _models:
        return _models[key]
    state = state_dict_of(_read_checkpoint(path), path)
    cls = _model_class(architecture)
    try:
        net = cls.from_state_dict(state)
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: is not a {architecture} checkpoint ({type(exc).__name__}: {first})") from None
    net = net.eval()
    with torch.no_grad():
        if update:
            net.update(force=True)
        context = getattr(net, "context_prediction", None)
        if context is not None:
            # MaskedConv2d masks its weight in place on its first forward; done once here, every
            # process codes with the same (masked) weights whatever it ran before.
            context.weight.data *= context.mask
    for module in net.modules():
        if hasattr(module, "_quantized_cdf") and module._quantized_cdf.numel() == 0:
            raise ConfigError(f"{path}: the {architecture} checkpoint has no entropy-coder CDFs "
                              f"(a training checkpoint: give it as checkpoint:, which updates them)")
    if len(_models) >= _MODEL_CACHE_SIZE:
        _models.pop(next(iter(_models)))
    model = LoadedModel(architecture, net, sha256, path)
    _models[key] = model
    return model


# -- coding -----------------------------------------------------------------------------------------------
def _given(value):
    """Stands in for ``g_a``: returns a latent computed beforehand (on a batch, on a device)."""
    import torch

    class Given(torch.nn.Module):
        def forward(self, x):  # noqa: ARG002 - the input is the image the latent came from
            return value.clone()

    return Given()


def _synthesis_bridge(model: LoadedModel, device: str, threads: int, captured: list):
    """Stands in for ``g_s``: records its input (the quantised latent, on the CPU), runs the real
    ``g_s`` on ``device`` with ``threads`` threads and hands back a CPU tensor."""
    import torch

    g_s = model.transform("g_s", device)

    class Bridge(torch.nn.Module):
        def forward(self, y_hat):
            captured.append(y_hat.detach().clone())
            with torch_threads(threads):
                return g_s(y_hat.to(device)).to("cpu", torch.float32)

    return Bridge()


def _capture(captured: list):
    """Stands in for ``g_s`` when only its input is wanted (the encoder's own entropy decode)."""
    import torch

    class Capture(torch.nn.Module):
        def forward(self, y_hat):
            captured.append(y_hat.detach().clone())
            return torch.zeros(y_hat.shape[0], 3, 1, 1)

    return Capture()


@contextlib.contextmanager
def _swapped(net, **modules) -> Iterator[None]:
    saved = {name: getattr(net, name) for name in modules}
    try:
        for name, module in modules.items():
            setattr(net, name, module)
        yield
    finally:
        for name, module in saved.items():
            setattr(net, name, module)


def latent_checksum(y_hat) -> bytes:
    """4-byte BLAKE2b of the quantised latent's float32 values (+0.0 and -0.0 alike)."""
    import torch

    values = (y_hat.detach().to("cpu", torch.float32).contiguous() + 0.0).numpy()
    return hashlib.blake2b(values.tobytes(), digest_size=CHECKSUM_BYTES).digest()


def image_tensor(images: list[np.ndarray]):
    """(B, 3, H, W) float32 in [0, 1] from uint8 RGB arrays (torchvision's ToTensor)."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float().div(255)


def _padding(height: int, width: int):
    from compressai.ops import compute_padding

    return compute_padding(height, width, min_div=PAD_MULTIPLE)


@dataclass
class CodedLatent:
    strings: list[bytes]
    checksum: bytes
    estimated_bits: float


def encode_images(model: LoadedModel, images: list[np.ndarray], *, device: str, threads: int) -> list[CodedLatent]:
    """Code same-size images: ``g_a`` on the batch, then each latent alone on the CPU."""
    import torch
    import torch.nn.functional as F

    height, width = images[0].shape[:2]
    pad, _ = _padding(height, width)
    x = F.pad(image_tensor(images), pad, mode="constant", value=0)
    net = model.net
    expected = latent_shape(model.architecture, height, width)
    results = []
    with torch.no_grad():
        with torch_threads(threads):
            y = model.transform("g_a", device)(x.to(device)).to("cpu", torch.float32)
        for index in range(len(images)):
            item = x[index : index + 1]
            y_item = y[index : index + 1]
            with torch_threads(1):
                with _swapped(net, g_a=_given(y_item)):
                    out = net.compress(item)
                strings = [s[0] for s in out["strings"]]
                if tuple(out["shape"]) != expected:
                    raise RuntimeError(f"latent shape {tuple(out['shape'])}, expected {expected}")
                captured: list = []
                with _swapped(net, g_s=_capture(captured)):
                    net.decompress([[s] for s in _guarded(model, strings, expected)], expected)
                with _swapped(net, g_a=_given(y_item), g_s=torch.nn.Identity()):
                    likelihoods = net(item)["likelihoods"]
            bits = sum(float(torch.log(lk.double()).sum()) for lk in likelihoods.values()) / -math.log(2)
            results.append(CodedLatent(strings, latent_checksum(captured[-1]), bits))
    return results


def _symbol_counts(model: LoadedModel, shape: tuple[int, int]) -> list[int]:
    """Symbols in each string: y's, then z's (of ``shape``, the last latent's size)."""
    net = model.net
    h, w = shape
    if model.architecture in FACTORIZED:
        return [net.entropy_bottleneck.channels * h * w]
    return [int(net.M) * h * 4 * w * 4, net.entropy_bottleneck.channels * h * w]


def _guarded(model: LoadedModel, strings: list[bytes], shape: tuple[int, int]) -> list[bytes]:
    tails = [max(_TAIL_MIN_BYTES, _TAIL_BYTES_PER_SYMBOL * n) for n in _symbol_counts(model, shape)]
    return [s + bytes(tail) for s, tail in zip(strings, tails)]


def decode_image(model: LoadedModel, strings: list[bytes], checksum: bytes, width: int, height: int, *,
                 device: str, threads: int) -> np.ndarray:
    """Decode CompressAI strings to an (H, W, 3) uint8 image; BitstreamError when the quantised
    latent does not match the encoder's checksum."""
    import torch
    import torch.nn.functional as F

    shape = latent_shape(model.architecture, height, width)
    _, unpad = _padding(height, width)
    net = model.net
    captured: list = []
    with torch.no_grad(), torch_threads(1):
        with _swapped(net, g_s=_synthesis_bridge(model, device, threads, captured)):
            out = net.decompress([[s] for s in _guarded(model, strings, shape)], shape)
    if not captured or latent_checksum(captured[-1]) != checksum:
        raise BitstreamError(
            f"the decoded latent does not match the encoder's checksum: this decoder's {model.architecture} "
            f"entropy model is out of step with the encoder's (other weights, CompressAI or torch version, "
            f"or floating-point platform); refusing to return corrupted pixels")
    x_hat = F.pad(out["x_hat"], unpad)
    pixels = (x_hat[0] * 255).clamp(0, 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().numpy()
