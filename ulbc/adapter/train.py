"""Training the dynamic adaptation network with the loss of Zhu et al. (ICIP 2024).

    L = R + λ_h · D_h(x, x̂) + λ_m · D_m(x̄),   x̄ = g_t(x̂)

R is the codec's estimated rate in bits per pixel (CompressAI's likelihoods), D_h the MSE on the
0–255 scale (so λ_h is CompressAI's own λ: its training loss is ``bpp + λ·255²·MSE`` on [0, 1]
images) and D_m the sum of the task network's training losses on x̄ (for Mask R-CNN: RPN
objectness and box, classifier, box regression, mask).

* **Frozen codec** (default): x̂ is the codec's eval-mode forward (rounded latents, no noise),
  clipped and rounded to 8 bits as the decoder writes it; R and D_h do not depend on g_t and are
  logged only. For the autoregressive architectures (mbt2018, cheng2020-*) CompressAI's forward
  rounds y itself while its coder rounds y − μ, so x̂ is close to, not bit-equal with, the decode.
* **finetune_codec**: codec and g_t are trained end to end with CompressAI's training forward
  (additive uniform noise), its likelihoods as R, and its aux loss (the entropy bottleneck's
  quantiles, with their own Adam) as CompressAI's training script does.
* **Task network**: a torchvision detector from the weights manager, its parameters frozen, run in
  train mode for its losses with every BatchNorm in eval mode (FrozenBatchNorm backbones have no
  statistics to update; the others must not drift either).

Resumption is exact: the data of a step depend on (seed, step) only, and the checkpoint holds the
optimiser states and the torch RNG states of the CPU and the GPUs.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import weights
from ..errors import ConfigError, InputError
from ..trainlog import TrainResult, as_float, check_resumable, log_step, rng_state, set_rng_state, truncate_log
from . import network
from .coco import CocoDetectionSet

#: CompressAI's training λ of its MSE zoo models by quality (compressai.zoo docs; cheng2020 uses 1-6).
COMPRESSAI_MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
#: CompressAI's example training script: the aux optimiser's rate and the gradient clipping norm.
AUX_LR = 1e-3
CLIP_NORM = 1.0
PAD_MULTIPLE = 64


@dataclass
class AdapterTraining:
    """Everything one training run needs; ``train_adapter`` checks the values."""

    base: str
    quality: int
    images: Path
    annotations: Path
    out: Path
    base_weights: str | None = None  # a weights name or a file; default: the zoo's MSE model of quality
    task: str = "maskrcnn_resnet50_fpn"
    task_weights: str | None = None  # default: the architecture's registered COCO file
    task_settings: dict[str, Any] = field(default_factory=dict)  # min_size, max_size of its resize
    steps: int = 10000
    batch_size: int = 8
    lr: float = 1e-4
    lambda_h: float | None = None  # default: CompressAI's λ of the quality
    lambda_m: float = 1.0
    crop: int | None = 256
    scale_range: tuple[float, float] = (1.0, 2.0)
    flip: bool = True
    width: int = network.DEFAULT_WIDTH
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    finetune_codec: bool = False
    checkpoint_every: int = 500
    clip_norm: float = CLIP_NORM
    log: Path | None = None  # JSON lines, one per step; default: OUT with ".jsonl" appended
    progress: bool = True


def default_lambda_h(quality: int) -> float:
    if quality not in COMPRESSAI_MSE_LAMBDAS:
        raise ConfigError(f"no CompressAI λ is known for quality {quality} (1..8): give lambda_h (--lambda-h)")
    return COMPRESSAI_MSE_LAMBDAS[quality]


def _check(settings: AdapterTraining) -> None:
    from ..codecs.compressai_zoo import ARCHITECTURES

    if settings.base not in ARCHITECTURES:
        raise ConfigError(f"unknown CompressAI architecture {settings.base!r}; known: {', '.join(ARCHITECTURES)}")
    positive = {"steps": settings.steps, "batch_size": settings.batch_size, "quality": settings.quality,
                "checkpoint_every": settings.checkpoint_every}
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"adapter training: {name} must be a whole number >= 1, got {value!r}")
    for name in ("lr", "lambda_m", "clip_norm") + (("lambda_h",) if settings.lambda_h is not None else ()):
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            raise ConfigError(f"adapter training: {name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                              f"got {value!r}")
    if settings.crop is not None and (isinstance(settings.crop, bool) or not isinstance(settings.crop, int)
                                      or settings.crop < 8):
        raise ConfigError(f"adapter training: crop must be a whole number of pixels >= 8 (or none), got {settings.crop!r}")
    if settings.width < 2 or settings.width % 2:
        raise ConfigError(f"adapter training: the adapter width must be even and >= 2, got {settings.width}")


# -- the networks -----------------------------------------------------------------------------------
def resolve_base_weights(architecture: str, quality: int, reference: str | None) -> tuple[str, Path, str]:
    """(reference, local file, full sha256) of the base codec's weights: a weights name or a file."""
    from ..weights import compressai_zoo_name

    reference = reference or compressai_zoo_name(architecture, "mse", quality)
    if reference in weights.registry():
        return reference, weights.require(reference), weights.file_sha256(reference)
    path = Path(reference).expanduser()
    if not path.is_file():
        raise ConfigError(f"base weights {reference}: neither a file nor a registered weights name (ulbc weights list)")
    path = path.resolve()
    return str(path), path, weights.path_sha256(path)


