"""MISC's generative decoder: Stable Diffusion 2.1 through ``diffusers``, steered by the base image.

The paper decodes with DiffBIR-v1 (Stable Diffusion 2.1 and a restoration ControlNet): three short
local passes, each prompted with one object's sentence and blended in through that object's block
mask, then a long global pass prompted with the overall description. This module builds the same
schedule from ``diffusers`` parts:

* the base image, up-sampled to the output size, is encoded by the VAE and noised to ``strength``
  (img2img); with ``control`` a ControlNet also sees it at every step (a restoration control model
  in diffusers' ControlNet layout, registered as the configuration's ``control`` weights);
* classifier-free guidance against the paper's negative prompt "Blurry, Low Quality";
* DDIM with ``eta = 0``: the only randomness is the starting noise, drawn on the CPU from the
  file's seed, so a file decodes to the same pixels on the same kind of device and library build;
* optional colour fix (as DiffBIR's): the low frequencies of the output are replaced by the base
  image's, so the generator cannot drift in colour.

DiffBIR's own checkpoint (an LDM-layout ControlLDM whose control branch takes VAE latents) is not
in diffusers' layout and is not read here. A diffusion decoder is not bit-exact across devices:
GPU kernels and CPU kernels round differently, and the sampler amplifies the difference.

Configurations name their weights in the weights registry (:data:`CONFIGS`): ``sd21-base`` is
Stable Diffusion 2.1-base (``stabilityai/stable-diffusion-2-1-base``, diffusers layout, one file
per component); ``tiny`` is a few-thousand-parameter network of the same kinds for tests, whose
files a site registry provides.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import weights
from ..errors import ConfigError, InputError

#: The paper's negative prompt, part of the format (not stored per file).
NEGATIVE_PROMPT = "Blurry, Low Quality"
#: Tokens per prompt (CLIP's context length).
CONTEXT_LENGTH = 77
_DOWN = "CrossAttnDownBlock2D"
_UP = "CrossAttnUpBlock2D"

_SD21_UNET = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": [_DOWN, _DOWN, _DOWN, "DownBlock2D"], "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", _UP, _UP, _UP], "use_linear_projection": True,
}
_SD21_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
_SD21_TEXT = {  # OpenCLIP ViT-H/14's text tower up to its penultimate layer, as SD 2.x uses it
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
    "projection_dim": 512, "hidden_act": "gelu", "max_position_embeddings": CONTEXT_LENGTH, "vocab_size": 49408,
    "layer_norm_eps": 1e-5,
}
_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
              "prediction_type": "epsilon"}

_TINY_UNET = {
    "block_out_channels": [32, 64], "layers_per_block": 1, "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", _DOWN], "up_block_types": [_UP, "UpBlock2D"],
    "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8, "use_linear_projection": True,
}
_TINY_VAE = {
    "block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3, "sample_size": 32,
    "up_block_types": ["UpDecoderBlock2D"] * 2, "scaling_factor": 0.18215,
}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "projection_dim": 32, "hidden_act": "gelu", "max_position_embeddings": CONTEXT_LENGTH,
              "vocab_size": 49408, "layer_norm_eps": 1e-5}

COMPONENTS = ("unet", "vae", "text_encoder", "control")


@dataclass(frozen=True)
class DiffusionConfig:
    """Network sizes and the registry names of each component's weights."""

    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    weights: dict  # component -> weights-registry name
    #: The ControlNet's own sizes: its conditioning image is at pixel resolution, down-sampled by
    #: stride-2 convolutions to the latent's (one fewer than the channel counts).
    control: tuple = ((16, 32, 96, 256),)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def pad_multiple(self) -> int:
        """Pixels per side the networks need a multiple of: the VAE's and the UNet's down-sampling."""
        return self.vae_factor * 2 ** (len(self.unet["block_out_channels"]) - 1)


