"""Fast samplers (respaced ancestral, DDIM, DPM-Solver++(2M)) against closed forms and hand computations.

The exact-score test needs no training: for data x_0 ~ N(mu, s^2) the optimal eps-predictor is
eps*(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t). Fed to a sampler as "the
network", the samples must have mean mu and standard deviation s, up to Monte-Carlo error (n = 40,000 pixels:
5 standard errors are 0.0063 for the mean and 0.0088 for the standard deviation) and the sampler's
discretisation error (the tolerance added to each bound, about twice the error measured at that S: fewer
steps bias the spread, e.g. the standard deviation is 0.474 with DDIM-50 and 0.443 with fixedsmall-50, both
shrinking towards 0.5 as S grows; DPM-Solver++(2M) reaches 0.509 at 20 steps with logsnr spacing).
"""

import math

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.samplers import SPACINGS, AncestralSampler, DDIMSampler, DPMSolverSampler, respaced, spaced_timesteps
from ddpm.core.schedules import cosine_betas, linear_betas
from tests.helpers.gaussian import MU, S_DATA, exact_eps

T, N = 1000, 40_000


def draw(sampler, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(N, 1, 1, 1, generator=g, dtype=torch.float64)
    out = sampler.sample(exact_eps(sampler.diffusion), x_T.shape, generator=g, noise=x_T).images.flatten()
    return out.mean().item(), out.std().item()


# ----- spacings --------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n_t, steps", [(1000, 2), (1000, 10), (1000, 50), (1000, 100), (1000, 999), (1000, 1000),
                                       (10, 3), (10, 10)])
def test_every_spacing_starts_at_pure_noise_ends_at_zero_and_never_repeats(spacing, n_t, steps):
    ts = spaced_timesteps(n_t, steps, spacing, GaussianDiffusion(linear_betas(n_t)).alphas_cumprod.tolist())
    assert len(ts) == steps and ts[0] == n_t - 1 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing: no duplicates


def test_spacings_are_the_documented_ones():
    assert spaced_timesteps(1000, 5) == [999, 749, 500, 250, 0]  # round(k * 999 / 4): 249.75, 499.5 (to even), ...
    assert spaced_timesteps(1000, 5, "uniform") == [999, 747, 498, 249, 0]  # stride 999 // 4 = 249, last at T-1
    assert spaced_timesteps(1000, 5, "quadratic") == [999, 562, 250, 62, 0]  # (k sqrt(999) / 4)^2
    assert spaced_timesteps(1000, 1000, "quadratic") == list(range(999, -1, -1))
    # logsnr: lambda_t = log(sqrt(abar_t / (1 - abar_t))) evenly spaced, each the nearest t (linear schedule)
    abar = GaussianDiffusion(linear_betas(1000)).alphas_cumprod
    lam = 0.5 * (abar.log() - torch.log1p(-abar))
    ts = spaced_timesteps(1000, 10, "logsnr", abar.tolist())
    gaps = [lam[b].item() - lam[a].item() for a, b in zip(ts, ts[1:])]
    assert ts[0] == 999 and ts[-1] == 0 and max(gaps) - min(gaps) < 0.1 * max(gaps)
    with pytest.raises(ValueError, match="logsnr spacing needs"):
        spaced_timesteps(1000, 10, "logsnr")


@pytest.mark.parametrize("steps", [0, -1, 1001])
def test_impossible_step_counts_and_spacings_are_refused(steps):
    with pytest.raises(ValueError, match="num_steps must be between 1 and T = 1000"):
        spaced_timesteps(1000, steps)
    with pytest.raises(ValueError, match="sampler.spacing must be one of"):
        spaced_timesteps(1000, 10, "leading")


# ----- the respaced ancestral chain --------------------------------------------------------------
def test_respacing_with_all_steps_is_bitwise_the_t_step_sampler():
    """num_steps = T runs DDPM's Algorithm 2 as written here, draw for draw."""
    d = GaussianDiffusion(linear_betas(50))
    model = lambda x, t: 0.3 * x + 0.01 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = AncestralSampler(d, num_steps=50, progress=False).sample(model, x_T.shape, torch.Generator().manual_seed(1),
                                                                   noise=x_T.clone()).images
    g, x = torch.Generator().manual_seed(1), x_T.clone()
    for t_int in range(49, -1, -1):
        t = torch.full((4,), t_int, dtype=torch.long)
        step = d.p_mean_variance(model(x, t), x, t, clip_denoised=True)
        z = torch.randn(x.shape, generator=g) if t_int > 0 else torch.zeros_like(x)
        x = d.p_sample_step(step, t, z)
    assert torch.equal(out, x)