def load_base_codec(architecture: str, path: Path):
    """A trainable CompressAI model (CPU, eval mode) from the checkpoint at ``path``."""
    from ..compressai_runtime import _model_class, _read_checkpoint, state_dict_of

    state = state_dict_of(_read_checkpoint(path), path)
    try:
        return _model_class(architecture).from_state_dict(state).eval()
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: is not a {architecture} checkpoint ({type(exc).__name__}: {first})") from None


def task_mode(detector) -> None:
    """Train mode for the losses; every BatchNorm kept in eval mode so no statistic moves."""
    detector.train()
    for module in detector.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _pad(x):
    from compressai.ops import compute_padding

    pad, unpad = compute_padding(x.shape[-2], x.shape[-1], min_div=PAD_MULTIPLE)
    return F.pad(x, pad, mode="constant", value=0), unpad


def codec_forward(codec, images: list, *, train: bool) -> tuple[list, Any, Any]:
    """(x̂ per image, total bits, squared error summed over all pixels and channels).

    Images of one size run as one batch, others one by one; each is zero-padded to a multiple of 64
    as CompressAI's evaluation does, and x̂ is cut back to the image. Frozen (``train`` False): no
    gradient, and x̂ is clipped and rounded to 8 bits like the decoder's output.
    """
    shapes = {tuple(image.shape) for image in images}
    groups = [torch.stack(images)] if len(shapes) == 1 else [image[None] for image in images]
    x_hats, bits, squared = [], 0, 0
    with torch.set_grad_enabled(train):
        for x in groups:
            padded, unpad = _pad(x)
            out = codec(padded)
            x_hat = F.pad(out["x_hat"], unpad)
            if not train:
                x_hat = (x_hat.clamp(0, 1) * 255).round() / 255
            bits = bits + sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / -math.log(2)
            squared = squared + ((x_hat - x) ** 2).sum()
            x_hats.extend(x_hat.unbind(0))
    return x_hats, bits, squared


def adapt(adapter, x_hats: list) -> list:
    """x̄ = g_t(x̂) of each image: one batch when they share a size, else one by one."""
    if len({tuple(x.shape) for x in x_hats}) == 1:
        return list(adapter(torch.stack(x_hats)).unbind(0))
    return [adapter(x_hat[None])[0] for x_hat in x_hats]


# -- checkpoint ---------------------------------------------------------------------------------------
#: Header fields a resumed run must share with the checkpoint (the rest may change: steps, logging).
_RESUME_KEYS = ("adapter", "base", "task", "lambda_h", "lambda_m", "training", "data")