#: Configuration name -> config; the index in :data:`CONFIG_IDS` is stored in files (never reorder).
CONFIGS = {
    "sd21-base": DiffusionConfig("sd21-base", _SD21_UNET, _SD21_VAE, _SD21_TEXT, {
        "unet": "sd21-base-unet", "vae": "sd21-base-vae", "text_encoder": "sd21-base-text-encoder",
        "control": "misc-restoration-control"}),
    "tiny": DiffusionConfig("tiny", _TINY_UNET, _TINY_VAE, _TINY_TEXT, {
        "unet": "misc-tiny-unet", "vae": "misc-tiny-vae", "text_encoder": "misc-tiny-text-encoder",
        "control": "misc-tiny-control"}, control=((8, 16),)),
}
CONFIG_IDS = ("sd21-base", "tiny")


def build(config: DiffusionConfig, component: str):
    """The randomly initialised network of one component (weights are loaded separately)."""
    if component == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**config.unet)
    if component == "control":
        from diffusers import ControlNetModel

        keep = ("block_out_channels", "layers_per_block", "in_channels", "down_block_types", "cross_attention_dim",
                "attention_head_dim", "norm_num_groups", "use_linear_projection", "norm_eps", "act_fn",
                "flip_sin_to_cos", "freq_shift", "downsample_padding")
        return ControlNetModel(conditioning_embedding_out_channels=config.control[0],
                               **{key: value for key, value in config.unet.items() if key in keep})
    if component == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**config.vae)
    if component == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**config.text_encoder))
    raise ValueError(f"unknown component {component!r}")


