"""The forward process, its posterior and the reverse process against independent computations.

Monte-Carlo tolerances are 5 standard errors of the estimate, so a correct implementation fails
with probability < 1e-6 per assertion (and the seeds are fixed).
"""

import math

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.objective import training_losses, uniform_timesteps
from ddpm.core.samplers import AncestralSampler, chain_timesteps
from ddpm.core.schedules import cosine_betas, linear_betas

T = 1000


@pytest.fixture(scope="module", params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(T) if request.param == "linear" else cosine_betas(T)
    return GaussianDiffusion(betas)


def test_q_sample_monte_carlo_moments(diffusion):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    abar = diffusion.alphas_cumprod.tolist()
    for t_int in (0, 10, 250, 999):
        t = torch.full((n,), t_int)
        xt = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        mean, var = math.sqrt(abar[t_int]) * 0.7, 1 - abar[t_int]
        assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_q_mean_variance_matches_q_sample_definition(diffusion):
    x0 = torch.linspace(-1, 1, 5, dtype=torch.float64).reshape(5, 1, 1, 1)
    t = torch.tensor([0, 1, 100, 500, 999])
    mean, var, log_var = diffusion.q_mean_variance(x0, t)
    abar = diffusion.alphas_cumprod[t].reshape(5, 1, 1, 1)
    torch.testing.assert_close(mean, abar.sqrt() * x0)
    torch.testing.assert_close(var, 1 - abar)
    torch.testing.assert_close(log_var, (1 - abar).log())


def _bayes_posterior(abar_prev: float, alpha: float, x0: float, xt: float) -> tuple[float, float]:
    """Mean and variance of p(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), by numerical
    integration on a fine grid (float64): no closed form of the posterior is used."""
    beta = 1 - alpha
    sd_prior = math.sqrt(1 - abar_prev)
    mu_prior = math.sqrt(abar_prev) * x0
    mu_lik, sd_lik = xt / math.sqrt(alpha), math.sqrt(beta / alpha)  # the likelihood as a function of x_{t-1}
    width = 12 * max(sd_prior, sd_lik)
    lo, hi = min(mu_prior, mu_lik) - width, max(mu_prior, mu_lik) + width
    grid = torch.linspace(lo, hi, 400_001, dtype=torch.float64)
    log_w = -0.5 * ((grid - mu_prior) / sd_prior) ** 2 - 0.5 * (xt - math.sqrt(alpha) * grid) ** 2 / beta
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    mean = (w * grid).sum().item()
    return mean, (w * (grid - mean) ** 2).sum().item()


@pytest.mark.parametrize("t_int", [1, 5, 100, 600, 999])
def test_posterior_is_bayes_rule(diffusion, t_int):
    x0, xt = 0.3, -0.4
    abar = diffusion.alphas_cumprod.tolist()
    mean_ref, var_ref = _bayes_posterior(abar[t_int - 1], 1 - diffusion.betas[t_int].item(), x0, xt)
    t = torch.tensor([t_int])
    mean, var, log_var = diffusion.q_posterior_mean_variance(
        torch.full((1, 1), x0, dtype=torch.float64), torch.full((1, 1), xt, dtype=torch.float64), t
    )
    assert mean.item() == pytest.approx(mean_ref, rel=1e-6, abs=1e-9)
    assert var.item() == pytest.approx(var_ref, rel=1e-4)
    assert log_var.item() == pytest.approx(math.log(var_ref), abs=1e-4)


def test_posterior_at_t0_is_x0_with_beta_tilde_1_log_variance(diffusion):
    x0 = torch.tensor([[0.25]], dtype=torch.float64)
    xt = torch.tensor([[0.9]], dtype=torch.float64)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    assert mean.item() == pytest.approx(0.25, abs=1e-12)  # abar_{-1} = 1: q(x_{-1} | x_0) is a point mass
    assert var.item() == 0.0
    assert log_var.item() == pytest.approx(math.log(diffusion.posterior_variance[1].item()))


def test_x0_and_eps_round_trip(diffusion):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 50, 400, 800, 998, 999])
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(xt, t, x0), eps, rtol=1e-7, atol=1e-7)


