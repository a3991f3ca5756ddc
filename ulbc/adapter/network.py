"""The dynamic adaptation network g_t of Zhu et al. (ICIP 2024), its checkpoint file and its use.

One bitstream of a learned codec, two decodes: x̂ for viewing and x̄ = g_t(x̂) for a machine (Mask
R-CNN in the paper). g_t = 5×5 conv → RB → RB → AB → RB → RB → 5×5 conv, plus the input (a global
skip), where RB is a 1×1–ReLU–3×3–ReLU–1×1 bottleneck with its own skip and AB is Cheng et al.
(2020)'s simplified attention block (CompressAI's ``AttentionBlock``, reused as it is: trunk of three
residual units, mask branch of three + 1×1 + sigmoid, the two multiplied, plus the input).

The paper does not give the width; :data:`DEFAULT_WIDTH` (64 channels, 0.15 M parameters) keeps
the network a small fraction of a decoder's cost at full resolution. The last convolution starts at
zero, so a fresh g_t is the identity: training starts from "no adaptation", the paper's ablation.

Checkpoint (``torch.save``, read with ``weights_only=True``)::

    format        "ulbc-dynamic-adapter"
    header        JSON text: format_version, adapter {channels, width}, base {architecture, quality,
                  weights, sha256}, task {architecture, weights, sha256, settings}, lambda_h,
                  lambda_m, steps_done, the training settings, ulbc_version
    adapter       the network's state dict
    optimizer     Adam's state (resumption); aux_optimizer with a fine-tuned codec
    rng           {"torch": CPU generator state, "cuda": [per-device states]}
    state_dict    only with a fine-tuned codec: its CompressAI state dict (the key CompressAI's
                  training script uses, so the file also serves as the codec's ``checkpoint:``)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from compressai.layers import AttentionBlock
from torch import nn

from ..errors import InputError

FORMAT = "ulbc-dynamic-adapter"
FORMAT_VERSION = 1
DEFAULT_WIDTH = 64
#: Residual blocks before and after the attention block.
BLOCKS_AROUND_ATTENTION = 2


class ResidualBottleneck(nn.Module):
    """1×1 (halving the channels) – ReLU – 3×3 – ReLU – 1×1 (back), plus the input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        inner = width // 2
        self.body = nn.Sequential(
            nn.Conv2d(width, inner, 1), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, padding=1), nn.ReLU(),
            nn.Conv2d(inner, width, 1))

    def forward(self, x):
        return x + self.body(x)


