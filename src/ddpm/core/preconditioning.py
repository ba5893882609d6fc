"""The input side of EDM's preconditioning (Karras et al. 2022): a wrapper, as k-diffusion's Denoiser, so that every
sampler, the bits/dim bound and guidance call a preconditioned network like any other, f(x_t, t[, labels]).

The samplers hand the network x_t = x / sqrt(1 + sigma^2) (the VP scale) and a timestep t, integer or fractional
(EDM's sampler between the trained timesteps). The wrapper finds sigma(t) by interpolating ln sigma linearly over
the schedule's T values (exact at integer t, and the inverse of EDM's sampler's t(sigma)), and feeds the network
c_in x = x_t sqrt(1 + sigma^2) / sqrt(sigma^2 + sigma_data^2) (unit variance for data of standard deviation
sigma_data) with c_noise = t. What its output F means is `parametrization.EDMPrediction`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EDMPreconditioned(nn.Module):
    """`net` fed EDM's c_in x_t and c_noise = t. Holds `net` as its only submodule (the schedule's log-sigmas are a
    non-persistent buffer), so a checkpoint's keys are the network's under `net.`."""

    def __init__(self, net: nn.Module, sigma_data: float, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - abar) / abar), persistent=False)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    @property
    def null_label(self) -> int | None:
        return getattr(self.net, "null_label", None)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) (B,) float64: the schedule's at integer t, ln sigma interpolated linearly between them."""
        table = self.log_sigmas.to(t.device)
        if not t.is_floating_point():
            return table[t].exp()
        t = t.double().clamp(0, table.shape[0] - 1)
        lo = t.floor().long().clamp(max=table.shape[0] - 1)
        hi = (lo + 1).clamp(max=table.shape[0] - 1)
        w = t - lo.double()
        return ((1 - w) * table[lo] + w * table[hi]).exp()

    def c_in(self, t: Tensor) -> Tensor:
        """The factor on x_t (B,) float64: c_in(sigma) / sqrt(abar) = sqrt(1 + sigma^2) / sqrt(sigma^2 + sd^2)."""
        sigma2 = self.sigma(t) ** 2
        return ((1 + sigma2) / (sigma2 + self.sigma_data**2)).sqrt()

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        x_in = x_t * self.c_in(t).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return self.net(x_in, t) if y is None else self.net(x_in, t, y)
