"""EDM's sampler (Karras et al. 2022, Algorithm 2) on a network trained with a discrete DDPM schedule.

The trained model seen as a denoiser. x_t = sqrt(abar_t) (x_0 + sigma_t eps) with sigma_t = sqrt((1 - abar_t) /
abar_t), so x = x_t / sqrt(abar_t) = x_0 + sigma eps is EDM's variance-exploding variable and

    D(x; sigma) = x - sigma eps_hat(x / sqrt(1 + sigma^2), t(sigma))      (abar = 1 / (1 + sigma^2))

with t(sigma) the fractional timestep found by interpolating log sigma over the schedule's T values (exact at its
own sigmas; k-diffusion's DiscreteSchedule does the same), or the nearest t. Whatever the network predicts (eps,
x_0, v) is read as eps at that noise level by the parametrization; a learned variance is not used.

Sigmas: Karras' rho-schedule (eq. 5) between the schedule's sigma_min = sigma_0 and sigma_max = sigma_{T-1}, or
the sigmas of a discrete spacing (trailing, logsnr, ...), then sigma_N = 0. Each step i (Algorithm 2):
    gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
    sigma_hat = sigma_i (1 + gamma_i);  x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z
    d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;  x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d      (Euler)
    if sigma_{i+1} > 0: d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1};
                        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2                      (Heun)
N steps cost 2N - 1 network calls. S_churn = 0 is the deterministic sampler (Algorithm 1). The start is the
model's own prior x_T ~ N(0, I), i.e. x_0 = sqrt(1 + sigma_max^2) z.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

from ddpm.core.diffusion import EpsModel, GaussianDiffusion
from ddpm.core.samplers.base import Sampler
from ddpm.core.samplers.spacing import karras_sigmas, schedule_sigmas, spaced_timesteps
from ddpm.errors import ConfigError

T_MAPS = ("log_sigma", "nearest")


class EDMSampler(Sampler):
    name = "edm"

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int = 18, spacing: str = "karras", rho: float = 7.0,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 t_map: str = "log_sigma", clip_denoised: bool = False, progress: bool = True,
                 cap_at_num_timesteps: bool = False, sigma_max: float | None = None) -> None:
        """num_steps: N sigma steps (2N - 1 network calls); spacing: karras (rho) or a discrete spacing;
        s_churn, s_tmin, s_tmax, s_noise: Algorithm 2's stochasticity; t_map: log_sigma | nearest; sigma_max:
        start the karras sigmas lower than the schedule's sigma_{T-1} (a cosine schedule's is ~2e4: most of N
        is then spent where the image is pure noise; EDM's own is 80), None: the schedule's."""
        super().__init__(diffusion, num_steps, spacing, progress, cap_at_num_timesteps)
        if t_map not in T_MAPS:
            raise ConfigError(f"sampler.t_map must be one of {T_MAPS}, got {t_map!r}")
        for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
            if not value >= 0:
                raise ConfigError(f"sampler.{name} must be >= 0, got {value}")
        if not s_tmin <= s_tmax:
            raise ConfigError(f"sampler.s_tmin must be <= sampler.s_tmax, got {s_tmin} > {s_tmax}")
        self.spacing, self.rho, self.t_map, self.clip_denoised = spacing, float(rho), t_map, clip_denoised
        self.s_churn, self.s_noise = float(s_churn), float(s_noise)
        self.s_tmin, self.s_tmax = float(s_tmin), float(s_tmax)
        abar = diffusion.alphas_cumprod.detach().cpu().tolist()
        self.schedule_sigmas = schedule_sigmas(abar)  # increasing in t
        self.log_sigmas = [math.log(s) for s in self.schedule_sigmas]
        top = self.schedule_sigmas[-1] if sigma_max is None else min(float(sigma_max), self.schedule_sigmas[-1])
        if not top > self.schedule_sigmas[0]:
            raise ConfigError(f"sampler.sigma_max must exceed the schedule's sigma_min {self.schedule_sigmas[0]:.4g}, "
                              f"got {sigma_max}")
        self.sigma_max = top
        if spacing == "karras":
            self.sigmas = karras_sigmas(self.schedule_sigmas[0], top, self.num_steps, self.rho)
        else:
            self.sigmas = [self.schedule_sigmas[t] for t in spaced_timesteps(len(abar), self.num_steps, spacing, abar)]
        self.sigmas.append(0.0)
        # the (rounded) timestep of each step, for chain frames and progress reports
        self.timesteps = [round(self.t_of(s)) for s in self.sigmas[:-1]]

    @property
    def nfe(self) -> int:
        return 2 * self.num_steps - 1

    def settings(self) -> str:
        where = f"karras rho={self.rho:g}, sigma_max={self.sigma_max:.4g}" if self.spacing == "karras" else self.spacing
        churn = f", churn={self.s_churn:g}, s_noise={self.s_noise:g}" if self.s_churn else ""
        return f"Heun, N={self.num_steps}, NFE={self.nfe}, {where}{churn}"

    def t_of(self, sigma: float) -> float:
        """The fractional timestep of noise level sigma: log sigma interpolated linearly over the schedule's T
        log-sigmas (exact at each t), clamped to [0, T-1]; or the nearest t in log sigma (t_map=nearest)."""
        ls, table = math.log(sigma), self.log_sigmas
        if ls <= table[0]:
            return 0.0
        if ls >= table[-1]:
            return float(len(table) - 1)
        hi = bisect.bisect_left(table, ls)
        lo = hi - 1
        w = (ls - table[lo]) / (table[hi] - table[lo])
        if self.t_map == "nearest":
            return float(hi if w >= 0.5 else lo)
        return lo + w

    def denoise(self, model: EpsModel, x: Tensor, sigma: float) -> Tensor:
        """D(x; sigma): the network at the fractional t of sigma, its output read as eps there."""
        t = self.t_of(sigma)
        scale = 1.0 / math.sqrt(1.0 + sigma * sigma)  # alpha = sqrt(abar) at this sigma
        x_vp = x * scale
        out = model(x_vp, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))
        eps = self.diffusion.parametrization.eps_at(out, x_vp, scale, sigma * scale)
        denoised = x - sigma * eps.to(x.dtype)
        return denoised.clamp(-1.0, 1.0) if self.clip_denoised else denoised

    def gamma(self, sigma: float) -> float:
        if self.s_churn == 0 or not self.s_tmin <= sigma <= self.s_tmax:
            return 0.0
        return min(self.s_churn / self.num_steps, math.sqrt(2.0) - 1.0)

    def start(self, x_T: Tensor) -> Tensor:
        """x = x_T / sqrt(abar) at sigma_0: the model's own prior x_T ~ N(0, I) in EDM's variable."""
        return x_T * math.sqrt(1.0 + self.sigmas[0] ** 2)

    def model_scale(self, x: Tensor, k: int) -> Tensor:
        """x_t = x / sqrt(1 + sigma_k^2), the network's scale (x itself after the last step, sigma_N = 0)."""
        sigma = self.sigmas[k]
        return x / math.sqrt(1.0 + sigma * sigma)

    def step(self, model: EpsModel, k: int, x: Tensor, generator: torch.Generator | None, state: dict,
             need_denoised: bool = False) -> tuple[Tensor, Tensor | None]:
        """Algorithm 2's step k: churn, an Euler step, and Heun's correction unless sigma_{k+1} = 0."""
        sigma, sigma_next = self.sigmas[k], self.sigmas[k + 1]
        gamma = self.gamma(sigma)
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            z = torch.randn(x.shape, device=x.device, generator=generator).to(x.dtype)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * z
        denoised = self.denoise(model, x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = (x_next - self.denoise(model, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        return x_next, denoised
