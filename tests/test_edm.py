"""EDM's sampler (Karras et al. 2022) and DPM-Solver++(2M) SDE against closed forms and float64 hand computations.

As in test_samplers.py, data x_0 ~ N(mu, s^2) has an exact eps-predictor. EDM calls the network at fractional t;
the exact predictor there is computed independently of the sampler: sigma(t) by numpy's linear interpolation of
log sigma_t over the integer t, abar = 1 / (1 + sigma^2). Tolerances: Monte-Carlo (n = 40,000: 5 standard errors
are 0.0063 for the mean, 0.0088 for the std) plus the discretisation error, stated per case (about twice the
error measured at that N; it shrinks with N, which is asserted too).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.parametrization import PREDICTIONS
from ddpm.core.samplers import DPMSolverSampler, EDMSampler, spaced_timesteps
from ddpm.core.samplers.spacing import karras_sigmas
from ddpm.core.schedules import cosine_betas, linear_betas
from tests.helpers.gaussian import MU, S_DATA, exact_eps

T, N = 1000, 40_000
MC_MEAN, MC_STD = 0.0063, 0.0088


def diffusion(schedule: str = "linear") -> GaussianDiffusion:
    return GaussianDiffusion(linear_betas(T) if schedule == "linear" else cosine_betas(T))


def moments(sampler, model, seed: int = 3) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(N, 1, 1, 1, generator=g, dtype=torch.float64)
    out = sampler.sample(model, x_T.shape, generator=g, noise=x_T).images.flatten()
    return out.mean().item(), out.std().item()


# ----- sigmas and t(sigma) -----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_t_of_sigma_is_exact_at_the_schedules_own_sigmas(schedule):
    d = diffusion(schedule)
    s = EDMSampler(d, progress=False)
    sigmas = ((1 - d.alphas_cumprod) / d.alphas_cumprod).sqrt().tolist()
    assert max(abs(s.t_of(sig) - t) for t, sig in enumerate(sigmas)) < 1e-9
    # halfway in log sigma between t and t + 1 is t + 0.5; outside the schedule t is clamped
    assert s.t_of(math.sqrt(sigmas[500] * sigmas[501])) == pytest.approx(500.5, abs=1e-9)
    assert s.t_of(sigmas[0] / 2) == 0.0 and s.t_of(sigmas[-1] * 2) == T - 1
    nearest = EDMSampler(d, t_map="nearest", progress=False)
    assert nearest.t_of(math.sqrt(sigmas[500] * sigmas[501]) * 0.999) == 500.0
    assert nearest.t_of(sigmas[700]) == 700.0


@pytest.mark.parametrize("n", [1, 2, 5, 18, 64])
def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_zero(n):
    d = diffusion()
    s = EDMSampler(d, num_steps=n, progress=False)
    abar = d.alphas_cumprod.double()
    sigma_min, sigma_max = math.sqrt((1 - abar[0]) / abar[0]), math.sqrt((1 - abar[-1]) / abar[-1])
    assert len(s.sigmas) == n + 1 and s.sigmas[-1] == 0.0
    assert s.sigmas[0] == pytest.approx(sigma_max, rel=1e-12)
    if n > 1:
        assert s.sigmas[n - 1] == pytest.approx(sigma_min, rel=1e-12)
    assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))
    # eq. 5 by hand for rho = 7 at i = 1
    if n > 2:
        hand = (sigma_max ** (1 / 7) + (sigma_min ** (1 / 7) - sigma_max ** (1 / 7)) / (n - 1)) ** 7
        assert s.sigmas[1] == pytest.approx(hand, rel=1e-12)
    assert s.nfe == 2 * n - 1


def test_karras_spacing_for_discrete_samplers_is_the_nearest_t_in_log_sigma():
    d = diffusion()
    abar = d.alphas_cumprod.tolist()
    ts = spaced_timesteps(T, 10, "karras", abar)
    log_sigma = [0.5 * math.log((1 - a) / a) for a in abar]
    targets = karras_sigmas(math.exp(log_sigma[0]), math.exp(log_sigma[-1]), 10)
    want = [min(range(T), key=lambda t: abs(log_sigma[t] - math.log(s))) for s in targets]
    assert ts == want and ts[0] == T - 1 and ts[-1] == 0


def test_a_sampler_refuses_settings_it_cannot_run():
    d = diffusion()
    with pytest.raises(ValueError, match="t_map"):
        EDMSampler(d, t_map="cubic")
    with pytest.raises(ValueError, match="s_churn"):
        EDMSampler(d, s_churn=-1)
    with pytest.raises(ValueError, match="rho"):
        EDMSampler(d, rho=0)


# ----- the exact Gaussian score ------------------------------------------------------------------
@pytest.mark.parametrize("schedule, sigma_max, tolerances", [
    ("linear", None, ((18, 0.07), (64, 0.01), (200, 0.005))),  # sigma_max = 157
    ("cosine", None, ((18, 0.4), (64, 0.03), (200, 0.006))),  # sigma_max = 2.0e4: few steps are spent on the data
    ("cosine", 80.0, ((18, 0.07), (64, 0.01), (200, 0.006))),
])
def test_deterministic_edm_samples_the_data_distribution_and_improves_with_n(schedule, sigma_max, tolerances):
    d = diffusion(schedule)
    model = exact_eps(d)
    errors = []
    for n, tol in tolerances:
        mean, std = moments(EDMSampler(d, num_steps=n, sigma_max=sigma_max, progress=False), model)
        assert abs(mean - MU) < MC_MEAN + 0.005 and abs(std - S_DATA) < MC_STD + tol, (n, mean, std)
        errors.append(abs(std - S_DATA))
    assert errors[0] > errors[1] > errors[2] - MC_STD


def test_stochastic_edm_samples_the_data_distribution():
    d = diffusion()
    model = exact_eps(d)
    for n, tol in ((40, 0.04), (160, 0.01)):
        sampler = EDMSampler(d, num_steps=n, s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.0, progress=False)
        mean, std = moments(sampler, model)
        assert abs(mean - MU) < MC_MEAN + 0.005 and abs(std - S_DATA) < MC_STD + tol, (n, mean, std)


def test_dpm_solver_sde_samples_the_data_distribution():
    d = diffusion()
    for n, tol in ((20, 0.03), (50, 0.01)):
        sampler = DPMSolverSampler(d, num_steps=n, sde=True, clip_denoised=False, progress=False)
        mean, std = moments(sampler, exact_eps(d))
        assert abs(mean - MU) < MC_MEAN + 0.005 and abs(std - S_DATA) < MC_STD + tol, (n, mean, std)


def test_deterministic_edm_ignores_the_generator_and_churn_uses_it():
    d = diffusion()
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = exact_eps(d)

    def run(sampler, seed):
        return sampler.sample(model, x_T.shape, torch.Generator().manual_seed(seed), noise=x_T.clone()).images

    det = EDMSampler(d, num_steps=8, progress=False)
    assert torch.equal(run(det, 1), run(det, 2))
    churn = EDMSampler(d, num_steps=8, s_churn=10, progress=False)
    assert not torch.equal(run(churn, 1), run(churn, 2)) and torch.equal(run(churn, 1), run(churn, 1))


# ----- one step by hand --------------------------------------------------------------------------
def test_one_heun_step_with_churn_and_the_euler_last_step_by_hand():
    """N = 2: step 0 (churn, then Heun) from sigma_max to sigma_min, step 1 (Euler) to 0, against float64 hand
    arithmetic with the same injected noise and a network that is an arbitrary smooth function of (x, t)."""
    d = diffusion()
    s_churn, s_noise = 1.0, 1.007
    sampler = EDMSampler(d, num_steps=2, s_churn=s_churn, s_noise=s_noise, progress=False)
    net = lambda x, t: torch.tanh(0.7 * x) + 1e-3 * t.double().reshape(-1, 1, 1, 1)  # noqa: E731
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = sampler.sample(net, x_T.shape, torch.Generator().manual_seed(5), noise=x_T).images

    abar = d.alphas_cumprod.double()
    log_sigma = (0.5 * torch.log((1 - abar) / abar)).tolist()
    s_max, s_min = math.exp(log_sigma[-1]), math.exp(log_sigma[0])

    def t_of(sigma):
        return float(np.interp(math.log(sigma), log_sigma, np.arange(T)))

    def denoise(x, sigma):
        c_in = 1 / math.sqrt(1 + sigma**2)
        return x - sigma * net(x * c_in, torch.full((x.shape[0],), t_of(sigma)))

    g = torch.Generator().manual_seed(5)  # the sampler's draws, in order: churn at step 0, churn at step 1
    z, z1 = torch.randn(x_T.shape, generator=g).double(), torch.randn(x_T.shape, generator=g).double()
    gamma = min(s_churn / 2, math.sqrt(2) - 1)
    x = x_T * math.sqrt(1 + s_max**2)
    s_hat = s_max * (1 + gamma)
    x_hat = x + math.sqrt(s_hat**2 - s_max**2) * s_noise * z
    d0 = (x_hat - denoise(x_hat, s_hat)) / s_hat
    x1 = x_hat + (s_min - s_hat) * d0
    d1 = (x1 - denoise(x1, s_min)) / s_min
    x1 = x_hat + (s_min - s_hat) * (d0 + d1) / 2
    # step 1: sigma_min -> 0 also churns (gamma > 0 there), then Euler
    s_hat1 = s_min * (1 + gamma)
    x_hat1 = x1 + math.sqrt(s_hat1**2 - s_min**2) * s_noise * z1
    want = x_hat1 + (0 - s_hat1) * (x_hat1 - denoise(x_hat1, s_hat1)) / s_hat1
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    calls = []
    sampler.sample(lambda x, t: calls.append(t) or net(x, t), x_T.shape, torch.Generator().manual_seed(5), noise=x_T)
    assert len(calls) == sampler.nfe == 3


def test_one_dpm_solver_sde_step_by_hand():
    """The first (first-order) and second (2M) SDE updates against float64 arithmetic with the same noise."""
    d = diffusion()
    sampler = DPMSolverSampler(d, num_steps=3, sde=True, clip_denoised=False, progress=False)
    t0, t1, t2 = sampler.timesteps
    abar = d.alphas_cumprod.double()
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0a, x0b = 0.3 * x, -0.2 * x
    z1, z2 = torch.randn_like(x), torch.randn_like(x)

    def coef(t):
        return abar[t].sqrt().item(), (1 - abar[t]).sqrt().item(), 0.5 * math.log(abar[t] / (1 - abar[t]))

    (_, s0, l0), (a1, s1, l1), (a2, s2, l2) = coef(t0), coef(t1), coef(t2)
    h = l1 - l0
    want1 = s1 / s0 * math.exp(-h) * x + a1 * (1 - math.exp(-2 * h)) * x0a + s1 * math.sqrt(1 - math.exp(-2 * h)) * z1
    torch.testing.assert_close(sampler.update(x, x0a, None, t0, t1, None, z1), want1, rtol=1e-12, atol=1e-12)
    h2, r = l2 - l1, (l1 - l0) / (l2 - l1)
    dd = (1 + 1 / (2 * r)) * x0b - 1 / (2 * r) * x0a
    want2 = s2 / s1 * math.exp(-h2) * x + a2 * (1 - math.exp(-2 * h2)) * dd + s2 * math.sqrt(1 - math.exp(-2 * h2)) * z2
    torch.testing.assert_close(sampler.update(x, x0b, x0a, t1, t2, t0, z2), want2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_eps_at_fractional_noise_levels_agrees_with_the_discrete_reading(prediction):
    """What EDM reads between timesteps equals the discrete reading at every integer t (float64), for eps, x0, v and
    EDM's preconditioned F."""
    from ddpm.core.parametrization import Parametrization

    d = diffusion()
    param = Parametrization.of(prediction, sigma_data=0.5 if prediction == "edm" else None)
    t = torch.tensor([0, 17, 500, 999])
    x_t = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    pred = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    want = param.read(d, pred, x_t, t).eps
    abar = d.alphas_cumprod.double()
    for i, ti in enumerate(t.tolist()):
        got = param.eps_at(pred[i:i + 1], x_t[i:i + 1], abar[ti].sqrt().item(), (1 - abar[ti]).sqrt().item())
        torch.testing.assert_close(got, want[i:i + 1], rtol=1e-10, atol=1e-10)