def test_two_routes_to_the_reverse_mean_agree(diffusion):
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(16, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(xt.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (16,), generator=g)
    via_x0 = diffusion.p_mean_variance(eps, xt, t, clip_denoised=False).mean
    direct = diffusion.reverse_mean_from_eps(xt, t, eps)
    torch.testing.assert_close(via_x0, direct, rtol=1e-9, atol=1e-9)


def test_clipping_bounds_pred_x0_only_when_asked(diffusion):
    xt = torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)
    eps = torch.zeros_like(xt)
    t = torch.tensor([500])
    assert diffusion.p_mean_variance(eps, xt, t, clip_denoised=True).pred_x0.max() <= 1.0
    assert diffusion.p_mean_variance(eps, xt, t, clip_denoised=False).pred_x0.max() > 1.0


def test_fixed_variances():
    betas = linear_betas(T)
    large, small = GaussianDiffusion(betas, "fixedlarge"), GaussianDiffusion(betas, "fixedsmall")
    torch.testing.assert_close(large.model_variance[1:], betas[1:])
    assert large.model_variance[0] == large.posterior_variance[1]  # beta_tilde_1 at t=0 (DDPM)
    torch.testing.assert_close(small.model_variance, small.posterior_variance)
    assert torch.isfinite(small.model_log_variance).all() and torch.isfinite(large.model_log_variance).all()
    with pytest.raises(ValueError, match="variance_type"):
        GaussianDiffusion(betas, "learned")


def test_no_noise_at_t0(diffusion):
    xt = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    step = diffusion.p_mean_variance(torch.zeros_like(xt), xt, torch.zeros(4, dtype=torch.long))
    huge_noise = torch.full_like(xt, 1e6)
    torch.testing.assert_close(diffusion.p_sample_step(step, torch.zeros(4, dtype=torch.long), huge_noise), step.mean)
    # and at t > 0 the noise does enter, with sigma_t = exp(log_variance / 2)
    t1 = torch.ones(4, dtype=torch.long)
    step1 = diffusion.p_mean_variance(torch.zeros_like(xt), xt, t1)
    out = diffusion.p_sample_step(step1, t1, torch.ones_like(xt))
    torch.testing.assert_close(out - step1.mean, (0.5 * step1.log_variance).exp().expand_as(xt))


def test_sampler_last_step_is_deterministic():
    """With T = 1 the only step is t = 0: different generators, same x_T, same output."""
    d = GaussianDiffusion(torch.tensor([0.5], dtype=torch.float64))
    sampler = AncestralSampler(d, clip_denoised=False, progress=False)
    noise = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    model = lambda x, t: 0.5 * x  # noqa: E731
    a = sampler.sample(model, noise.shape, torch.Generator().manual_seed(0), noise=noise).images
    b = sampler.sample(model, noise.shape, torch.Generator().manual_seed(1), noise=noise).images
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variance_type", ["fixedlarge", "fixedsmall"])
def test_sampler_with_exact_eps_reproduces_gaussian_data(variance_type):
    """Data x_0 ~ N(mu, s^2): then x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar) and the exact
    eps(x_t, t) = E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
    Ancestral sampling driven by it must return N(mu, s^2) up to Monte-Carlo error and the
    discretisation error of T = 1000 steps (the tolerance)."""
    mu, s, n = 0.3, 0.5, 40_000
    d = GaussianDiffusion(linear_betas(T), variance_type)
    abar_all = d.alphas_cumprod

    def exact_eps(x, t):
        abar = abar_all[t].reshape(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)

    sampler = AncestralSampler(d, clip_denoised=False, progress=False)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    x = sampler.sample(exact_eps, (n, 1, 1, 1), generator=g, noise=x_T)
    x = x.images.flatten()
    assert abs(x.mean().item() - mu) < 5 * s / math.sqrt(n) + 0.01
    assert abs(x.std().item() - s) < 5 * s / math.sqrt(2 * n) + 0.02