@pytest.mark.parametrize("variance_type", ["fixedlarge", "fixedsmall"])
def test_the_respaced_chain_keeps_abar_and_calls_the_network_with_the_original_t(variance_type):
    d = GaussianDiffusion(cosine_betas(T), variance_type)
    ts = spaced_timesteps(T, 25)
    chain = respaced(d, ts)
    torch.testing.assert_close(chain.alphas_cumprod, d.alphas_cumprod[sorted(ts)], rtol=1e-10, atol=0)  # 25 products
    # beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}; its posterior variance is that of the new chain
    a = [d.alphas_cumprod[t].item() for t in sorted(ts)]
    beta_5 = 1 - a[5] / a[4]
    assert chain.betas[5].item() == pytest.approx(beta_5, rel=1e-12)
    assert chain.posterior_variance[5].item() == pytest.approx(beta_5 * (1 - a[4]) / (1 - a[5]), rel=1e-12)
    seen = []
    AncestralSampler(d, num_steps=25, progress=False).sample(
        lambda x, t: seen.append(int(t[0])) or torch.zeros_like(x), (1, 1, 1, 1), torch.Generator().manual_seed(0))
    assert seen == ts


# ----- exact score: every sampler reproduces the data distribution --------------------------------
@pytest.mark.parametrize("make, tol", [
    (lambda d: AncestralSampler(d, clip_denoised=False, num_steps=100, progress=False), 0.015),
    (lambda d: AncestralSampler(GaussianDiffusion(d.betas, "fixedsmall"), clip_denoised=False, num_steps=250,
                                progress=False), 0.02),
    (lambda d: DDIMSampler(d, num_steps=100, eta=0.0, clip_denoised=False, progress=False), 0.015),
    (lambda d: DDIMSampler(d, num_steps=250, eta=1.0, clip_denoised=False, progress=False), 0.02),
    (lambda d: DPMSolverSampler(d, num_steps=20, spacing="logsnr", clip_denoised=False, progress=False), 0.012),
], ids=["ancestral-100", "ancestral-250-fixedsmall", "ddim-100-eta0", "ddim-250-eta1", "dpm-solver++-20-logsnr"])
def test_exact_score_samples_have_the_data_mean_and_variance(make, tol):
    mean, std = draw(make(GaussianDiffusion(linear_betas(T))))
    assert abs(mean - MU) < 5 * S_DATA / math.sqrt(N) + tol
    assert abs(std - S_DATA) < 5 * S_DATA / math.sqrt(2 * N) + tol


@pytest.mark.parametrize("make, steps", [
    (lambda d, s: DDIMSampler(d, num_steps=s, eta=0.0, clip_denoised=False, progress=False), (5, 20, 100)),
    (lambda d, s: DPMSolverSampler(d, num_steps=s, spacing="logsnr", clip_denoised=False, progress=False), (5, 10, 20)),
    (lambda d, s: AncestralSampler(d, clip_denoised=False, num_steps=s, progress=False), (10, 50, 250)),
], ids=["ddim", "dpm-solver++", "respaced-ancestral"])
def test_the_error_shrinks_as_num_steps_grows(make, steps):
    """Same x_T and draws for each S (common random numbers), so the difference is the discretisation."""
    d = GaussianDiffusion(linear_betas(T))
    errors = []
    for s in steps:
        mean, std = draw(make(d, s))
        errors.append(abs(mean - MU) + abs(std - S_DATA))
    assert errors[0] > errors[1] > errors[2] or errors[2] < 0.005, errors
    assert errors[0] > errors[2]


# ----- DDIM -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta_1_over_all_steps_is_the_fixedsmall_ancestral_sampler(clip):
    """sigma^2 = beta_tilde_t with eta = 1, and the DDIM mean equals the posterior mean given the same x0_hat:
    with the same x_T and the same draws, every state of the two chains agrees (float64)."""
    d = GaussianDiffusion(linear_betas(100), "fixedsmall")
    model = lambda x, t: 3.0 * x - 0.2  # noqa: E731  (pushes x0_hat out of [-1, 1]: clipping matters)
    x_T = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    every = list(range(99, -1, -1))
    a = AncestralSampler(d, clip_denoised=clip, progress=False).sample(
        model, x_T.shape, torch.Generator().manual_seed(4), every, noise=x_T.clone())
    b = DDIMSampler(d, num_steps=100, eta=1.0, clip_denoised=clip, progress=False).sample(
        model, x_T.shape, torch.Generator().manual_seed(4), every, noise=x_T.clone())
    assert a.chain_timesteps == b.chain_timesteps
    for x, y in zip(a.chain, b.chain):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_ddim_eta_0_is_deterministic():
    d = GaussianDiffusion(linear_betas(100))
    x_T = torch.randn(4, 1, 2, 2)
    s = DDIMSampler(d, num_steps=10, progress=False)
    model = lambda x, t: 0.5 * x  # noqa: E731
    a = s.sample(model, x_T.shape, torch.Generator().manual_seed(0), noise=x_T.clone()).images
    b = s.sample(model, x_T.shape, torch.Generator().manual_seed(1), noise=x_T.clone()).images
    assert torch.equal(a, b)


