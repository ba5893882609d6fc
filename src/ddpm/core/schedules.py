"""Noise schedules: name -> float64 betas of shape (T,).

Everything here is computed in float64 on the CPU; `GaussianDiffusion` casts to the model's dtype
only when it gathers a coefficient, so rounding in the schedule never compounds over T steps.
Code index t = 0..T-1 is the paper's t = 1..T.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "linear_betas",
    "quadratic_betas",
    "cosine_betas",
    "sigmoid_betas",
    "custom_betas",
    "betas_from_alphas_cumprod",
]


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"num_timesteps must be an integer >= 1, got {num_timesteps!r}; "
            "set scheduler.num_timesteps (the paper uses 1000)."
        )


def _endpoints(beta_start: float, beta_end: float, num_timesteps: int, scale: bool) -> tuple[float, float]:
    """Optionally scale the endpoints by 1000/T (improved-diffusion) so any T behaves like T=1000."""
    if scale:
        factor = 1000.0 / num_timesteps
        return beta_start * factor, beta_end * factor
    return beta_start, beta_end


def linear_betas(
    num_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scale_to_num_timesteps: bool = False,
) -> torch.Tensor:
    """DDPM's linear schedule: beta_t evenly spaced from beta_start to beta_end."""
    _check_num_timesteps(num_timesteps)
    start, end = _endpoints(beta_start, beta_end, num_timesteps, scale_to_num_timesteps)
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def quadratic_betas(
    num_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scale_to_num_timesteps: bool = False,
) -> torch.Tensor:
    """DDPM code's 'quad' schedule: sqrt(beta_t) evenly spaced, then squared."""
    _check_num_timesteps(num_timesteps)
    start, end = _endpoints(beta_start, beta_end, num_timesteps, scale_to_num_timesteps)
    return torch.linspace(math.sqrt(start), math.sqrt(end), num_timesteps, dtype=torch.float64) ** 2


def betas_from_alphas_cumprod(alpha_bar, num_timesteps: int, max_beta: float) -> torch.Tensor:
    """Discretise a continuous abar(u), u in [0, 1]: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta).

    Using abar(i/T) as the denominator (not abar_{i-1} of the discrete chain) is what makes
    beta_0 > 0: an off-by-one here gives abar_0 = 1, beta_0 = 0 and NaNs downstream.
    """
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T+1,)
    abar = alpha_bar(u)
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): abar(u) = f(u)/f(0), f(u) = cos^2(((u + s)/(1 + s)) pi/2)."""
    _check_num_timesteps(num_timesteps)

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return betas_from_alphas_cumprod(lambda u: f(u) / f(torch.zeros(1, dtype=torch.float64)), num_timesteps, max_beta)


def sigmoid_betas(
    num_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Chen (2023), "On the importance of noise scheduling": a sigmoid in abar-space.

    abar(u) = (-sigmoid((u (end - start) + start) / tau) + sigmoid(end / tau))
              / (sigmoid(end / tau) - sigmoid(start / tau)).
    This is lucidrains' `sigmoid_beta_schedule`, NOT diffusers' beta-space "sigmoid" (GeoDiff).
    """
    _check_num_timesteps(num_timesteps)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar(u: torch.Tensor) -> torch.Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return betas_from_alphas_cumprod(alpha_bar, num_timesteps, max_beta)


def custom_betas(betas: Sequence[float]) -> torch.Tensor:
    """Betas given explicitly (e.g. from a paper's table); validated like every other schedule."""
    out = torch.as_tensor(list(betas), dtype=torch.float64)
    _check_num_timesteps(out.numel())
    return out


def validate_betas(betas: torch.Tensor) -> torch.Tensor:
    """Every schedule must be 1-D with 0 < beta_t <= 1, else abar or the posterior is undefined."""
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError(
            f"every beta must lie in (0, 1]; got min {betas.min().item():.3g}, max {betas.max().item():.3g}. "
            "Check scheduler.beta_start/beta_end (with scale_to_num_timesteps a small T can push beta_end past 1)."
        )
    return betas