# -- training -----------------------------------------------------------------------------------------
def train_adapter(settings: AdapterTraining) -> TrainResult:
    """Train g_t (and, with ``finetune_codec``, the codec) for ``settings.steps`` steps in all,
    continuing the checkpoint at ``settings.out`` when ``settings.resume``."""
    from tqdm import tqdm

    from ..provenance import resolve_device
    from ..tasknets import detectors

    _check(settings)
    out = Path(settings.out)
    log = Path(settings.log) if settings.log else out.with_name(out.name + ".jsonl")
    if out.exists() and not settings.resume:
        raise ConfigError(f"{out}: exists; give --resume to continue its training, or another --out")
    device = resolve_device(settings.device, uses_gpu=True)
    lambda_h = settings.lambda_h if settings.lambda_h is not None else default_lambda_h(settings.quality)

    base_reference, base_path, base_sha256 = resolve_base_weights(settings.base, settings.quality,
                                                                  settings.base_weights)
    codec = load_base_codec(settings.base, base_path).to(device)
    task_weights = settings.task_weights or detectors.default_weights(settings.task)
    detector = detectors.load_detector(settings.task, task_weights, device=device, **settings.task_settings)
    task_mode(detector)
    dataset = CocoDetectionSet(settings.images, settings.annotations, crop=settings.crop,
                               scale_range=settings.scale_range, flip=settings.flip,
                               masks=detectors.has_masks(detector))

    torch.manual_seed(settings.seed)  # after the detector's build, which draws its (replaced) initial values
    adapter = network.DynamicAdapter(3, settings.width).to(device).train()
    trained = list(adapter.parameters())
    aux_optimizer = None
    if settings.finetune_codec:
        codec.train()
        named = dict(codec.named_parameters())
        trained += [p for n, p in named.items() if not n.endswith(".quantiles")]
        aux_optimizer = torch.optim.Adam([p for n, p in named.items() if n.endswith(".quantiles")], lr=AUX_LR)
    else:
        for parameter in codec.parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(trained, lr=settings.lr)

    header = network.make_header(
        adapter={"channels": 3, "width": settings.width},
        base={"architecture": settings.base, "quality": settings.quality, "weights": base_reference,
              "sha256": base_sha256},
        task={"architecture": settings.task, "weights": task_weights, "sha256": weights.file_sha256(task_weights),
              "settings": dict(sorted(settings.task_settings.items()))},
        lambda_h=float(lambda_h), lambda_m=float(settings.lambda_m),
        training={"lr": float(settings.lr), "batch_size": settings.batch_size, "seed": settings.seed,
                  "crop": settings.crop, "scale_range": list(map(float, settings.scale_range)),
                  "flip": settings.flip, "finetune_codec": settings.finetune_codec,
                  "clip_norm": float(settings.clip_norm), "aux_lr": AUX_LR if settings.finetune_codec else None,
                  "device_type": "cuda" if device.startswith("cuda") else "cpu"},
        data={"annotations_sha256": weights.path_sha256(settings.annotations), "images": len(dataset)},
        data_paths={"images": str(Path(settings.images).resolve()),
                    "annotations": str(Path(settings.annotations).resolve())},
        steps_done=0)

    if settings.resume:
        content = network.read_checkpoint(out)
        check_resumable(content["header"], header, _RESUME_KEYS, out)
        network.load_adapter_state(adapter, content["adapter"], out)
        try:
            if settings.finetune_codec:
                codec.load_state_dict(content["state_dict"])
                aux_optimizer.load_state_dict(content["aux_optimizer"])
            optimizer.load_state_dict(content["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"{out}: damaged adapter checkpoint (optimiser or codec state: "
                             f"{network._one_line(exc)})") from None
        set_rng_state(content.get("rng", {}), device, out, "adapter")
        header["steps_done"] = int(content["header"]["steps_done"])
        truncate_log(log, header["steps_done"], "adapter")
    elif log.exists():
        log.unlink()

    def save() -> None:
        extra: dict[str, Any] = {"optimizer": optimizer.state_dict(), "rng": rng_state(device)}
        if settings.finetune_codec:
            extra["state_dict"] = {k: v.detach().cpu() for k, v in codec.state_dict().items()}
            extra["aux_optimizer"] = aux_optimizer.state_dict()
        network.save_checkpoint(out, network.checkpoint_content(header, adapter, **extra))

    first = header["steps_done"]
    last: dict[str, float] = {}
    bar = tqdm(total=settings.steps, initial=first, desc="train adapter", unit="step", file=sys.stderr,
               disable=not settings.progress, mininterval=2.0)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as log_file:
        for step in range(first, settings.steps):
            started = time.perf_counter()
            images, targets = dataset.batch(settings.seed, step, settings.batch_size)
            images = [image.to(device) for image in images]
            targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
            x_hats, bits, squared = codec_forward(codec, images, train=settings.finetune_codec)
            pixels = sum(image.shape[-1] * image.shape[-2] for image in images)
            bpp = bits / pixels
            mse = squared / (3 * pixels) * 255**2
            x_bars = adapt(adapter, x_hats)
            task_losses = detector(x_bars, targets)
            task = sum(task_losses.values())
            loss = bpp + lambda_h * mse + settings.lambda_m * task
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained, settings.clip_norm)
            optimizer.step()
            record = {"step": step + 1, "loss": as_float(loss), "bpp": as_float(bpp), "mse": as_float(mse),
                      "task": as_float(task), **{k: as_float(v) for k, v in task_losses.items()}}
            if aux_optimizer is not None:
                aux_optimizer.zero_grad(set_to_none=True)
                aux = codec.aux_loss()
                aux.backward()
                aux_optimizer.step()
                record["aux"] = as_float(aux)
            record["seconds"] = round(time.perf_counter() - started, 4)
            log_step(log_file, record, "adapter", out)
            header["steps_done"] = step + 1
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                save()
            last = record
            bar.set_postfix(loss=f"{record['loss']:.4g}", task=f"{record['task']:.4g}")
            bar.update(1)
    bar.close()
    return TrainResult(out, log, header["steps_done"], last)
