"""Which timesteps a sampler with fewer steps than T visits.

Every spacing returns S distinct timesteps in descending order that contain T-1 (sampling starts from pure
noise: abar_{T-1} is the smallest) and 0 (the last network call sees the least noise). diffusers' "leading"
spacing is deliberately absent: for 50 of 1000 steps it starts at t = 980, so the first network call sees
an x_T that is not the pure noise it was trained to denoise there.
"""

from __future__ import annotations

import math
from typing import Sequence

SPACINGS = ("trailing", "uniform", "quadratic", "logsnr")


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing",
                     alphas_cumprod: Sequence[float] | None = None) -> list[int]:
    """S = num_steps timesteps of {0, ..., T-1}, descending, T-1 first and 0 last.

    trailing: evenly spaced from T-1 to 0 (rounded); uniform: the DDIM paper's integer stride
    range(0, T, c), c = (T-1) // (S-1), with its last step moved to T-1; quadratic: the DDIM paper's CIFAR-10
    setting, t_k = (k sqrt(T-1) / (S-1))^2 rounded; logsnr: evenly spaced in lambda_t = log(sqrt(abar_t) /
    sqrt(1 - abar_t)) (DPM-Solver's choice: an ODE solver's step is uniform in lambda), each the nearest t; needs
    the schedule's alphas_cumprod. Rounding collisions are pushed apart, keeping T-1 and 0."""
    T, S = int(num_timesteps), int(num_steps)
    if spacing not in SPACINGS:
        raise ValueError(f"sampler.spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= S <= T:
        raise ValueError(f"sampler.num_steps must be between 1 and T = {T} (the schedule's num_timesteps), got {S}")
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
        ascending = _logsnr(alphas_cumprod, T, S)
    for k in range(1, S):  # rounding collisions at the low end (quadratic): push up, then keep T-1 last
        ascending[k] = max(ascending[k], ascending[k - 1] + 1)
    ascending[-1] = T - 1
    for k in range(S - 2, -1, -1):
        ascending[k] = min(ascending[k], ascending[k + 1] - 1)
    return ascending[::-1]


def _logsnr(alphas_cumprod: Sequence[float] | None, T: int, S: int) -> list[int]:
    if alphas_cumprod is None or len(alphas_cumprod) != T:
        raise ValueError("the logsnr spacing needs the schedule's alphas_cumprod")
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in alphas_cumprod]  # decreasing in t
    targets = [lam[0] + k * (lam[T - 1] - lam[0]) / (S - 1) for k in range(S)]
    return [min(range(T), key=lambda t: abs(lam[t] - v)) for v in targets]
