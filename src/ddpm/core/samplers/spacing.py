"""Which timesteps a sampler with fewer steps than T visits.

Every spacing returns S distinct timesteps in descending order that contain T-1 (sampling starts from pure
noise: abar_{T-1} is the smallest) and 0 (the last network call sees the least noise). diffusers' "leading"
spacing is deliberately absent: for 50 of 1000 steps it starts at t = 980, so the first network call sees
an x_T that is not the pure noise it was trained to denoise there.
"""

from __future__ import annotations

import math
from typing import Sequence

from ddpm.errors import ConfigError

SPACINGS = ("trailing", "uniform", "quadratic", "logsnr", "karras")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5: the rho of their experiments


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = KARRAS_RHO) -> list[float]:
    """Karras et al. (2022) eq. 5, i = 0..N-1, descending from sigma_max to sigma_min (sigma_N = 0 is the sampler's):
    sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    if not rho > 0:
        raise ConfigError(f"sampler.rho must be > 0, got {rho}")
    if num_steps == 1:
        return [float(sigma_max)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]


def schedule_sigmas(alphas_cumprod: Sequence[float]) -> list[float]:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of each discrete t: the noise level of x_t / sqrt(abar_t) (EDM's
    view of a variance-preserving schedule); increasing in t."""
    return [math.sqrt((1 - a) / a) for a in alphas_cumprod]


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing",
                     alphas_cumprod: Sequence[float] | None = None) -> list[int]:
    """S = num_steps timesteps of {0, ..., T-1}, descending, T-1 first and 0 last.

    trailing: evenly spaced from T-1 to 0 (rounded); uniform: the DDIM paper's integer stride
    range(0, T, c), c = (T-1) // (S-1), with its last step moved to T-1; quadratic: the DDIM paper's CIFAR-10
    setting, t_k = (k sqrt(T-1) / (S-1))^2 rounded; logsnr: evenly spaced in lambda_t = log(sqrt(abar_t) /
    sqrt(1 - abar_t)) (DPM-Solver's choice: an ODE solver's step is uniform in lambda), each the nearest t; karras:
    Karras et al.'s rho = 7 sigmas between the schedule's sigma_0 and sigma_{T-1}, each the nearest t in log sigma
    (logsnr and karras need the schedule's alphas_cumprod). Rounding collisions are pushed apart, keeping T-1
    and 0."""
    T, S = int(num_timesteps), int(num_steps)
    if spacing not in SPACINGS:
        raise ConfigError(f"sampler.spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= S <= T:
        raise ConfigError(f"sampler.num_steps must be between 1 and T = {T} (the schedule's num_timesteps), got {S}")
    if S == 1:
        return [T - 1]
    if spacing == "trailing":
        ascending = [round(k * (T - 1) / (S - 1)) for k in range(S)]
    elif spacing == "uniform":
        stride = (T - 1) // (S - 1)
        ascending = [k * stride for k in range(S - 1)] + [T - 1]
    elif spacing == "quadratic":
        ascending = [round((k * math.sqrt(T - 1) / (S - 1)) ** 2) for k in range(S)]
    else:
        ascending = _nearest_in_log_sigma(alphas_cumprod, T, S, spacing)
    for k in range(1, S):  # rounding collisions at the low end (quadratic): push up, then keep T-1 last
        ascending[k] = max(ascending[k], ascending[k - 1] + 1)
    ascending[-1] = T - 1
    for k in range(S - 2, -1, -1):
        ascending[k] = min(ascending[k], ascending[k + 1] - 1)
    return ascending[::-1]


def _nearest_in_log_sigma(alphas_cumprod: Sequence[float] | None, T: int, S: int, spacing: str) -> list[int]:
    """Ascending t nearest to S targets in log sigma (= -lambda): even in lambda (logsnr) or Karras' sigmas."""
    if alphas_cumprod is None or len(alphas_cumprod) != T:
        raise ValueError(f"the {spacing} spacing needs the schedule's alphas_cumprod")
    log_sigma = [math.log(s) for s in schedule_sigmas(alphas_cumprod)]  # increasing in t
    if spacing == "logsnr":
        targets = [log_sigma[0] + k * (log_sigma[T - 1] - log_sigma[0]) / (S - 1) for k in range(S)]
    else:
        targets = [math.log(s) for s in karras_sigmas(math.exp(log_sigma[0]), math.exp(log_sigma[-1]), S)][::-1]
    return [min(range(T), key=lambda t: abs(log_sigma[t] - v)) for v in targets]
