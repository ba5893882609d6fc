"""The Gaussian diffusion of Ho et al. (2020): forward process, its posterior and the reverse process.

Notation follows the paper with code indices t = 0..T-1 (the paper's t = 1..T):
    alphas_cumprod[t]      = abar_t = prod_{s <= t} (1 - beta_s)
    alphas_cumprod_prev[t] = abar_{t-1}, with abar_{-1} := 1
All coefficients are float64 buffers; `_gather` casts to the dtype of the tensor they multiply.
This module knows nothing of the network: what its output means (eps, x_0 or v; a fixed or learned variance) is
the `Parametrization`'s (`parametrization.py`), which `split_output` applies once, so samplers, bits/dim and
guidance see eps. The training losses are `objective.py`'s, the bound in bits/dim `likelihood.py`'s.
Formulas: docs/math.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ddpm.core.parametrization import PREDICTIONS, VARIANCES, ModelOutput, Parametrization
from ddpm.core.schedules import validate_betas

VARIANCE_TYPES = tuple(VARIANCES)
__all__ = ["GaussianDiffusion", "ModelOutput", "ReverseStep", "PREDICTIONS", "VARIANCE_TYPES", "EpsModel"]

EpsModel = Callable[[Tensor, Tensor], Tensor]  # the network f(x_t, t); x_t (B, C, H, W), t (B,) long


@dataclass
class ReverseStep:
    """p(x_{t-1} | x_t) = N(mean, exp(log_variance)), plus the x0 estimate it came from."""

    mean: Tensor
    variance: Tensor  # (B, 1, 1, 1); (B, C, H, W) for a learned variance
    log_variance: Tensor  # as variance
    pred_x0: Tensor


def _gather(coef: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """coef[t] reshaped to (B, 1, ..., 1) so it broadcasts against `like` (B, C, H, W)."""
    out = coef.to(like.device)[t].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Holds the schedule buffers and the closed forms built from them.

    An `nn.Module` only so that `.to(device)` moves the buffers with the network; the buffers are
    non-persistent, so checkpoints hold the schedule's config, never a copy of its numbers.
    """

    def __init__(self, betas: Tensor, variance_type: str = "fixedlarge", prediction: str = "eps",
                 sigma_data: float | None = None) -> None:
        """sigma_data: the data's standard deviation, for prediction=edm's preconditioning only."""
        super().__init__()
        self.parametrization = Parametrization.of(prediction, variance_type, sigma_data)
        betas = validate_betas(torch.as_tensor(betas, dtype=torch.float64).cpu())
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])

        # posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta_tilde_0 = 0: use beta_tilde_1 at index 0 (DDPM / improved-diffusion) so log stays finite.
        posterior_variance_clipped = posterior_variance.clone()
        if len(betas) > 1:
            posterior_variance_clipped[0] = posterior_variance[1]
        else:  # T = 1: there is no beta_tilde_1; fall back to beta_0 so the decoder stays defined.
            posterior_variance_clipped[0] = betas[0]

        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_variance_clipped.log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        # the reverse variances' tables (which one a run uses is its Parametrization's): beta_t with beta_tilde_1 at
        # t = 0 (fixedlarge: DDPM's choice for the decoder NLL) and log beta_t (a learned variance's frac = 1 end)
        large = betas.clone()
        large[0] = posterior_variance_clipped[0]
        buffers.update(large_variance=large, large_log_variance=large.log(), log_betas=betas.log())
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def variance_type(self) -> str:
        return self.parametrization.variance.name

    @property
    def prediction(self) -> str:
        return self.parametrization.prediction.name

    @property
    def sigma_data(self) -> float | None:
        return self.parametrization.sigma_data

    @property
    def model_log_variance(self) -> Tensor:
        """The fixed reverse variance's log over t (T,), as improved-diffusion names it."""
        t = torch.arange(self.num_timesteps, device=self.betas.device)
        return self.parametrization.variance.log_variance(self, t, self.betas, None)

    @property
    def model_variance(self) -> Tensor:
        t = torch.arange(self.num_timesteps, device=self.betas.device)
        return self.parametrization.variance.variance(self, t, self.betas, None)

    def at(self, coef: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """A coefficient table at t, shaped to broadcast against `like` and in its dtype."""
        return _gather(coef, t, like)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    # ----- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I): mean, variance, log-variance."""
        mean = _gather(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = _gather(1.0 - self.alphas_cumprod, t, x0)
        return mean, variance, variance.log()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0): mean mu_tilde, variance beta_tilde_t, log-variance (beta_tilde_1 at t=0)."""
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _gather(self.posterior_variance, t, x_t), _gather(self.posterior_log_variance_clipped, t, x_t)

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Inverse of `predict_x0_from_eps`."""
        numerator = _gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0
        return numerator / _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def v_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
        abar = _gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def predict_eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (x_t and v are a rotation of (x_0, eps))."""
        return _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _gather(self.sqrt_alphas_cumprod, t, x_t) * v

    def predict_x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return _gather(self.sqrt_alphas_cumprod, t, x_t) * x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    # ----- reading the network's output (the Parametrization's; these name it for callers) ------------------
    def output_channels(self, channels: int) -> int:
        """Channels the network must return for images of `channels` channels: 2C with a learned variance."""
        return self.parametrization.out_channels(channels)

    def split_output(self, out: Tensor, x_t: Tensor, t: Tensor) -> ModelOutput:
        """The network's output (B, C or 2C, H, W) as eps and, for a learned variance, frac = (v + 1) / 2."""
        return self.parametrization.read(self, out, x_t, t)

    def log_variance_of(self, t: Tensor, like: Tensor, var_frac: Tensor | None = None) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): the fixed choice (B, 1, 1, 1), or a learned one per element."""
        return self.parametrization.variance.log_variance(self, t, like, var_frac)

    # ----- reverse process -------------------------------------------------------------------
    def reverse_mean_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Paper eq. 11: mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
        coef = _gather(self.betas / self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - coef * eps) / _gather(self.alphas.sqrt(), t, x_t)

    def p_mean_variance(self, eps: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True,
                        var_frac: Tensor | None = None) -> ReverseStep:
        """p(x_{t-1} | x_t) through x0_hat: x0_hat from eps, optionally clipped to [-1, 1], then mu_tilde; the
        variance is the parametrization's (a learned one from var_frac).

        Without clipping this equals `reverse_mean_from_eps`; clipping is for sampling only.
        """
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        log_variance = self.log_variance_of(t, x_t, var_frac)
        variance = self.parametrization.variance.variance(self, t, x_t, var_frac)
        return ReverseStep(mean=mean, variance=variance, log_variance=log_variance, pred_x0=pred_x0)

    def p_sample_step(self, step: ReverseStep, t: Tensor, noise: Tensor) -> Tensor:
        """x_{t-1} = mean + sigma_t z, with no noise at t = 0 (the sample is the mean there)."""
        nonzero = (t != 0).to(noise.dtype).reshape(t.shape[0], *([1] * (noise.ndim - 1)))
        return step.mean + nonzero * (0.5 * step.log_variance).exp() * noise
