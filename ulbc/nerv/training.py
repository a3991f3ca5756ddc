"""Per-clip training of a NeRV-style model (dense or supermasked): Adam, linear warm-up then cosine
learning rate, MSE loss on [0, 1] RGB, the best full-clip checkpoint kept, NaN recovery.

Why MSE rather than NeRV's 0.7·L1 + 0.3·(1 - SSIM): the benchmark reports PSNR, and MSE is what
PSNR measures; it is also cheaper on CPU.

One iteration is one Adam step on ``batch_frames`` frames; frames are visited in a fresh seeded
permutation per pass over the clip. Every ``eval_every`` iterations (and at the end) the whole clip
is rendered without gradients; the parameters with the lowest clip MSE are restored at the end.
A non-finite loss or gradient restores the best parameters so far and restarts the optimiser.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class TrainSettings:
    iterations: int
    lr: float
    score_lr: float = 0.0
    batch_frames: int = 2
    warmup: float = 0.1  # fraction of the iterations with a linearly rising learning rate
    final_lr_ratio: float = 0.01  # the cosine ends at lr * final_lr_ratio
    eval_every: int = 50


@dataclass
class TrainOutcome:
    iterations: int
    initial_mse: float
    best_mse: float
    nan_restores: int
    seconds: float


def lr_factor(step: int, total: int, warmup: float, final_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total - n_warm)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def clip_mse(model: nn.Module, pe: torch.Tensor, target: torch.Tensor, batch_frames: int) -> float:
    """MSE of the whole clip rendered by ``model`` (chunks of ``batch_frames`` frames)."""
    total = 0.0
    for start in range(0, pe.shape[0], batch_frames):
        out = model(pe[start : start + batch_frames])
        total += float(((out - target[start : start + batch_frames]) ** 2).sum())
    return total / target.numel()


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(model: nn.Module, pe: torch.Tensor, target: torch.Tensor, settings: TrainSettings, *, seed: int,
          progress: bool = False, description: str = "") -> TrainOutcome:
    """Optimise ``model`` (which provides ``param_groups(lr, score_lr)``) on the clip ``target``
    (T, 3, H, W) in [0, 1] with positional rows ``pe`` (T, 2l). Returns with the best parameters loaded."""
    start = time.perf_counter()
    n_frames = target.shape[0]
    batch = max(1, min(settings.batch_frames, n_frames))
    groups = model.param_groups(settings.lr, settings.score_lr)
    base_lrs = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups)
    order_gen = torch.Generator(device="cpu").manual_seed(int(seed) ^ 0x0FDE)
    initial_mse = clip_mse(model, pe, target, batch)
    best_mse = initial_mse if math.isfinite(initial_mse) else math.inf
    best_state = _trainable_state(model)
    order: list[int] = []
    nan_restores = 0
    bar = tqdm(total=settings.iterations, desc=description, unit="it", disable=not progress, file=sys.stderr,
               mininterval=2.0, leave=False)
    for step in range(settings.iterations):
        factor = lr_factor(step, settings.iterations, settings.warmup, settings.final_lr_ratio)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        if len(order) < batch:
            order += torch.randperm(n_frames, generator=order_gen).tolist()
        index = torch.tensor(order[:batch], device=pe.device)
        del order[:batch]
        loss = ((model(pe[index]) - target[index]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        checks = [torch.isfinite(loss.detach())] + [torch.isfinite(p.grad).all() for g in optimizer.param_groups
                                                     for p in g["params"] if p.grad is not None]
        if not bool(torch.stack(checks).all()):  # one device sync per step
            # Diverged: go back to the best parameters and forget the optimiser's moments.
            model.load_state_dict(best_state)
            optimizer = torch.optim.Adam(model.param_groups(settings.lr, settings.score_lr))
            nan_restores += 1
        else:
            optimizer.step()
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.iterations:
            mse = clip_mse(model, pe, target, batch)
            if mse < best_mse:
                best_mse, best_state = mse, _trainable_state(model)
            bar.set_postfix(psnr=f"{-10 * math.log10(max(best_mse, 1e-12)):.2f}")
        bar.update(1)
    bar.close()
    model.load_state_dict(best_state)
    return TrainOutcome(settings.iterations, initial_mse, best_mse, nan_restores, time.perf_counter() - start)
