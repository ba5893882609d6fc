"""DDIM (Song et al. 2021, eq. 12): a non-Markovian reverse process with the same marginals, S << T steps.

From x_t at kept step t to the next kept step t' (abar_{t'} := 1 after the last):
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          (optionally clipped; eps then re-derived)
    sigma  = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t')
    x_t'   = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps + sigma z
eta = 0 is deterministic; eta = 1 is the ancestral sampler with sigma^2 = beta_tilde on the respaced chain.
The last step lands on x0_hat. Coefficients are float64 host numbers (no device reads in the loop).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.core.diffusion import GaussianDiffusion, ModelOutput
from ddpm.core.samplers.base import Sampler
from ddpm.errors import ConfigError


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int = 50, eta: float = 0.0, spacing: str = "trailing",
                 clip_denoised: bool = True, progress: bool = True, cap_at_num_timesteps: bool = False) -> None:
        super().__init__(diffusion, num_steps, spacing, progress, cap_at_num_timesteps)
        if not eta >= 0:
            raise ConfigError(f"sampler.eta must be >= 0, got {eta}")
        self.eta, self.clip_denoised = float(eta), clip_denoised
        self.alphas_cumprod = diffusion.alphas_cumprod.detach().cpu().tolist()  # float64 host numbers

    def settings(self) -> str:
        return f"S={self.nfe}, eta={self.eta:g}, {self.spacing}"

    def update(self, x: Tensor, eps: Tensor, t: int, t_next: int, z: Tensor | None) -> tuple[Tensor, Tensor]:
        """One DDIM update from step t to t_next (-1: to x_0); returns (x_{t_next}, x0_hat)."""
        a_t = self.alphas_cumprod[t]
        a_next = self.alphas_cumprod[t_next] if t_next >= 0 else 1.0
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = self.eta * math.sqrt((1 - a_next) / (1 - a_t)) * math.sqrt(1 - a_t / a_next)
        x_next = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next - sigma**2, 0.0)) * eps
        if sigma > 0 and z is not None:
            x_next = x_next + sigma * z.to(x_next.dtype)  # the product in the chain's precision
        return x_next, x0

    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        """A learned variance is not used: the step's noise is fixed by the method."""
        eps = out.eps
        t_int, t_next = self.timesteps[k], (self.timesteps[k + 1] if k + 1 < self.nfe else -1)
        # the ancestral sampler's draws: one z per step but the last (none at all when eta = 0)
        z = torch.randn(x.shape, device=x.device, generator=generator) if self.eta > 0 and t_next >= 0 else None
        return self.update(x, eps.to(x.dtype), t_int, t_next, z)[0]
