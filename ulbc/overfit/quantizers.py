"""Training-time quantisation proxies for the latent grids of overfitted codecs.

The decoder only ever sees ``round(y)``. During training that rounding is replaced by a
differentiable proxy whose hardness is annealed (spec §1.1):

* soft-round (Agustsson & Theis 2020):
  ``sr(x, t) = floor(x) + 1/2 + tanh((x - floor(x) - 1/2) / t) / (2 tanh(1 / (2t)))``;
  ``t -> 0`` gives ``round``, ``t -> inf`` the identity;
* additive noise, either Gaussian (Cool-chic 5.0) or Kumaraswamy with its mode at 1/2 (C3);
* straight-through rounding (forward ``round``, backward identity or soft-round);
* hard rounding (no gradient: the final Cool-chic phase where latents are frozen).

Every random draw goes through an explicit ``torch.Generator`` (on the generator's own device,
then moved) so that an encode is reproducible for a seed and never disturbs (or depends on) the
global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# Below this temperature the soft-round formula is numerically indistinguishable from ``round``
# (``tanh`` saturates to +-1 in float32 and its gradient underflows to 0), so ``soft_round``
# switches to an exact round with a straight-through gradient instead of producing NaN/0 grads.
MIN_TEMPERATURE = 1e-4

LATENT_QUANTIZER_MODES = ("softround+noise", "softround+noise+cmean", "noise", "ste", "hard")
NOISE_KINDS = ("gaussian", "kumaraswamy")


def _as_float(t: float | torch.Tensor) -> float:
    return float(t.item()) if isinstance(t, torch.Tensor) else float(t)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass.

    Why: lets gradients reach the latents while the forward pass sees exactly what the
    decoder will see. ``torch.round`` rounds halves to even, deterministically.
    """
    return x + (torch.round(x) - x).detach()


