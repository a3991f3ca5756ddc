"""Stages II and III of GLC's training (``ulbc train glc``); stage I, the VQ-VAE, is not done here.

Notation: x an image in [-1, 1], l = E(x) the VQ-VAE encoder's output *before* quantisation, c its
codebook indices, l̂ the latent the generator sees (``dec`` of ŷ), x̂ = G(l̂), q the rate index and
λ_q its weight. The release's ``src/models/loss.py`` fixes the loss terms: ``calculate_vqgan_results``
takes ``vqgan.encoder(x)`` as the latent target and the quantiser's indices as the code targets,
``CodeLevelLoss`` compares them with the decoded latent (``dec`` output) per image, and
``GANLoss`` / ``calculate_adaptive_weight`` are the hinge GAN and its weight.

* **Stage II** (VQ-VAE frozen: encoder, codebook, generator)::

      L = bpp + λ_q · MSE(l̂, l) + β · CE(P(l̂), c) + L_z

  bpp = (bits of y under the Gaussian model + ``index_bits`` per hyper position) / pixels, P the
  ``code_pred_loss`` transformer, L_z the z codebook's codebook + commitment loss. Trained: the
  transform coder, hyper coder, priors, ``q_enc``/``q_dec``, ``z_vq`` and ``code_pred_loss``.
* **Stage III** (VQ-VAE encoder and codebook frozen; everything else, the generator included)::

      L = bpp + λ_q · (L1(x̂, x) + λ_p · LPIPS(x̂, x) + λ_g · w · G) + β · CE(P'(l̂), c) + L_z

  P' is the ``code_pred_pix_loss`` transformer (the release builds a second predictor for this
  stage; which input it sees is not published, here the decoded latent, as in stage II). G is the
  hinge generator loss -D(x̂) of a PatchGAN D (the release's VQGAN discriminator layout), w the
  per-image adaptive weight ‖∇_W (L1 + λ_p·LPIPS)‖ / (‖∇_W G‖ + 1e-4) clamped to [0, max] on the
  generator's last convolution W. The gradients are taken at x̂ and carried through W alone, which
  is exact per image except for the discriminator's batch statistics (the release backpropagates
  each image's terms through the whole batch instead). D minimises relu(1 - D(x)) + relu(1 + D(x̂)).
  LPIPS is fed as the release's ``LPIPSLoss`` does by default: [-1, 1] mapped to [0, 1], then
  ImageNet-normalised, then the lpips network (which applies its own scaling layer on top).

Each term is a per-image mean (the release normalises by positions and channels), averaged over
the batch. One step trains one rate point: q = step mod ``n_rates``, so every rate gets the same
share and a resumed run continues the cycle. The authors' λ values, data and schedule are not
public; the defaults here are starting points, to be calibrated against the bpp in the log (the
release runs at about 0.021 to 0.033 bpp).

The checkpoint is the release layout, ``{"net_g": state_dict}``, with the training state (optimiser,
discriminator, RNG, settings) beside it, so the codec's :func:`~ulbc.glc.model.read_checkpoint`
reads it as it reads the authors' file. Resumption is exact: a step's images depend on (seed,
step) only, and the checkpoint holds the optimiser states and the RNG states.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import weights
from ..errors import ConfigError, InputError
from ..fsutil import atomic_path
from ..statedict import one_line
from ..trainlog import TrainResult, as_float, check_resumable, log_step, rng_state, set_rng_state, truncate_log
from .config import GLCConfig, get_config
from .model import CODE_PREDICTION_PREFIXES, GLCImage, load_weights, read_checkpoint

#: λ_q of the four rate points: unverified starting points (the authors' values are not published).
DEFAULT_LAMBDAS = (0.5, 1.0, 2.0, 4.0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLIP_NORM = 1.0
#: Marks a checkpoint written by this trainer (beside the release-layout ``net_g``).
CHECKPOINT_FORMAT = "ulbc-glc-training/1"
#: The ImageNet statistics the release's LPIPSLoss normalises its [0, 1] inputs with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Parameters each stage leaves as they are.
FROZEN_PREFIXES = {2: ("vqgan.", "code_pred_pix_loss."),
                   3: ("vqgan.encoder.", "vqgan.quantize.", "code_pred_loss.")}
#: ``--lpips-weights`` value for a random-initialised backbone (tests and demos; LPIPS is then meaningless).
RANDOM_BACKBONE = "random"
#: ``--init`` value for a random-initialised model (tests and demos: stage II needs a trained VQ-VAE).
RANDOM_INIT = "random"


@dataclass
class GLCTraining:
    """Everything one training run needs; ``train_glc`` checks the values."""

    stage: int
    images: Path
    out: Path
    init: str | None = None  # a weights name, a GLC checkpoint file or "random"; ignored by resume
    config: str = "glc-image"
    steps: int = 10000
    batch_size: int = 8
    crop: int = 256
    flip: bool = True
    lr: float = 1e-4
    lambdas: tuple[float, ...] | None = None  # λ_q per rate index; default DEFAULT_LAMBDAS
    beta: float = 1.0  # code-prediction cross-entropy
    lambda_lpips: float = 1.0  # stage III
    lambda_gan: float = 1.0  # stage III; 0: no discriminator
    gan_weight_max: float = 1.0  # the release's disc_weight_max
    disc_lr: float | None = None  # default: lr
    disc_width: int = 64
    disc_layers: int = 4
    lpips_net: str = "vgg"  # the release trains with LPIPS-VGG
    lpips_weights: str = "default"  # a weights entry of the backbone, or "random"
    clip_norm: float = CLIP_NORM
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 500
    log: Path | None = None  # JSON lines, one per step; default: OUT with ".jsonl" appended
    progress: bool = True


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(settings: GLCTraining, cfg: GLCConfig) -> tuple[float, ...]:
    """The per-rate λ after checking every setting (one-line ConfigError)."""
    from ..metrics.perceptual import LPIPS_BACKBONES

    if settings.stage not in (2, 3):
        raise ConfigError(f"GLC training: stage must be 2 (latent coding) or 3 (pixel fine-tuning), got {settings.stage!r}")
    positive = {"steps": settings.steps, "batch_size": settings.batch_size, "crop": settings.crop,
                "checkpoint_every": settings.checkpoint_every, "disc_width": settings.disc_width,
                "disc_layers": settings.disc_layers}
    for name, value in positive.items():
        if not _whole(value) or value < 1:
            raise ConfigError(f"GLC training: {name} must be a whole number >= 1, got {value!r}")
    lambdas = tuple(DEFAULT_LAMBDAS if settings.lambdas is None else settings.lambdas)
    if len(lambdas) != cfg.n_rates:
        raise ConfigError(f"GLC training: {len(lambdas)} λ value(s) given, configuration {settings.config} has "
                          f"{cfg.n_rates} rate points")
    numbers = {"beta": settings.beta, "lambda_lpips": settings.lambda_lpips, "lambda_gan": settings.lambda_gan,
               "gan_weight_max": settings.gan_weight_max, "clip_norm": settings.clip_norm,
               **{f"lambda[{q}]": value for q, value in enumerate(lambdas)}}
    rates = {"lr": settings.lr, **({"disc_lr": settings.disc_lr} if settings.disc_lr is not None else {})}
    for name, value in {**numbers, **rates}.items():
        low_ok = value > 0 if name in rates else value >= 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low_ok:
            raise ConfigError(f"GLC training: {name} must be a finite number {'> 0' if name in rates else '>= 0'}, "
                              f"got {value!r}")
    if settings.crop % cfg.pad_multiple:
        raise ConfigError(f"GLC training: crop {settings.crop} is not a multiple of {cfg.pad_multiple} "
                          f"(pixels per hyper-latent position of {settings.config})")
    positions = (settings.crop // cfg.latent_stride) ** 2
    if settings.beta > 0 and positions != cfg.code_pred_positions:
        side = math.isqrt(cfg.code_pred_positions) * cfg.latent_stride
        raise ConfigError(f"GLC training: the code-prediction transformers of {settings.config} see "
                          f"{cfg.code_pred_positions} latent positions, crop {settings.crop} gives {positions}; "
                          f"give --crop {side}, or --beta 0")
    if settings.stage == 3 and settings.lambda_gan > 0 and settings.crop >> settings.disc_layers < 3:
        raise ConfigError(f"GLC training: a {settings.disc_layers}-layer discriminator needs crops of at least "
                          f"{3 << settings.disc_layers} pixels, got {settings.crop}")
    if settings.lpips_net not in LPIPS_BACKBONES:
        raise ConfigError(f"GLC training: unknown LPIPS network {settings.lpips_net!r}; known: "
                          f"{', '.join(LPIPS_BACKBONES)}")
    if not settings.resume and settings.init is None:
        raise ConfigError(f"GLC training: give --init NAME|PATH (a GLC checkpoint to start from) or --init "
                          f"{RANDOM_INIT} (random weights, for tests)")
    return lambdas


# -- data ---------------------------------------------------------------------------------------------
def epoch_order(count: int, seed: int, step: int, batch_size: int) -> list[int]:
    """The items of one step: epochs of seeded permutations, read in order (as the adapter's data)."""
    chosen = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, count)
        chosen.append(int(np.random.default_rng([seed, epoch]).permutation(count)[offset]))
    return chosen


