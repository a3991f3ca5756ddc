"""Per-image optimisation of overfitted models, several images (and warm-up candidates) at once.

Schedule (Cool-chic 5's intra preset, scaled to the budget; spec §2.2):

1. **Warm-up**: ``candidates`` random initialisations per image train for ``warmup_iterations``
   with a fixed soft-round temperature and noise; the best (true RD cost) survives. For LotteryCodec
   each candidate also draws its own random network, so the warm-up is a lottery over seeds too.
2. **Main**: soft-round + Gaussian noise, temperature and noise annealed linearly, cosine learning
   rate; the true RD cost is measured every ``eval_every`` iterations and the best parameters kept.
3. **Final**: latents frozen at their rounded values, networks fine-tuned at a small learning rate.

``iterations`` is the budget per image counted as Cool-chic counts it: warm-up iterations of every
candidate count. Models in one batch are independent: the summed loss gives each its own gradient,
gradient clipping and NaN recovery act per model, and noise comes from each model's own generator.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..errors import ConfigError
from .model import OverfittedModel, evaluate_hard, mse_per_model


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 2000
    candidates: int = 3
    warmup_iterations: int = 100
    final_iterations: int = 200
    lr: float = 1e-2
    min_lr: float = 1e-5
    final_lr: float = 1e-4
    score_lr: float = 0.05  # LotteryCodec's mask scores (its released code uses 0.1 over 100 k steps)
    temperature: tuple[float, float] = (0.3, 0.1)
    sigma: tuple[float, float] = (0.22, 0.15)
    grad_clip: float = 0.1  # per-model gradient-norm clip on the networks (Cool-chic: 0.1)
    eval_every: int = 100

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.candidates < 1 or self.warmup_iterations < 0 or self.final_iterations < 0:
            raise ConfigError("iterations and candidates must be >= 1, warm-up and final iterations >= 0")

    def phases(self) -> tuple[int, int, int]:
        """(warm-up iterations per candidate, main iterations, final iterations) within the budget."""
        final = min(self.final_iterations, self.iterations // 4)
        warm = self.warmup_iterations if self.candidates > 1 else 0
        warm = min(warm, (self.iterations - final) // (2 * self.candidates))
        main = self.iterations - final - warm * self.candidates
        return warm, main, final


@dataclass
class TrainResult:
    model: OverfittedModel
    seconds: float
    iterations: int  # model-iterations spent per image (warm-up candidates included)
    best_loss: list[float]
    nan_restores: int


def candidate_seed(seed: int, candidate: int) -> int:
    """Candidate 0 keeps the item's seed; the others get distinct 32-bit seeds derived from it."""
    if candidate == 0:
        return int(seed) & 0xFFFFFFFF
    return (int(seed) * 1_000_003 + candidate * 0x9E3779B1) & 0xFFFFFFFF


