"""Log-likelihood pieces of the variational bound (Ho et al. 2020 eq. 5; improved-diffusion's bits/dim).

    L = L_0 + sum_{t>0} L_t + L_T,  L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_T = KL(q(x_T | x_0) || N(0, I)),  L_0 = -log p(x_0 | x_1) under a discretized Gaussian decoder.
Everything is computed in float64 and reported in bits per dimension (nats / (D ln 2)).
The bound's terms for a diffusion and a network live here, and nowhere else: training with L_vlb / L_hybrid
(`objective.py`) and evaluation (bits/dim) both call `vlb_terms_bpd`.
The normal CDF is the exact one (`torch.special.ndtr` / `log_ndtr`), not the tanh approximation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ddpm.core.diffusion import GaussianDiffusion

EpsModel = Callable[[Tensor, Tensor], Tensor]

LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = 2.0 / 255.0,
                                        edge: float = 0.999) -> Tensor:
    """log P(x) for x on a grid of bins of width `bin_width` in [-1, 1], under N(mean, e^(2 log_scale)).

    Interior bins integrate the density over [x - w/2, x + w/2]; the edge bins (x < -edge, x > edge)
    integrate the tails out to -inf / +inf. Elementwise, in nats.
    """
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + bin_width / 2)
    lower = inv_std * (x - mean - bin_width / 2)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X < upper): the left edge bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > lower): the right edge bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_ndtr_diff(upper, lower)))


def log_ndtr_diff(upper: Tensor, lower: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, accurate in both tails.

    In the right tail Phi(u) - Phi(l) is computed as Phi(-l) - Phi(-u), so neither term is close to 1.
    """
    right = (upper + lower) > 0
    a, b = torch.where(right, -lower, upper), torch.where(right, -upper, lower)  # Phi(a) - Phi(b), a > b
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_a + torch.log1p(-torch.exp(log_b - log_a).clamp(max=1.0 - 1e-16))


def mean_over_dims(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


def vlb_terms_bpd(diffusion: GaussianDiffusion, eps: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool,
                  var_frac: Tensor | None = None) -> Tensor:
    """L_t in bits/dim for each sample: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, and the
    discretized-Gaussian decoder NLL -log p(x_0|x_1) at t = 0 (variance: beta_tilde_1 convention, or the
    learned one). Computed in float64 (gradients flow to var_frac). (B,)"""
    x0, x_t, eps = x0.double(), x_t.double(), eps.double()
    var_frac = var_frac.double() if var_frac is not None else None
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    step = diffusion.p_mean_variance(eps, x_t, t, clip_denoised=clip_denoised, var_frac=var_frac)
    kl = mean_over_dims(normal_kl(true_mean, true_log_var, step.mean, step.log_variance)) / LN2
    nll = -mean_over_dims(discretized_gaussian_log_likelihood(x0, step.mean, 0.5 * step.log_variance)) / LN2
    return torch.where(t == 0, nll, kl)


def prior_bpd(diffusion: GaussianDiffusion, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,); no network involved."""
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, _, log_var = diffusion.q_mean_variance(x0.double(), t)
    return mean_over_dims(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))) / LN2


@torch.no_grad()
def bits_per_dim(diffusion: GaussianDiffusion, model: EpsModel, x0: Tensor, clip_denoised: bool = False,
                 chunk: int = 256, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The full bound for each image: every t (T network calls per image), batched over t.

    Pairs (image, t) are evaluated `chunk` at a time, so small images fill a batch with many t. The network's
    output is read by the diffusion's parametrization (`split_output`), so x0-, v- and learned-variance models
    are scored by the same bound. Returns per-image `total`, `prior`, `decoder` (L_0) and `terms` (B, T) in
    bits/dim.
    """
    b, n_t = x0.shape[0], diffusion.num_timesteps
    image_idx = torch.arange(b, device=x0.device).repeat_interleave(n_t)  # (B*T,)
    t_all = torch.arange(n_t, device=x0.device).repeat(b)  # (B*T,)
    terms = torch.empty(b * n_t, dtype=torch.float64, device=x0.device)
    for start in range(0, b * n_t, chunk):
        sl = slice(start, start + chunk)
        x0_c, t_c = x0[image_idx[sl]], t_all[sl]
        noise = torch.randn(x0_c.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        x_t = diffusion.q_sample(x0_c, t_c, noise)
        out = diffusion.split_output(model(x_t, t_c), x_t, t_c)
        terms[sl] = vlb_terms_bpd(diffusion, out.eps, x0_c, x_t, t_c, clip_denoised, var_frac=out.var_frac)
    terms = terms.reshape(b, n_t)
    prior = prior_bpd(diffusion, x0)
    return {"total": terms.sum(dim=1) + prior, "prior": prior, "decoder": terms[:, 0], "terms": terms}
