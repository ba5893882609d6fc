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
from typing import Sequence

import torch
from torch import Tensor

from ..diffusion import EpsModel, GaussianDiffusion, ModelOutput
from .base import SampleOutput, Sampler, StepCallback, progress
from .spacing import karras_sigmas, schedule_sigmas, spaced_timesteps

T_MAPS = ("log_sigma", "nearest")


class EDMSampler(Sampler):
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
            raise ValueError(f"sampler.t_map must be one of {T_MAPS}, got {t_map!r}")
        if not (s_churn >= 0 and s_noise >= 0 and s_tmin <= s_tmax):
            raise ValueError(f"sampler: need s_churn >= 0, s_noise >= 0, s_tmin <= s_tmax; got {s_churn}, "
                             f"{s_noise}, {s_tmin}, {s_tmax}")
        self.spacing, self.rho, self.t_map, self.clip_denoised = spacing, float(rho), t_map, clip_denoised
        self.s_churn, self.s_noise = float(s_churn), float(s_noise)
        self.s_tmin, self.s_tmax = float(s_tmin), float(s_tmax)
        abar = diffusion.alphas_cumprod.detach().cpu().tolist()
        self.schedule_sigmas = schedule_sigmas(abar)  # increasing in t
        self.log_sigmas = [math.log(s) for s in self.schedule_sigmas]
        top = self.schedule_sigmas[-1] if sigma_max is None else min(float(sigma_max), self.schedule_sigmas[-1])
        if not top > self.schedule_sigmas[0]:
            raise ValueError(f"sampler.sigma_max must exceed the schedule's sigma_min {self.schedule_sigmas[0]:.4g}")
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

    def describe(self) -> str:
        where = f"karras rho={self.rho:g}, sigma_max={self.sigma_max:.4g}" if self.spacing == "karras" else self.spacing
        churn = f", churn={self.s_churn:g}, s_noise={self.s_noise:g}" if self.s_churn else ""
        return f"edm_heun(N={self.num_steps}, NFE={self.nfe}, {where}{churn})"

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

    def denoise(self, model: EpsModel, x: Tensor, sigma: float) -> tuple[Tensor, float]:
        """D(x; sigma) and the t the network saw."""
        t = self.t_of(sigma)
        scale = 1.0 / math.sqrt(1.0 + sigma * sigma)  # alpha = sqrt(abar) at this sigma
        x_vp = x * scale
        out = model(x_vp, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))
        eps = self.diffusion.parametrization.eps_at(out, x_vp, scale, sigma * scale)
        denoised = x - sigma * eps.to(x.dtype)
        return (denoised.clamp(-1.0, 1.0) if self.clip_denoised else denoised), t

    def gamma(self, sigma: float) -> float:
        if self.s_churn == 0 or not self.s_tmin <= sigma <= self.s_tmax:
            return 0.0
        return min(self.s_churn / self.num_steps, math.sqrt(2.0) - 1.0)

    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        raise NotImplementedError("EDMSampler runs its own loop (two network calls per step)")

    @torch.no_grad()
    def sample(self, model: EpsModel, shape: Sequence[int], generator: torch.Generator | None = None,
               record_timesteps: Sequence[int] = (), noise: Tensor | None = None,
               callback: StepCallback | None = None) -> SampleOutput:
        """As every sampler: from x_T = `noise` (else N(0, I)); chain frames are x_t = x / sqrt(1 + sigma^2), the
        model's own scale, at the steps whose rounded t is in `record_timesteps`."""
        record = set(record_timesteps)
        x_T = noise if noise is not None else torch.randn(*shape, device=self.diffusion.betas.device,
                                                          generator=generator)
        sigmas = self.sigmas
        x = x_T * math.sqrt(1.0 + sigmas[0] ** 2)
        out = SampleOutput(images=x)
        for i in progress(range(self.num_steps), self.num_steps, f"sampling ({self.describe()})", self.progress):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            if self.timesteps[i] in record and self.timesteps[i] not in out.chain_timesteps:
                out.chain.append(x / math.sqrt(1.0 + sigma * sigma))
                out.chain_timesteps.append(self.timesteps[i])
            gamma = self.gamma(sigma)
            sigma_hat = sigma * (1.0 + gamma)
            if gamma > 0:
                z = torch.randn(x.shape, device=x.device, generator=generator).to(x.dtype)
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * z
            denoised, t = self.denoise(model, x, sigma_hat)
            d = (x - denoised) / sigma_hat
            x_next = x + (sigma_next - sigma_hat) * d
            if sigma_next > 0:
                denoised_next, _ = self.denoise(model, x_next, sigma_next)
                d_next = (x_next - denoised_next) / sigma_next
                x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
            x = x_next
            if callback is not None:
                callback({"i": i, "t": t, "sigma": sigma_hat, "x": x / math.sqrt(1.0 + sigma_next**2),
                          "denoised": denoised})
        if record:
            out.chain.append(x.clone())
            out.chain_timesteps.append(-1)
        out.images = x
        return out