class _Trainer:
    def __init__(self, model: OverfittedModel, target: torch.Tensor, lmbda: float, cfg: TrainConfig,
                 device: torch.device, task=None) -> None:
        self.model, self.target, self.lmbda, self.cfg, self.device = model, target, lmbda, cfg, device
        # The machine-task term (ulbc.overfit.taskterm.TaskTerm) and its outputs on the originals.
        self.task = task
        self.task_reference = task.reference(target) if task is not None else None
        self.generators = [torch.Generator(device=device).manual_seed(s ^ 0x1234567) for s in model.seeds]
        params = dict(model.named_parameters())
        self.latent_names = [n for n in params if n.startswith("latents.")]
        self.score_names = [n for n in params if n.startswith("synthesis.scores.")]
        self.net_names = model.network_names()
        self.best_loss = torch.full((model.batch,), math.inf, dtype=torch.float64)
        self.best_state = {n: p.detach().clone() for n, p in params.items()}
        self.nan_restores = 0

    def optimizer(self, lr: float, train_latents: bool) -> torch.optim.Optimizer:
        params = dict(self.model.named_parameters())
        groups = [{"params": [params[n] for n in self.net_names], "lr": lr}]
        if train_latents:
            groups.append({"params": [params[n] for n in self.latent_names], "lr": lr})
        if self.score_names:
            groups.append({"params": [params[n] for n in self.score_names], "lr": self.cfg.score_lr * lr / self.cfg.lr})
        return torch.optim.Adam(groups, lr=lr)

    def rd_loss(self, image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        loss = mse_per_model(image, self.target) + self.lmbda * bits / self.model.n_pixels
        if self.task is not None:
            loss = loss + self.task(image, self.task_reference)
        return loss

    @torch.no_grad()
    def hard_loss(self) -> torch.Tensor:
        """The true cost per model: latents rounded as the decoder sees them, image clamped."""
        mse, bits = evaluate_hard(self.model, self.target)
        loss = mse + self.lmbda * bits / self.model.n_pixels
        if self.task is not None:
            image, _ = self.model(self.model.quantized_latents("hard"))
            loss = loss + self.task(image.clamp(0, 1), self.task_reference)
        return loss

    def step(self, opt: torch.optim.Optimizer, mode: str, t: float, sigma: float) -> None:
        latents = self.model.quantized_latents(mode, t, sigma, self.generators)
        image, bits = self.model(latents)
        loss = self.rd_loss(image, bits)
        finite = torch.isfinite(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss[finite].sum().backward()
        self._clip()
        opt.step()
        if not bool(finite.all()):
            self._restore(~finite.cpu(), opt)

    def _clip(self) -> None:
        """Per-model gradient-norm clipping of the network weights (latents and scores excluded)."""
        params = dict(self.model.named_parameters())
        grads = [params[n].grad for n in self.net_names if params[n].grad is not None]
        if not grads or self.cfg.grad_clip <= 0:
            return
        norm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads))
        factor = (self.cfg.grad_clip / (norm + 1e-12)).clamp(max=1.0)
        for g in grads:
            g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))

    @torch.no_grad()
    def _restore(self, bad: torch.Tensor, opt) -> None:
        """Models whose loss went non-finite go back to their best parameters, with fresh Adam state."""
        self.nan_restores += int(bad.sum())
        bad = bad.to(self.device)
        for n, p in self.model.named_parameters():
            p[bad] = self.best_state[n][bad]
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][bad] = 0

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        loss = self.hard_loss().double().cpu()
        loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        better = loss < self.best_loss
        if bool(better.any()):
            self.best_loss = torch.where(better, loss, self.best_loss)
            idx = better.to(self.device)
            for n, p in self.model.named_parameters():
                self.best_state[n][idx] = p.detach()[idx]
        return loss

    @torch.no_grad()
    def load_best(self) -> None:
        ok = torch.isfinite(self.best_loss).to(self.device)
        for n, p in self.model.named_parameters():
            p[ok] = self.best_state[n][ok]

    def run_phase(self, iterations: int, mode: str, lr: float, min_lr: float, temperature, sigma,
                  bar: tqdm | None, train_latents: bool = True) -> None:
        if iterations <= 0:
            return
        opt = self.optimizer(lr, train_latents)
        initial = [g["lr"] for g in opt.param_groups]
        for it in range(iterations):
            progress = it / max(iterations - 1, 1)
            t = temperature[0] + (temperature[1] - temperature[0]) * progress
            s = sigma[0] + (sigma[1] - sigma[0]) * progress
            # Cosine decay from lr to min_lr (every group keeps its ratio to the base rate).
            scale = min_lr / lr + (1 - min_lr / lr) * 0.5 * (1 + math.cos(math.pi * it / iterations))
            for group, base in zip(opt.param_groups, initial):
                group["lr"] = base * scale
            self.step(opt, mode, t, s)
            if (it + 1) % self.cfg.eval_every == 0 or it == iterations - 1:
                loss = self.validate()
                if bar is not None:
                    bar.set_postfix(best=f"{float(self.best_loss.min()):.3e}", last=f"{float(loss.min()):.3e}")
            if bar is not None:
                bar.update(self.model.batch)


def train(model_factory, target: torch.Tensor, seeds: list[int], lmbda: float, cfg: TrainConfig,
          device: torch.device, progress: bool = False, description: str = "train", task=None) -> TrainResult:
    """Fit one model per image of ``target`` (B, H, W, 3) in [0, 1].

    ``model_factory(seeds)`` builds an :class:`OverfittedModel` with one model per seed. ``task``
    (a :class:`ulbc.overfit.taskterm.TaskTerm`) adds its machine-task term to every cost, the
    warm-up's choice and the best-parameter tracking included.
    """
    start = time.perf_counter()
    warm, main, final = cfg.phases()
    batch = len(seeds)
    total = batch * (warm * cfg.candidates + main + final)
    bar = tqdm(total=total, desc=description, unit="it", disable=not progress, file=sys.stderr, mininterval=2.0,
               leave=False)
    nan_restores = 0
    if warm > 0:
        cand_seeds = [candidate_seed(s, c) for s in seeds for c in range(cfg.candidates)]
        candidates = model_factory(cand_seeds).to(device)
        trainer = _Trainer(candidates, target.repeat_interleave(cfg.candidates, 0), lmbda, cfg, device, task)
        t0, s0 = cfg.temperature[0], cfg.sigma[0]
        trainer.run_phase(warm, "softround+noise", cfg.lr, cfg.lr, (t0, t0), (s0, s0), bar)
        loss = trainer.validate().reshape(batch, cfg.candidates)
        keep = [i * cfg.candidates + int(j) for i, j in enumerate(loss.argmin(dim=1))]
        nan_restores += trainer.nan_restores
        model = candidates.select(keep)
    else:
        model = model_factory([candidate_seed(s, 0) for s in seeds]).to(device)
    trainer = _Trainer(model, target, lmbda, cfg, device, task)
    trainer.run_phase(main, "softround+noise", cfg.lr, cfg.min_lr, cfg.temperature, cfg.sigma, bar)
    trainer.load_best()
    trainer.run_phase(final, "hard", cfg.final_lr, cfg.final_lr * 0.01, (1.0, 1.0), (0.0, 0.0), bar,
                      train_latents=False)
    trainer.validate()
    trainer.load_best()
    bar.close()
    return TrainResult(model, time.perf_counter() - start, warm * cfg.candidates + main + final,
                       trainer.best_loss.tolist(), nan_restores + trainer.nan_restores)
