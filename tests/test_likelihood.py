"""Every term of the variational bound against an independent float64 (or 50-digit) computation."""

import math

import mpmath
import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl, prior_bpd, vlb_terms_bpd
from ddpm.core.schedules import linear_betas

mpmath.mp.dps = 50


def kl_by_quadrature(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) = ∫ p log(p/q), by mpmath quadrature (no closed form used)."""
    p = lambda x: mpmath.npdf(x, m1, mpmath.sqrt(v1))  # noqa: E731
    q = lambda x: mpmath.npdf(x, m2, mpmath.sqrt(v2))  # noqa: E731
    s = mpmath.sqrt(v1)
    return float(mpmath.quad(lambda x: p(x) * (mpmath.log(p(x)) - mpmath.log(q(x))), [m1 - 40 * s, m1, m1 + 40 * s]))


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 1e-4, 0.99, 2e-4),
                                            (0.0, 3.0, 0.5, 0.1)])
def test_normal_kl_matches_quadrature(m1, v1, m2, v2):
    got = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2))))
    assert got.item() == pytest.approx(kl_by_quadrature(m1, v1, m2, v2), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("x", [-1.0, -1 + 2 / 255, -0.5, 0.0, 2 * 200 / 255 - 1, 1.0])
@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.9, -6.0), (-0.95, -1.0), (0.0, 1.0), (0.95, -4.0)])
def test_discretized_gaussian_matches_50_digit_cdf(x, mean, log_scale):
    s = mpmath.e ** log_scale
    w = mpmath.mpf(1) / 255
    if x < -0.999:
        p = mpmath.ncdf(x + w, mean, s)
    elif x > 0.999:
        p = mpmath.ncdf(-(x - w), -mean, s)  # P(X > x - w), without cancellation
    else:
        p = mpmath.ncdf(x + w, mean, s) - mpmath.ncdf(x - w, mean, s)
    expected = float(mpmath.log(p))
    f64 = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = discretized_gaussian_log_likelihood(f64(x), f64(mean), f64(log_scale))
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_bin_probabilities_sum_to_one():
    grid = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, 0.3), torch.full_like(grid, -2.0))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_betas(1000), "fixedlarge")


def test_prior_term_matches_quadrature(diffusion):
    x0 = torch.tensor([[-1.0, 0.25]], dtype=torch.float64)
    abar = diffusion.alphas_cumprod[-1].item()
    expected = sum(kl_by_quadrature(math.sqrt(abar) * v, 1 - abar, 0.0, 1.0) for v in (-1.0, 0.25)) / 2 / math.log(2)
    assert prior_bpd(diffusion, x0).item() == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("t_int", [1, 2, 300, 999])
def test_kl_term_matches_independent_computation(diffusion, t_int):
    """L_t for one pixel: posterior and model mean from the paper's formulas in plain Python, KL by quadrature."""
    x0, xt, eps = 0.4, -0.1, 0.7
    betas = diffusion.betas.tolist()
    abar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(t_int + 1)]
    beta, alpha, a_t, a_prev = betas[t_int], 1 - betas[t_int], abar[t_int], abar[t_int - 1]
    post_mean = beta * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(alpha) / (1 - a_t) * xt
    post_var = beta * (1 - a_prev) / (1 - a_t)
    model_mean = (xt - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha)  # eq. 11
    expected = kl_by_quadrature(post_mean, post_var, model_mean, beta) / math.log(2)  # fixedlarge: sigma^2 = beta
    f = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    got = vlb_terms_bpd(diffusion, f(eps), f(x0), f(xt), torch.tensor([t_int]), clip_denoised=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_decoder_term_uses_beta_tilde_1(diffusion):
    x0, x1, eps = 2 * 100 / 255 - 1, 2 * 100 / 255 - 1 + 0.01, 0.3
    a0 = diffusion.alphas_cumprod[0].item()
    mean = (x1 - diffusion.betas[0].item() / math.sqrt(1 - a0) * eps) / math.sqrt(1 - diffusion.betas[0].item())
    s = mpmath.sqrt(diffusion.posterior_variance[1].item())  # beta_tilde_1, not beta_0 and not 1e-20
    w = mpmath.mpf(1) / 255
    expected = -float(mpmath.log(mpmath.ncdf(x0 + w, mean, s) - mpmath.ncdf(x0 - w, mean, s))) / math.log(2)
    f = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    got = vlb_terms_bpd(diffusion, f(eps), f(x0), f(x1), torch.tensor([0]), clip_denoised=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bits_per_dim_loop_sums_every_term():
    d = GaussianDiffusion(linear_betas(20))
    x0 = torch.rand(3, 1, 2, 2) * 2 - 1
    out = bits_per_dim(d, lambda x, t: torch.zeros_like(x), x0, chunk=7, generator=torch.Generator().manual_seed(0))
    assert out["terms"].shape == (3, 20)
    torch.testing.assert_close(out["total"], out["terms"].sum(1) + out["prior"])
    torch.testing.assert_close(out["decoder"], out["terms"][:, 0])
    assert (out["terms"] >= 0).all()


@pytest.mark.parametrize("t_int", [1, 2, 300, 999])
def test_fixedsmall_kl_term_matches_independent_computation(t_int):
    """L_t with sigma_t^2 = beta_tilde_t (fixedsmall): the model's variance equals the posterior's, so only the
    means differ; KL by quadrature from plain-Python means and variances."""
    d = GaussianDiffusion(linear_betas(1000), "fixedsmall")
    x0, xt, eps = -0.3, 0.2, -0.5
    betas = d.betas.tolist()
    abar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(t_int + 1)]
    beta, alpha, a_t, a_prev = betas[t_int], 1 - betas[t_int], abar[t_int], abar[t_int - 1]
    post_mean = beta * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(alpha) / (1 - a_t) * xt
    post_var = beta * (1 - a_prev) / (1 - a_t)
    model_mean = (xt - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha)
    expected = kl_by_quadrature(post_mean, post_var, model_mean, post_var) / math.log(2)
    f = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    got = vlb_terms_bpd(d, f(eps), f(x0), f(xt), torch.tensor([t_int]), clip_denoised=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_fixedsmall_decoder_term_uses_beta_tilde_1():
    """At t = 0 fixedsmall's variance is beta_tilde_0 = 0; the decoder uses beta_tilde_1 instead (its log is
    clipped there, improved-diffusion's convention), as fixedlarge does."""
    d = GaussianDiffusion(linear_betas(1000), "fixedsmall")
    x0, x1, eps = 2 * 40 / 255 - 1, 2 * 40 / 255 - 1 - 0.02, -0.4
    a0, b0 = d.alphas_cumprod[0].item(), d.betas[0].item()
    mean = (x1 - b0 / math.sqrt(1 - a0) * eps) / math.sqrt(1 - b0)
    s = mpmath.sqrt(d.posterior_variance[1].item())
    w = mpmath.mpf(1) / 255
    expected = -float(mpmath.log(mpmath.ncdf(x0 + w, mean, s) - mpmath.ncdf(x0 - w, mean, s))) / math.log(2)
    f = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    got = vlb_terms_bpd(d, f(eps), f(x0), f(x1), torch.tensor([0]), clip_denoised=False)
    assert got.item() == pytest.approx(expected, rel=1e-6)