class DynamicAdapter(nn.Module):
    """g_t: image (B, C, H, W) in [0, 1] → adapted image of the same shape (identity when fresh)."""

    def __init__(self, channels: int = 3, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        if channels < 1 or width < 2 or width % 2:
            raise ValueError(f"adapter: needs channels >= 1 and an even width >= 2, got {channels} and {width}")
        self.channels, self.width = channels, width
        self.head = nn.Conv2d(channels, width, 5, padding=2)
        self.blocks = nn.Sequential(
            *(ResidualBottleneck(width) for _ in range(BLOCKS_AROUND_ATTENTION)),
            AttentionBlock(width),
            *(ResidualBottleneck(width) for _ in range(BLOCKS_AROUND_ATTENTION)))
        self.tail = nn.Conv2d(width, channels, 5, padding=2)
        # Zero output layer: the network starts as the identity (the no-adaptation baseline).
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        return x + self.tail(self.blocks(self.head(x)))


# -- checkpoint ---------------------------------------------------------------------------------------
@dataclass
class LoadedAdapter:
    """A checkpoint read and checked: its header, the network (CPU, eval mode) and its raw content."""

    path: Path
    header: dict[str, Any]
    network: Any
    content: dict[str, Any]


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_header(**fields: Any) -> dict[str, Any]:
    """The header with its format fields; everything else is the caller's (JSON-able values)."""
    from .. import __version__

    return {"format_version": FORMAT_VERSION, "ulbc_version": __version__, **fields}


def checkpoint_content(header: dict[str, Any], adapter, **tensors: Any) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes: the format tag, the header as JSON text, the adapter's
    state and the other entries (optimiser, RNG, codec states) as given."""
    return {"format": FORMAT, "header": json.dumps(header, sort_keys=True),
            "adapter": {k: v.detach().cpu() for k, v in adapter.state_dict().items()}, **tensors}


def save_checkpoint(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write atomically: a reader sees the previous checkpoint or this one, never a part."""
    from ..fsutil import atomic_path

    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checked content of an adapter checkpoint (header parsed); one-line InputError otherwise."""
    path = Path(path)
    what = "a ulbc dynamic-adapter checkpoint"
    if not path.is_file():
        raise InputError(f"{path}: no such file ({what})")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports unreadable files through many types
        raise InputError(f"{path}: not {what} ({_one_line(exc)})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise InputError(f"{path}: not {what} (format {found!r}, expected {FORMAT!r})")
    try:
        header = json.loads(content["header"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: damaged {what} (its header is missing or not JSON)") from None
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise InputError(f"{path}: adapter checkpoint format version {version!r} is not supported "
                         f"(this ulbc reads {FORMAT_VERSION})")
    adapter = header.get("adapter")
    if not (isinstance(adapter, dict) and isinstance(adapter.get("channels"), int)
            and isinstance(adapter.get("width"), int)):
        raise InputError(f"{path}: damaged {what} (the header has no adapter channels and width)")
    state = content.get("adapter")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: damaged {what} (no adapter state dict)")
    content["header"] = header
    return content


def load_adapter(path: str | os.PathLike) -> LoadedAdapter:
    """The adapter of a checkpoint, on the CPU in eval mode; InputError (one line) for a damaged or
    mismatched file."""
    path = Path(path)
    content = read_checkpoint(path)
    header = content["header"]
    spec = header["adapter"]
    try:
        network = DynamicAdapter(spec["channels"], spec["width"])
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    load_adapter_state(network, content["adapter"], path)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return LoadedAdapter(path, header, network, content)


def load_adapter_state(network, state: dict, path: Path) -> None:
    """Load ``state`` into ``network``: exactly its keys and shapes, else InputError naming ``path``."""
    own = network.state_dict()
    missing = [key for key in own if key not in state]
    extra = [key for key in state if key not in own]
    if missing or extra:
        problem = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise InputError(f"{path}: the adapter state does not fit the header's network ({problem})")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(f"{path}: the adapter state does not fit the header's network ({key} is "
                             f"{tuple(state[key].shape)}, expected {tuple(value.shape)})")
    network.load_state_dict(state)


_loaded: dict[tuple[str, int, int], LoadedAdapter] = {}


def _cached(path: Path) -> LoadedAdapter:
    try:
        info = path.stat()
    except OSError:
        raise InputError(f"{path}: no such file (a ulbc dynamic-adapter checkpoint)") from None
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _loaded:
        if len(_loaded) >= 4:
            _loaded.pop(next(iter(_loaded)))
        _loaded[key] = load_adapter(path)
    return _loaded[key]


def apply_adapter(adapter: str | os.PathLike | LoadedAdapter, image: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """x̄ = g_t(x̂) of one decoded (H, W, 3) uint8 image, as uint8 of the same shape.

    float32 on the CPU without gradients, ``threads`` torch threads (1, as the decoders: the same
    pixels on every machine of a platform); x / 255 in, clipped to [0, 1], scaled by 255 and rounded.
    """
    from ..compressai_runtime import torch_threads

    loaded = adapter if isinstance(adapter, LoadedAdapter) else _cached(Path(adapter))
    channels = loaded.header["adapter"]["channels"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        raise InputError(f"adapter {loaded.path}: expected an (H, W, {channels}) uint8 image, got "
                         f"{image.dtype} {tuple(image.shape)}")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div(255)
    with torch.no_grad(), torch_threads(threads):
        y = loaded.network(x)
    pixels = (y[0] * 255).clamp(0, 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().numpy()