def test_sampler_records_a_denoising_chain():
    d = GaussianDiffusion(linear_betas(50))
    sampler = AncestralSampler(d, progress=False)
    ts = chain_timesteps(50, 5)
    assert ts == [49, 37, 24, 12, 0]
    out = sampler.sample(lambda x, t: torch.zeros_like(x), (2, 1, 4, 4), torch.Generator().manual_seed(0), ts)
    assert out.chain_timesteps == [49, 37, 24, 12, 0, -1]
    assert len(out.chain) == 6 and torch.equal(out.chain[-1], out.images)


def test_training_loss_is_l_simple_with_uniform_t():
    d = GaussianDiffusion(linear_betas(10))
    g = torch.Generator().manual_seed(4)
    t = uniform_timesteps(d.num_timesteps, 100_000, torch.device("cpu"), g)
    counts = torch.bincount(t, minlength=10).double()
    expected = 10_000
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 35.0  # chi-square, 9 d.o.f.: P(chi2 > 35) < 1e-4

    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.arange(6)
    seen = {}

    def oracle(xt, tt):  # returns the true noise: L_simple must be exactly 0
        seen["xt"] = xt
        return noise

    assert training_losses(d, oracle, x0, t, noise).abs().max().item() == 0.0
    torch.testing.assert_close(seen["xt"], d.q_sample(x0, t, noise))
    zero = training_losses(d, lambda xt, tt: torch.zeros_like(xt), x0, t, noise)
    torch.testing.assert_close(zero, noise.pow(2).flatten(1).mean(1))
    with pytest.raises(ValueError, match="out_channels"):
        training_losses(d, lambda xt, tt: xt[:, :0], x0, t, noise)


@pytest.mark.parametrize("clip", [False, True])
def test_fixedsmall_sampler_follows_a_hand_computed_chain(clip):
    """fixedsmall (sigma_t^2 = beta_tilde_t, the DDPM 256x256 models): the whole ancestral chain recomputed in
    plain-Python float64 from the paper's formulas (x0_hat from eps, optional clip, posterior mean, beta_tilde
    noise, none at t = 0), drawing the same z in the same order, equals the sampler's output."""
    n_t, shape = 6, (2, 1, 1, 2)
    betas = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    d = GaussianDiffusion(torch.tensor(betas, dtype=torch.float64), "fixedsmall")
    model = lambda x, t: 0.7 * x - 0.1 * t.to(x.dtype).reshape(-1, 1, 1, 1)  # noqa: E731
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = AncestralSampler(d, clip_denoised=clip, progress=False).sample(
        model, shape, torch.Generator().manual_seed(9), noise=x_T.clone()).images

    g = torch.Generator().manual_seed(9)  # the sampler's draws, replayed: one z per step for t > 0
    z = {t: torch.randn(shape, generator=g).double().flatten().tolist() for t in range(n_t - 1, 0, -1)}
    abar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(n_t)]
    x = x_T.flatten().tolist()
    per_image = 2  # pixels per image: the model's t term is per image
    for t in range(n_t - 1, -1, -1):
        a_t, a_prev, beta = abar[t], (abar[t - 1] if t > 0 else 1.0), betas[t]
        nxt = []
        for k, xk in enumerate(x):
            eps = 0.7 * xk - 0.1 * t
            x0 = math.sqrt(1 / a_t) * xk - math.sqrt(1 / a_t - 1) * eps
            x0 = max(-1.0, min(1.0, x0)) if clip else x0
            mean = beta * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t) * xk
            var = beta * (1 - a_prev) / (1 - a_t)  # beta_tilde_t
            nxt.append(mean + (math.sqrt(var) * z[t][k] if t > 0 else 0.0))
        x = nxt
    assert per_image * shape[0] == len(x)
    torch.testing.assert_close(out.flatten(), torch.tensor(x, dtype=torch.float64), rtol=1e-12, atol=1e-12)