class ImageFolderSet:
    """The PNG and JPEG images under a folder (recursive), as random ``crop`` x ``crop`` windows in
    [-1, 1], flipped left-right with probability 1/2. An image with a side below ``crop`` is first
    scaled up (bilinear) so its shorter side is ``crop``. A step's crops depend on (seed, step) only."""

    def __init__(self, folder: str | Path, crop: int, flip: bool = True) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (training images)")
        self.folder, self.crop, self.flip = folder, crop, flip
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise InputError(f"{folder}: no PNG or JPEG images (searched recursively)")

    def __len__(self) -> int:
        return len(self.paths)

    def names_sha256(self) -> str:
        """sha256 of the sorted relative file names: a resumed run must read the same set."""
        names = "\n".join(p.relative_to(self.folder).as_posix() for p in self.paths)
        return hashlib.sha256(names.encode()).hexdigest()

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        from ..imageio import load_rgb

        image = torch.from_numpy(np.array(load_rgb(self.paths[index]))).permute(2, 0, 1).float().div(127.5).sub(1)
        height, width = image.shape[-2:]
        if min(height, width) < self.crop:
            scale = self.crop / min(height, width)
            size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(-1, 1)
            height, width = size
        top = int(rng.integers(0, height - self.crop + 1))
        left = int(rng.integers(0, width - self.crop + 1))
        image = image[:, top : top + self.crop, left : left + self.crop]
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def batch(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        return torch.stack([self.sample(index, np.random.default_rng([seed, step, slot]))
                            for slot, index in enumerate(epoch_order(len(self), seed, step, batch_size))])


# -- networks -----------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN layout, as the release's VQGANDiscriminator): ``layers`` stride-2
    4x4 convolutions, one stride-1, then a 1-channel map of real/fake scores."""

    def __init__(self, width: int = 64, layers: int = 4):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for level in range(1, layers + 1):
            out = width * min(2**level, 8)
            stride = 2 if level < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*blocks)
        for module in self.modules():  # pix2pix's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.main(x)


class PerceptualLoss(nn.Module):
    """LPIPS(x̂, x) per image for images in [-1, 1], with the release's input normalisation."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x_hat, x):
        def normalise(image):
            return ((image + 1) / 2 - self.mean) / self.std

        return self.network(normalise(x), normalise(x_hat)).reshape(-1)


def lpips_network(net: str, backbone: str, device: str) -> nn.Module:
    """The lpips package's v0.1 network: the backbone from ulbc's weights manager (``default``: the
    registered torchvision file of ``net``; a missing file is a one-line error naming ``ulbc weights
    import``), or random-initialised (``random``)."""
    from ..metrics.perceptual import LPIPS, LPIPS_VERSION

    metric = LPIPS(device=device, net=net, weights="default" if backbone == RANDOM_BACKBONE else backbone)
    if backbone != RANDOM_BACKBONE:
        return metric.network()
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision the legacy pretrained=False
        network = lpips.LPIPS(net=net, version=LPIPS_VERSION, pretrained=True, pnet_rand=True,
                              model_path=str(metric.linear_layers()), verbose=False)
    return network.to(device).eval()


def resolve_init(reference: str) -> tuple[str, Path | None]:
    """(reference, local file) of ``--init``: a weights name, a file, or ``random`` (no file)."""
    if reference == RANDOM_INIT:
        return reference, None
    if reference in weights.registry():
        return reference, weights.require(reference)
    path = Path(reference).expanduser()
    if not path.is_file():
        raise ConfigError(f"--init {reference}: neither a file nor a registered weights name (ulbc weights list), "
                          f"nor {RANDOM_INIT}")
    return str(path.resolve()), path.resolve()


def initialise(model: GLCImage, path: Path, config_name: str) -> None:
    """Load a GLC checkpoint into ``model``; code-prediction transformers the file lacks (an
    inference-only checkpoint) keep their random initial values."""
    state = read_checkpoint(path)
    own = model.state_dict()
    for prefix in CODE_PREDICTION_PREFIXES:
        if not any(key.startswith(prefix) for key in state):
            state.update({key: value for key, value in own.items() if key.startswith(prefix)})
    load_weights(model, state, path, config_name)


def adaptive_gan_weight(reconstruction, adversarial, x_hat, last_weight, max_weight: float):
    """Per image ‖∂reconstruction_i/∂W‖ / (‖∂adversarial_i/∂W‖ + 1e-4), clamped to [0, max_weight],
    W the layer that outputs x̂ (no gradient flows back through it)."""
    at_output = [torch.autograd.grad(term.sum(), x_hat, retain_graph=True)[0] for term in (reconstruction, adversarial)]
    weights_per_image = []
    for index in range(x_hat.shape[0]):
        norms = []
        for grad in at_output:
            only_this = torch.zeros_like(grad)
            only_this[index] = grad[index]
            norms.append(torch.autograd.grad(x_hat, last_weight, grad_outputs=only_this, retain_graph=True)[0].norm())
        weights_per_image.append(norms[0] / (norms[1] + 1e-4))
    return torch.stack(weights_per_image).clamp(0.0, max_weight).detach()


# -- checkpoint ---------------------------------------------------------------------------------------
#: Keys a resumed run must share with the checkpoint (the rest may change: steps, logging, device).
_RESUME_KEYS = ("stage", "config", "training", "data")


def _read_resumable(out: Path) -> dict:
    try:
        content = torch.load(out, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the file is one line
        raise InputError(f"{out}: cannot resume, not a readable checkpoint ({one_line(exc)})") from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{out}: cannot resume, not a checkpoint of ulbc train glc")
    return content


def _cpu_state(module: nn.Module) -> dict:
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


def _save_checkpoint(path: Path, content: dict) -> None:
    """Write atomically: a reader sees the previous checkpoint or this one, never a part."""
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


# -- training -----------------------------------------------------------------------------------------
def train_glc(settings: GLCTraining) -> TrainResult:
    """Run stage ``settings.stage`` for ``settings.steps`` steps in all, continuing the checkpoint at
    ``settings.out`` when ``settings.resume``."""
    from tqdm import tqdm

    from ..provenance import resolve_device

    cfg = get_config(settings.config)
    lambdas = _check(settings, cfg)
    out = Path(settings.out)
    log = Path(settings.log) if settings.log else out.with_name(out.name + ".jsonl")
    if out.exists() and not settings.resume:
        raise ConfigError(f"{out}: exists; give --resume to continue its training, or another --out")
    if settings.resume and not out.is_file():
        raise ConfigError(f"{out}: no checkpoint to resume")
    device = resolve_device(settings.device, uses_gpu=True)
    dataset = ImageFolderSet(settings.images, settings.crop, settings.flip)
    # A resumed run takes its model from the checkpoint, whatever --init says.
    init_reference, init_path = resolve_init(settings.init) if not settings.resume else (None, None)
    stage, adversarial = settings.stage, settings.stage == 3 and settings.lambda_gan > 0

    perceptual = None
    if stage == 3 and settings.lambda_lpips > 0:  # first: a missing backbone file fails before the big build
        torch.manual_seed(settings.seed)
        perceptual = PerceptualLoss(lpips_network(settings.lpips_net, settings.lpips_weights, device)).to(device)
    torch.manual_seed(settings.seed)  # the model's initial values do not depend on the loss networks
    model = GLCImage(cfg, code_prediction=True)
    if init_path is not None:
        initialise(model, init_path, settings.config)
    model.to(device).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(FROZEN_PREFIXES[stage]))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=settings.lr)
    discriminator = disc_optimizer = None
    if adversarial:
        discriminator = PatchDiscriminator(settings.disc_width, settings.disc_layers).to(device).train()
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.disc_lr or settings.lr)
    last_layer = model.vqgan.generator.blocks[-1].weight

    training = {"lambdas": [float(v) for v in lambdas], "beta": float(settings.beta), "lr": float(settings.lr),
                "batch_size": settings.batch_size, "crop": settings.crop, "flip": settings.flip, "seed": settings.seed,
                "clip_norm": float(settings.clip_norm), "device_type": "cuda" if device.startswith("cuda") else "cpu"}
    if stage == 3:
        training.update(lambda_lpips=float(settings.lambda_lpips), lambda_gan=float(settings.lambda_gan),
                        gan_weight_max=float(settings.gan_weight_max), lpips_net=settings.lpips_net,
                        lpips_weights=settings.lpips_weights, disc_width=settings.disc_width,
                        disc_layers=settings.disc_layers, disc_lr=float(settings.disc_lr or settings.lr))
    header: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "stage": stage, "config": settings.config, "training": training,
        "data": {"images": len(dataset), "names_sha256": dataset.names_sha256()},
        "init": {"reference": init_reference,
                 "sha256": weights.path_sha256(init_path) if init_path is not None else None},
        "images_folder": str(Path(settings.images).resolve()), "step": 0}

    if settings.resume:
        content = _read_resumable(out)
        check_resumable(content, header, _RESUME_KEYS, out)
        try:
            model.load_state_dict(content["net_g"], strict=True)
            optimizer.load_state_dict(content["optimizer"])
            if adversarial:
                discriminator.load_state_dict(content["discriminator"], strict=True)
                disc_optimizer.load_state_dict(content["disc_optimizer"])
            header["init"], header["step"] = content.get("init"), int(content["step"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise InputError(f"{out}: damaged GLC checkpoint (model, optimiser or step: {one_line(exc)})") from None
        set_rng_state(content.get("rng", {}), device, out, "GLC")
        truncate_log(log, header["step"], "GLC")
    elif log.exists():
        log.unlink()

    def save() -> None:
        content = {**header, "net_g": _cpu_state(model), "optimizer": optimizer.state_dict(),
                   "rng": rng_state(device)}
        if adversarial:
            content.update(discriminator=_cpu_state(discriminator), disc_optimizer=disc_optimizer.state_dict())
        _save_checkpoint(out, content)

    pixels = settings.crop * settings.crop
    z_bits = cfg.index_bits * (settings.crop // cfg.pad_multiple) ** 2
    first = header["step"]
    last: dict[str, float] = {}
    bar = tqdm(total=settings.steps, initial=first, desc=f"train glc stage {stage}", unit="step", file=sys.stderr,
               disable=not settings.progress, mininterval=2.0)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as log_file:
        for step in range(first, settings.steps):
            started = time.perf_counter()
            rate = step % cfg.n_rates
            x = dataset.batch(settings.seed, step, settings.batch_size).to(device)
            with torch.no_grad():
                target = model.vqgan.encoder(x)
                codes = model.vqgan.quantize.indices(target).flatten(1)
            result = model.forward_train(x, rate)
            bpp = (result["bits_y"] + z_bits) / pixels
            predictor = model.code_pred_loss if stage == 2 else model.code_pred_pix_loss
            code_ce = (F.cross_entropy(predictor(result["latent"]).transpose(1, 2), codes)
                       if settings.beta > 0 else torch.zeros((), device=device))
            record: dict[str, float] = {"step": step + 1, "rate": rate}
            if stage == 2:
                latent_mse = F.mse_loss(result["latent"], target)
                distortion = lambdas[rate] * latent_mse
                record["latent_mse"] = as_float(latent_mse)
            else:
                x_hat = result["x_hat"]
                l1 = (x_hat - x).abs().flatten(1).mean(1)
                lpips_value = perceptual(x_hat, x) if perceptual is not None else torch.zeros_like(l1)
                reconstruction = l1 + settings.lambda_lpips * lpips_value
                pixel_loss = reconstruction
                record.update(l1=as_float(l1.mean()), lpips=as_float(lpips_value.mean()))
                if adversarial:
                    discriminator.requires_grad_(False)
                    generator_gan = -discriminator(x_hat).flatten(1).mean(1)
                    gan_weight = adaptive_gan_weight(reconstruction, generator_gan, x_hat, last_layer,
                                                     settings.gan_weight_max)
                    pixel_loss = reconstruction + settings.lambda_gan * gan_weight * generator_gan
                    record.update(gan_g=as_float(generator_gan.mean()), gan_weight=as_float(gan_weight.mean()))
                distortion = lambdas[rate] * pixel_loss.mean()
            loss = bpp.mean() + distortion + settings.beta * code_ce + result["z_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained, settings.clip_norm)
            optimizer.step()
            record.update(loss=as_float(loss), bpp=as_float(bpp.mean()), code_ce=as_float(code_ce),
                          z_loss=as_float(result["z_loss"]))
            if adversarial:
                discriminator.requires_grad_(True)
                fake = x_hat.detach()
                disc_loss = F.relu(1 - discriminator(x)).mean() + F.relu(1 + discriminator(fake)).mean()
                disc_optimizer.zero_grad(set_to_none=True)
                disc_loss.backward()
                disc_optimizer.step()
                record["disc"] = as_float(disc_loss)
            record["seconds"] = round(time.perf_counter() - started, 4)
            log_step(log_file, record, "GLC", out)
            header["step"] = step + 1
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                save()
            last = record
            bar.set_postfix(loss=f"{record['loss']:.4g}", bpp=f"{record['bpp']:.4g}")
            bar.update(1)
    bar.close()
    return TrainResult(out, log, header["step"], last)

