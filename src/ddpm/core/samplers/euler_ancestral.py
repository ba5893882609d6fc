"""Euler ancestral (k-diffusion's `sample_euler_ancestral`) on a network trained with a discrete schedule.

In EDM's variable x = x_t / sqrt(abar_t) = x_0 + sigma_t eps, sigma_t = sqrt((1 - abar_t) / abar_t), at the visited
timesteps t_0 > ... > t_{S-1} (any spacing) and sigma_S = 0, step k from sigma = sigma_{t_k} to sigma' (the next):

    denoised = x - sigma eps_hat(x_t, t_k)                      (x_0's estimate; optionally clipped)
    sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),  sigma_down = sqrt(sigma'^2 - sigma_up^2)
    x' = x + (sigma_down - sigma) (x - denoised) / sigma + s_noise sigma_up z

One network call per step, at the visited (integer) timesteps. eta = 0 is the Euler method on the probability-flow
ODE, which in this variable is DDIM's deterministic update (Song et al. 2021, sec. 4.3); eta = 1 adds back as
much noise as the ancestral step of the chain from sigma to sigma' would. A first-order method: on Gaussian data
its spread converges like 1/S (tests/test_euler_ancestral.py), so it needs more steps than DDIM or DPM-Solver++.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.core.diffusion import GaussianDiffusion, ModelOutput
from ddpm.core.samplers.base import Sampler
from ddpm.errors import ConfigError


class EulerAncestralSampler(Sampler):
    name = "euler_ancestral"

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int = 100, spacing: str = "trailing",
                 eta: float = 1.0, s_noise: float = 1.0, clip_denoised: bool = False, progress: bool = True,
                 cap_at_num_timesteps: bool = False) -> None:
        """eta: the share of the ancestral noise added back (0: deterministic Euler); s_noise: its scale."""
        super().__init__(diffusion, num_steps, spacing, progress, cap_at_num_timesteps)
        for name, value in (("eta", eta), ("s_noise", s_noise)):
            if not value >= 0:
                raise ConfigError(f"sampler.{name} must be >= 0, got {value}")
        self.eta, self.s_noise, self.clip_denoised = float(eta), float(s_noise), clip_denoised
        abar = diffusion.alphas_cumprod.detach().cpu().tolist()  # float64 host numbers
        self.sigmas = [math.sqrt((1.0 - abar[t]) / abar[t]) for t in self.timesteps] + [0.0]

    def settings(self) -> str:
        return f"S={self.nfe}, eta={self.eta:g}, {self.spacing}"

    def start(self, x_T: Tensor) -> Tensor:
        return x_T * math.sqrt(1.0 + self.sigmas[0] ** 2)

    def model_scale(self, x: Tensor, k: int) -> Tensor:
        sigma = self.sigmas[k]
        return x / math.sqrt(1.0 + sigma * sigma)

    def ancestral_step(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """(sigma_down, sigma_up): the deterministic target and the noise added back."""
        if sigma_next == 0:
            return 0.0, 0.0
        up = min(sigma_next, self.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        return math.sqrt(sigma_next**2 - up**2), up

    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        """A learned variance is not used: the step's noise is fixed by the method."""
        sigma = self.sigmas[k]
        denoised = x - sigma * out.eps.to(x.dtype)
        if self.clip_denoised:
            denoised = denoised.clamp(-1.0, 1.0)
        down, up = self.ancestral_step(sigma, self.sigmas[k + 1])
        x_next = x + (down - sigma) * ((x - denoised) / sigma)
        if up > 0:
            z = torch.randn(x.shape, device=x.device, generator=generator).to(x.dtype)
            x_next = x_next + self.s_noise * up * z
        return x_next
