"""The exact eps-predictor of Gaussian data, the independent reference every sampler test uses.

For x_0 ~ N(MU, S_DATA^2) and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the optimal eps-predictor is
eps*(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) MU) / (abar_t S_DATA^2 + 1 - abar_t): fed to a sampler as the
network, the samples must have mean MU and standard deviation S_DATA, up to Monte-Carlo and discretisation error.
At a fractional t (EDM's t(sigma)), abar is the schedule's at that t with log sigma_t interpolated linearly between
integer t -- the map the sampler itself assumes.
"""

from __future__ import annotations

import numpy as np
import torch

MU, S_DATA = 0.3, 0.5


def gaussian_eps(abar_all: torch.Tensor, mu: float = MU, s: float = S_DATA):
    """eps*(x_t, t) for the schedule with cumulative products `abar_all` (float64), t integer or fractional."""
    log_sigma = 0.5 * np.log((1 - abar_all.numpy()) / abar_all.numpy())

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            sigma = np.exp(np.interp(t.double().cpu().numpy(), np.arange(len(log_sigma)), log_sigma))
            abar = torch.from_numpy(1 / (1 + sigma**2)).reshape(-1, 1, 1, 1)
        else:
            abar = abar_all[t].reshape(-1, 1, 1, 1)
        return ((1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)).to(x.dtype)

    return eps


def exact_eps(diffusion) -> callable:
    """eps* for a `GaussianDiffusion`'s schedule."""
    return gaussian_eps(diffusion.alphas_cumprod)