def read_weights(path: Path, what: str) -> dict:
    """Tensors of a safetensors file or a torch.save state dict; InputError (one line) otherwise."""
    from ..statedict import one_line, read_tensors

    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) == 8 and 0 < int.from_bytes(head, "little") < 100_000_000 and not head.startswith(b"PK"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors reports damage through several exception types
            raise InputError(f"{path}: not {what} ({one_line(exc)})") from None
    return read_tensors(path, what)


def load_component(config: DiffusionConfig, component: str, path: Path):
    """One component with the weights in ``path``, keys and shapes checked, in eval mode."""
    import torch

    from ..statedict import check_layout

    what = f"the {component} of diffusion configuration {config.name}"
    with torch.device("meta"):
        expected = build(config, component).state_dict()
    given = read_weights(path, what)
    given.pop("text_model.embeddings.position_ids", None)  # a buffer older transformers saved
    check_layout(path, what, given, expected)
    model = build(config, component)
    model.load_state_dict(given, strict=True)
    return model.eval().requires_grad_(False)


def weight_names(config: DiffusionConfig, control: bool) -> list[str]:
    return [config.weights[c] for c in COMPONENTS if c != "control" or control]


def weights_digest(config: DiffusionConfig, control: bool) -> bytes:
    """4 bytes naming the exact weight files (their sha256s, in component order)."""
    joined = "".join(weights.file_sha256(name) for name in weight_names(config, control))
    return hashlib.blake2b(joined.encode(), digest_size=4).digest()


_CACHE: OrderedDict[tuple, dict] = OrderedDict()
_CACHE_SIZE = 1


def load_pipeline(config: DiffusionConfig, control: bool, device: str) -> dict:
    """The components of ``config`` on ``device`` (kept for the next call)."""
    key = (config.name, control, device, tuple(weights.file_sha256(n) for n in weight_names(config, control)))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    parts = {}
    for component in COMPONENTS:
        if component == "control" and not control:
            continue
        parts[component] = load_component(config, component, weights.require(config.weights[component])).to(device)
    _CACHE[key] = parts
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return parts


def tokenize(texts: Sequence[str]):
    """CLIP's BPE tokens (open_clip's tokenizer, which ships its vocabulary): start, text, end, zeros."""
    from open_clip.tokenizer import tokenize as clip_tokenize

    return clip_tokenize(list(texts), context_length=CONTEXT_LENGTH)


@dataclass(frozen=True)
class Schedule:
    """What the decoder runs; every field is stored in the file."""

    steps: int
    guidance: float
    strength: float
    local_steps: int
    local_guidance: float
    color_fix: bool


def _embed(parts: dict, texts: Sequence[str], device: str):
    import torch

    with torch.no_grad():
        return parts["text_encoder"](tokenize(texts).to(device))[0]


def _denoise(parts: dict, scheduler, start_latents, noise, prompt: str, steps: int, guidance: float,
             strength: float, control_image, device: str):
    """One img2img pass: ``start_latents`` noised to ``strength``, then DDIM to t = 0."""
    import torch

    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    first = min(int(round(steps * strength)), steps)
    timesteps = timesteps[steps - first:]
    if len(timesteps) == 0:
        return start_latents
    latents = scheduler.add_noise(start_latents, noise, timesteps[:1])
    context = _embed(parts, [NEGATIVE_PROMPT, prompt], device)
    with torch.no_grad():
        for t in timesteps:
            model_input = torch.cat([latents, latents])
            extra = {}
            if "control" in parts:
                down, mid = parts["control"](model_input, t, encoder_hidden_states=context,
                                             controlnet_cond=torch.cat([control_image, control_image]),
                                             return_dict=False)
                extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            eps = parts["unet"](model_input, t, encoder_hidden_states=context, return_dict=False, **extra)[0]
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            latents = scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
    return latents


def _low_pass(x, passes: int = 4):
    import torch.nn.functional as F

    for level in range(passes):
        radius = 2 ** level
        x = F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
    return x


def generate(config: DiffusionConfig, control: bool, schedule: Schedule, guide: np.ndarray,
             texts: Sequence[str], masks: np.ndarray | None, seed: int, device: str) -> np.ndarray:
    """Restore ``guide`` (the up-sampled base image, (H, W, 3) uint8) with the text and masks.
    ``texts``: the three objects' sentences then the overall description (with masks), or the
    overall description alone."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler

    if masks is not None and len(texts) != len(masks) + 1:
        raise InputError(f"{len(masks)} masks need {len(masks) + 1} texts, got {len(texts)}")
    height, width = guide.shape[:2]
    multiple = config.pad_multiple
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    parts = load_pipeline(config, control, device)
    scheduler = DDIMScheduler(**_SCHEDULER)
    x = torch.from_numpy(np.array(guide)).permute(2, 0, 1)[None].float().div(255)
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate").to(device)
    scale = float(config.vae["scaling_factor"])
    with torch.no_grad():
        start = parts["vae"].encode(x * 2 - 1).latent_dist.mode() * scale
    generator = torch.Generator("cpu").manual_seed(int(seed))
    # All noise is drawn up front on the CPU, one tensor per pass, so that it is the same on any device.
    passes = (len(masks) if masks is not None else 0) + 1
    noises = [torch.randn(start.shape, generator=generator).to(device) for _ in range(passes)]
    latents = start
    if masks is not None:
        lat_h, lat_w = start.shape[2:]
        for index, mask in enumerate(masks):
            if not mask.any():
                continue
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            # The mask covers the image, not its padding: resize to the unpadded latent, then pad with 0.
            inner_h, inner_w = -(-height // config.vae_factor), -(-width // config.vae_factor)
            m = F.interpolate(m, size=(inner_h, inner_w), mode="nearest")
            m = F.pad(m, (0, lat_w - inner_w, 0, lat_h - inner_h)).to(device)
            local = _denoise(parts, scheduler, latents, noises[index], texts[index], schedule.local_steps,
                             schedule.local_guidance, schedule.strength, x, device)
            latents = m * local + (1 - m) * latents
    latents = _denoise(parts, scheduler, latents, noises[-1], texts[-1], schedule.steps, schedule.guidance,
                       schedule.strength, x, device)
    with torch.no_grad():
        out = (parts["vae"].decode(latents / scale).sample.clamp(-1, 1) + 1) / 2
    if schedule.color_fix:
        out = (out - _low_pass(out) + _low_pass(x)).clamp(0, 1)
    out = out[:, :, :height, :width]
    return (out[0].permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def check_config(name: str) -> DiffusionConfig:
    if name not in CONFIGS:
        raise ConfigError(f"unknown diffusion configuration {name!r}; known: {', '.join(CONFIG_IDS)}")
    return CONFIGS[name]