def test_one_ddim_step_against_a_float64_hand_computation():
    betas = linear_betas(T).tolist()
    abar = lambda t: math.prod(1 - b for b in betas[: t + 1])  # noqa: E731
    sampler = DDIMSampler(GaussianDiffusion(torch.tensor(betas, dtype=torch.float64)), eta=0.6, clip_denoised=False)
    x, eps, z, t, t_next = 0.4, -0.3, 1.2, 700, 650
    a_t, a_n = abar(t), abar(t_next)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = 0.6 * math.sqrt((1 - a_n) / (1 - a_t) * (1 - a_t / a_n))
    expected = math.sqrt(a_n) * x0 + math.sqrt(1 - a_n - sigma**2) * eps + sigma * z
    f = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got, got_x0 = sampler.update(f(x), f(eps), t, t_next, f(z))
    assert got.item() == pytest.approx(expected, rel=1e-12) and got_x0.item() == pytest.approx(x0, rel=1e-12)
    last, _ = sampler.update(f(x), f(eps), t, -1, f(z))  # the final step lands on x0_hat
    assert last.item() == pytest.approx(x0, rel=1e-12)


# ----- DPM-Solver++(2M) ---------------------------------------------------------------------------
def test_one_dpm_solver_update_against_a_float64_hand_computation():
    betas = linear_betas(T).tolist()
    abar = lambda t: math.prod(1 - b for b in betas[: t + 1])  # noqa: E731
    lam = lambda t: math.log(math.sqrt(abar(t)) / math.sqrt(1 - abar(t)))  # noqa: E731
    sampler = DPMSolverSampler(GaussianDiffusion(torch.tensor(betas, dtype=torch.float64)), clip_denoised=False)
    x, x0, prev_x0, t_prev, t, t_next = 0.7, 0.2, 0.35, 900, 800, 650
    h, h_prev = lam(t_next) - lam(t), lam(t) - lam(t_prev)
    r = h_prev / h
    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
    ratio, coef = math.sqrt(1 - abar(t_next)) / math.sqrt(1 - abar(t)), math.sqrt(abar(t_next)) * (math.exp(-h) - 1)
    expected, first = ratio * x - coef * d, ratio * x - coef * x0
    f = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    assert sampler.update(f(x), f(x0), f(prev_x0), t, t_next, t_prev).item() == pytest.approx(expected, rel=1e-12)
    assert sampler.update(f(x), f(x0), None, t, t_next, None).item() == pytest.approx(first, rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda d: DDIMSampler(d, num_steps=10, progress=False),
    lambda d: DPMSolverSampler(d, num_steps=10, progress=False),
    lambda d: AncestralSampler(d, num_steps=10, progress=False),
])
def test_every_sampler_makes_num_steps_network_calls_and_records_a_chain(make):
    d = GaussianDiffusion(linear_betas(100))
    sampler = make(d)
    calls = []
    ts = sampler.timesteps
    out = sampler.sample(lambda x, t: calls.append(t) or 0.1 * x, (2, 1, 4, 4), torch.Generator().manual_seed(0),
                         record_timesteps=[ts[0], ts[4], ts[-1]])
    assert len(calls) == sampler.nfe == 10 and out.images.shape == (2, 1, 4, 4)
    assert out.chain_timesteps == [99, ts[4], 0, -1] and len(out.chain) == 4
    assert "S=10" in sampler.describe()


def test_long_sampling_reports_progress_in_logs_that_are_no_terminal(caplog):
    """Under pytest stderr is no terminal: a log line every ~10% instead of a hidden progress bar."""
    from ddpm.core.progress import progress

    with caplog.at_level("INFO", logger="ddpm.core.progress"):
        assert list(progress(range(200), 200, "sampling (test)", True)) == list(range(200))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("sampling (test): 20 of 200, about ") and lines[0].endswith(" s left")
    assert len(lines) == 9
