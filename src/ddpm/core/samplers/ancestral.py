"""DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2), on the full chain or a respaced one.

Respacing (Nichol & Dhariwal 2021): for kept timesteps t_1 < ... < t_S the chain gets the betas
beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (abar_{t_0} := 1), so abar' of the new chain equals abar at the kept
steps; its posterior and its fixedlarge / fixedsmall variances are those of the new chain, and the network is
still called with the original t_i. With S = T the original chain itself runs (bitwise the T-step sampler).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ddpm.core.diffusion import GaussianDiffusion, ModelOutput
from ddpm.core.samplers.base import Sampler
from ddpm.errors import ConfigError


def respaced(diffusion: GaussianDiffusion, timesteps: Sequence[int]) -> GaussianDiffusion:
    """The diffusion whose step i is the original step ascending(timesteps)[i] (abar kept, betas recomputed)."""
    kept = torch.tensor(sorted(timesteps))
    abar = diffusion.alphas_cumprod.detach().cpu()[kept]  # float64
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return GaussianDiffusion(1.0 - abar / abar_prev, variance_type=diffusion.variance_type,
                             prediction=diffusion.prediction, sigma_data=diffusion.sigma_data)


class AncestralSampler(Sampler):
    """x_T ~ N(0, I); for each kept t (descending), x_{t-1} ~ p(x_{t-1} | x_t) on the (respaced) chain; no noise
    at the last step. num_steps = None or T: all T steps. var_frac (a learned-variance model only): sample with the
    variance head replaced by this constant frac (1: beta', 0: beta_tilde'), the same mean network with a fixed
    variance -- the ablation that separates what the learned variance buys from what L_hybrid did to the mean."""

    name = "ancestral"

    def __init__(self, diffusion: GaussianDiffusion, clip_denoised: bool = True, num_steps: int | None = None,
                 spacing: str = "trailing", progress: bool = True, cap_at_num_timesteps: bool = False,
                 var_frac: float | None = None) -> None:
        super().__init__(diffusion, num_steps, spacing, progress, cap_at_num_timesteps)
        self.clip_denoised = clip_denoised
        if var_frac is not None and (not diffusion.parametrization.variance.learned or not 0.0 <= var_frac <= 1.0):
            raise ConfigError(f"sampler.var_frac={var_frac} needs a learned-variance model (this one's variance: "
                             f"{diffusion.parametrization.variance.name}) and a value in [0, 1]")
        self.var_frac = var_frac
        self._chains: dict[torch.device, GaussianDiffusion] = {}

    def settings(self) -> str:
        spaced = "" if self.nfe == self.diffusion.num_timesteps else f", {self.spacing}"
        frac = "" if self.var_frac is None else f", frac={self.var_frac:g}"
        return f"S={self.nfe}{spaced}, {self.diffusion.variance_type}{frac}"

    def chain(self) -> GaussianDiffusion:
        """The chain the steps run on, on the diffusion's current device."""
        if self.nfe == self.diffusion.num_timesteps:
            return self.diffusion
        device = self.diffusion.betas.device
        if device not in self._chains:
            self._chains[device] = respaced(self.diffusion, self.timesteps).to(device)
        return self._chains[device]

    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        chain, i = self.chain(), self.nfe - 1 - k  # the step's index on the (respaced) chain
        i_t = t if chain is self.diffusion else torch.full_like(t, i)
        # a learned variance: frac interpolates between the respaced chain's beta'_i and beta_tilde'_i
        frac = out.var_frac if self.var_frac is None else torch.full_like(out.eps, self.var_frac)
        step = chain.p_mean_variance(out.eps, x, i_t, clip_denoised=self.clip_denoised, var_frac=frac)
        z = torch.randn(x.shape, device=x.device, generator=generator) if i > 0 else torch.zeros_like(x)
        return chain.p_sample_step(step, i_t, z)