def soft_round(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Differentiable approximation of ``round`` with temperature ``t`` (exact formula of §1.1).

    For ``t < MIN_TEMPERATURE`` the result is ``ste_round(x)`` (exact round, identity gradient),
    because the closed form underflows there.
    """
    tv = _as_float(t)
    if tv <= 0 or not math.isfinite(tv):
        if tv == math.inf:
            return x
        raise ValueError(f"soft_round temperature must be > 0, got {tv}")
    if tv < MIN_TEMPERATURE:
        return ste_round(x)
    floor = torch.floor(x)
    frac = x - floor - 0.5
    scale = 2.0 * math.tanh(1.0 / (2.0 * tv))
    return floor + 0.5 + torch.tanh(frac / tv) / scale


def soft_round_inverse(y: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Inverse of ``soft_round`` for the same temperature (§1.1):
    ``sr^-1(y, t) = floor(y) + 1/2 + t * atanh((y - floor(y) - 1/2) * 2 tanh(1/(2t)))``.

    The atanh argument is clamped just inside (-1, 1) and the offset to [-1/2, 1/2], so values at
    (or numerically at) integers, where the inverse is ill-conditioned for small t, stay finite.
    For ``t < MIN_TEMPERATURE`` ``round`` has no inverse and ``y`` is returned unchanged.
    """
    tv = _as_float(t)
    if tv <= 0 or not math.isfinite(tv):
        if tv == math.inf:
            return y
        raise ValueError(f"soft_round_inverse temperature must be > 0, got {tv}")
    if tv < MIN_TEMPERATURE:
        return y
    floor = torch.floor(y)
    frac = y - floor - 0.5
    arg = frac * (2.0 * math.tanh(1.0 / (2.0 * tv)))
    eps = torch.finfo(y.dtype).eps if y.is_floating_point() else 1e-7
    arg = arg.clamp(-1.0 + eps, 1.0 - eps)
    offset = (tv * torch.atanh(arg)).clamp(-0.5, 0.5)
    return floor + 0.5 + offset


def soft_round_conditional_mean(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """C3's replacement for the second soft-round: ``E[x | sr(x,t) + u = z] = sr^-1(z - 1/2, t) + 1/2``
    (exact for uniform noise u); used by the "softround+noise+cmean" mode."""
    return soft_round_inverse(z - 0.5, t) + 0.5


def kumaraswamy_noise(
    shape: Sequence[int] | torch.Size,
    a: float,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Kumaraswamy(a, b) noise shifted to [-1/2, 1/2], with ``b = (2^a (a-1) + 1) / a`` so that the
    mode sits at 1/2 (i.e. at 0 after the shift).

    Why: ``a = 1`` is uniform noise (the classic additive-noise proxy); larger ``a`` concentrates
    the noise around 0, which C3 anneals to move smoothly towards hard rounding.
    """
    if not a >= 1.0:
        raise ValueError(f"kumaraswamy noise parameter a must be >= 1, got {a}")
    b = (2.0**a * (a - 1.0) + 1.0) / a
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64, device=generator.device)
    # Inverse CDF of Kumaraswamy(a, b): F^-1(u) = (1 - (1 - u)^(1/b))^(1/a). Sampled in float64
    # so that the extreme tails do not collapse; the result is cast to ``dtype`` afterwards.
    sample = (1.0 - (1.0 - u).pow(1.0 / b)).clamp(0.0, 1.0).pow(1.0 / a)
    return (sample - 0.5).clamp(-0.5, 0.5).to(device=device or generator.device, dtype=dtype)


def gaussian_noise(
    shape: Sequence[int] | torch.Size,
    sigma: float,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Zero-mean Gaussian noise with standard deviation ``sigma`` (Cool-chic 5.0's training noise)."""
    if not sigma >= 0.0:
        raise ValueError(f"gaussian noise sigma must be >= 0, got {sigma}")
    n = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device) * sigma
    return n.to(device or generator.device)


class LatentQuantizer(nn.Module):
    """Applies one of the latent quantisation proxies (the decoder-side op is always ``round``).

    Modes:

    * ``"softround+noise"`` — Cool-chic: ``sr(sr(x, t) + n, t)``;
    * ``"softround+noise+cmean"`` — C3: ``sr^-1(sr(x, t) + n - 1/2, t) + 1/2``;
    * ``"noise"`` — ``x + n`` (classic additive-noise proxy);
    * ``"ste"`` — forward ``round(x)``, identity gradient;
    * ``"hard"`` — ``round(x)`` with no gradient at all (latents frozen, networks fine-tuned).

    ``noise_kind`` chooses what ``noise_level`` means: the Gaussian sigma, or the Kumaraswamy
    parameter ``a`` (``a = 1`` is uniform noise in [-1/2, 1/2]).
    """

    def __init__(self, mode: str = "softround+noise", noise_kind: str = "gaussian") -> None:
        super().__init__()
        if mode not in LATENT_QUANTIZER_MODES:
            raise ValueError(f"unknown latent quantizer mode {mode!r}; choose one of {LATENT_QUANTIZER_MODES}")
        if noise_kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {noise_kind!r}; choose one of {NOISE_KINDS}")
        self.mode = mode
        self.noise_kind = noise_kind

    def noise(self, like: torch.Tensor, noise_level: float,
              generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """Draws the configured noise with the shape, dtype and device of ``like``. A sequence of
        generators draws ``like[i]``'s noise from generator i (one per model of a batch)."""
        draw = gaussian_noise if self.noise_kind == "gaussian" else kumaraswamy_noise
        if isinstance(generator, torch.Generator):
            return draw(like.shape, noise_level, generator, dtype=like.dtype, device=like.device)
        if len(generator) != like.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
        return torch.stack([draw(like.shape[1:], noise_level, g, dtype=like.dtype, device=like.device) for g in generator])

    def forward(
        self,
        x: torch.Tensor,
        temperature: float = MIN_TEMPERATURE,
        noise_level: float = 0.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        if self.mode == "hard":
            return torch.round(x).detach()
        if self.mode == "ste":
            return ste_round(x)
        if generator is None:
            raise ValueError(f"latent quantizer mode {self.mode!r} needs an explicit torch.Generator")
        n = self.noise(x, noise_level, generator)
        if self.mode == "noise":
            return x + n
        z = soft_round(x, temperature) + n
        if self.mode == "softround+noise":
            return soft_round(z, temperature)
        return soft_round_conditional_mean(z, temperature)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, noise_kind={self.noise_kind!r}"


@dataclass(frozen=True)
class AnnealingSchedule:
    """Temperature and noise level as a function of the iteration.

    ``shape="linear"`` (default) interpolates linearly from the start to the end values over
    ``total_iters`` — this is what Cool-chic 5.0's main phase does (t 0.35 -> 0.08, sigma
    0.22 -> 0.15, spec §2.2), so the default reproduces the reference schedule. ``"cosine"``
    (half-cosine, slow at both ends) is offered for experiments. Past ``total_iters`` the end
    values are held.
    """

    total_iters: int
    t_start: float
    t_end: float
    noise_start: float
    noise_end: float
    shape: str = "linear"

    def __post_init__(self) -> None:
        if self.total_iters < 1:
            raise ValueError(f"AnnealingSchedule total_iters must be >= 1, got {self.total_iters}")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"AnnealingSchedule shape must be 'linear' or 'cosine', got {self.shape!r}")
        if not (self.t_start > 0 and self.t_end > 0):
            raise ValueError("AnnealingSchedule temperatures must be > 0")

    def progress(self, iteration: int) -> float:
        """Fraction of the way from the start to the end values, in [0, 1]."""
        p = min(max(iteration, 0), self.total_iters) / self.total_iters
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * p))
        return p

    def temperature(self, iteration: int) -> float:
        p = self.progress(iteration)
        return self.t_start + (self.t_end - self.t_start) * p

    def noise(self, iteration: int) -> float:
        p = self.progress(iteration)
        return self.noise_start + (self.noise_end - self.noise_start) * p

    def __call__(self, iteration: int) -> tuple[float, float]:
        """``(temperature, noise_level)`` for this iteration."""
        return self.temperature(iteration), self.noise(iteration)
