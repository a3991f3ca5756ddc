"""MISC's mappers: where in the image each of the answer's three objects is, as block masks.

* ``none``: no maps (MISC's global-only mode): the file holds no masks and the generator runs its
  global pass alone, prompted with the overall description.
* ``clip-surgery``: CLIP ViT-B/16 (OpenAI's weights, through open_clip and the weights manager)
  with the two changes of CLIP Surgery (Li et al., 2023), re-implemented from the paper:

  - *architecture surgery*: a second path through the last ``surgery_layers`` blocks whose
    attention is value-value self-attention (each token attends to tokens whose values resemble
    its own, instead of query-key attention, which in CLIP mostly points at a few background
    tokens) and which skips the MLPs; it starts from the original path's input to those blocks and
    adds up their attention outputs;
  - *feature surgery*: each patch token's product with each object's text embedding, minus the
    mean of those products over the objects (what every class shares is redundant), summed over
    channels, is the token's similarity to the object.

  A similarity map is min-max normalised over the patches, resized to the ``grid`` x ``grid``
  blocks (8 x 8 in the paper) and thresholded (0.35 in the paper's notebook).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .. import weights
from ..errors import InputError
from ..options import Option, check_options
from .answer import Answer
from .masks import GRID, MAX_GRID
from .stages import StageRegistry

MAPPERS = StageRegistry("MISC mapper")
register_mapper = MAPPERS.register

#: OpenAI's normalisation of CLIP's input.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Phrasings averaged into one text embedding per object (a prompt ensemble).
TEMPLATES = ("a photo of a {}.", "a picture of the {}.", "a close-up photo of a {}.", "a cropped photo of the {}.",
             "a bright photo of a {}.", "a dark photo of the {}.", "a photo of a small {}.", "a photo of a large {}.",
             "there is a {} in the scene.", "a {} in the image.")


def get_mapper(name: str, options: dict[str, Any]) -> "Mapper":
    cls = MAPPERS.lookup(name)
    return cls(check_options(f"MISC mapper {name!r}", cls.option_specs, options))


class Mapper(ABC):
    name: ClassVar[str]
    option_specs: ClassVar[dict[str, Option]] = {}
    #: Whether the file holds masks (and the objects' sentences with them).
    uses_maps: ClassVar[bool] = True

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    @property
    def grid(self) -> int:
        return int(self.options.get("grid", GRID))

    def weight_names(self) -> list[str]:
        return []

    def version(self) -> str:
        return self.name

    @abstractmethod
    def maps(self, image: np.ndarray, answer: Answer) -> np.ndarray | None:
        """(objects, grid, grid) bool masks for ``image`` (H, W, 3 uint8), or None (no maps)."""


@register_mapper
class NoMaps(Mapper):
    name = "none"
    uses_maps = False

    def maps(self, image, answer):
        return None


_CLIP_CACHE: dict[tuple[str, str], Any] = {}


def load_clip(path, sha256: str):
    """open_clip's CLIP from OpenAI's file (a TorchScript archive) or a state dict in its layout."""
    import torch
    from open_clip.model import build_model_from_openai_state_dict

    from ..statedict import one_line, read_tensors

    key = (str(path), sha256)
    if key in _CLIP_CACHE:
        return _CLIP_CACHE[key]
    what = "CLIP weights in OpenAI's layout"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice: OpenAI ships TorchScript
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception:  # not a TorchScript archive: a plain state dict
        state = read_tensors(path, what)
    try:
        model = build_model_from_openai_state_dict(dict(state), cast_dtype=torch.float32)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: not {what} ({one_line(exc)})") from None
    model = model.float().eval().requires_grad_(False)
    _CLIP_CACHE.clear()
    _CLIP_CACHE[key] = model
    return model


def _value_attention(block, x):
    """Value-value self-attention with ``block``'s projections: (B, L, C) -> (B, L, C)."""
    import torch.nn.functional as F

    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    v = F.linear(x, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    batch, length, _ = v.shape
    v = v.reshape(batch, length, heads, width // heads).transpose(1, 2)  # B, heads, L, d
    weights_ = (v @ v.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)
    out = (weights_ @ v).transpose(1, 2).reshape(batch, length, width)
    return attn.out_proj(out)


def surgery_tokens(model, pixels, surgery_layers: int):
    """Patch-token embeddings (B, N, D) of the surgery path, projected into the joint space."""
    visual = model.visual
    x = visual._embeds(pixels)
    blocks = list(visual.transformer.resblocks)
    start = max(len(blocks) - surgery_layers, 0)
    surgery = None
    for index, block in enumerate(blocks):
        if index >= start:
            update = block.ls_1(_value_attention(block, block.ln_1(x)))
            surgery = (x if surgery is None else surgery) + update
        x = block(x)
    tokens = visual.ln_post(surgery[:, 1:])
    return tokens @ visual.proj


def text_embeddings(model, names) -> Any:
    """One unit-norm embedding per name: the mean over :data:`TEMPLATES`, normalised."""
    from open_clip.tokenizer import tokenize

    rows = []
    for name in names:
        tokens = tokenize([template.format(name) for template in TEMPLATES])
        embedding = model.encode_text(tokens)
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        mean = embedding.mean(dim=0)
        rows.append(mean / mean.norm())
    import torch

    return torch.stack(rows)


def feature_surgery(tokens, texts):
    """(B, N, K) similarity: products of unit tokens and texts minus their mean over the K texts."""
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    product = tokens[:, :, None, :] * texts[None, None, :, :]
    return (product - product.mean(dim=2, keepdim=True)).sum(dim=-1)


def block_masks(similarity, grid: int, threshold: float):
    """(B, N, K) similarity over a square token grid -> (B, K, grid, grid) bool masks."""
    import torch.nn.functional as F

    batch, count, objects = similarity.shape
    side = round(count ** 0.5)
    if side * side != count:
        raise InputError(f"{count} patch tokens are not a square grid")
    low = similarity.min(dim=1, keepdim=True).values
    high = similarity.max(dim=1, keepdim=True).values
    normed = (similarity - low) / (high - low).clamp_min(1e-12)
    maps = normed.permute(0, 2, 1).reshape(batch, objects, side, side)
    maps = F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False)
    return maps > threshold


@register_mapper
class ClipSurgery(Mapper):
    name = "clip-surgery"
    option_specs = {
        "weights": Option("clip-vit-b-16", "str", help="weights-registry name of CLIP ViT-B/16 in OpenAI's layout"),
        "grid": Option(GRID, "int", low=1, high=MAX_GRID, help="blocks per side of each mask (the paper: 8)"),
        "threshold": Option(0.35, "float", low=0, high=1, help="normalised similarity above which a block is set"),
        "surgery_layers": Option(6, "int", low=1, high=64, help="last blocks with value-value attention"),
    }

    def weight_names(self) -> list[str]:
        return [self.options["weights"]]

    def version(self) -> str:
        from importlib import metadata

        return f"clip-surgery (open_clip {metadata.version('open-clip-torch')}, {self.options['weights']})"

    def maps(self, image, answer):
        import torch
        import torch.nn.functional as F

        name = self.options["weights"]
        model = load_clip(weights.require(name), weights.file_sha256(name))
        size = int(model.visual.image_size[0]) if isinstance(model.visual.image_size, tuple) \
            else int(model.visual.image_size)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            tokens = surgery_tokens(model, (x - mean) / std, int(self.options["surgery_layers"]))
            texts = text_embeddings(model, answer.objects)
            similarity = feature_surgery(tokens, texts)
            masks = block_masks(similarity, self.grid, float(self.options["threshold"]))
        return masks[0].numpy()
