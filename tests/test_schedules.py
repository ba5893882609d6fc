"""Schedules against golden values and against independent pure-Python float64 computations."""

import math

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.schedules import cosine_betas, custom_betas, linear_betas, quadratic_betas, sigmoid_betas


def cumprod(values):
    out, acc = [], 1.0
    for v in values:
        acc *= v
        out.append(acc)
    return out


def test_linear_golden_values():
    """docs/math.md §1: linear, T=1000, float64."""
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64
    diffusion = GaussianDiffusion(betas)
    assert diffusion.alphas_cumprod[-1].item() == pytest.approx(4.035830e-05, rel=1e-6)
    assert betas[1].item() == pytest.approx(1.199199e-04, rel=1e-6)
    assert diffusion.posterior_variance[1].item() == pytest.approx(5.453188e-05, rel=1e-6)
    # beta_tilde_1 convention at t=0: log = -9.8167 (not -46.05 from a 1e-20 clamp)
    assert diffusion.posterior_log_variance_clipped[0].item() == pytest.approx(-9.8167, abs=1e-4)


def test_linear_matches_pure_python():
    T = 1000
    expected = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    got = linear_betas(T).tolist()
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-15
    abar = cumprod([1 - b for b in expected])
    assert GaussianDiffusion(linear_betas(T)).alphas_cumprod.tolist() == pytest.approx(abar, rel=1e-12)


def test_linear_scaled_to_num_timesteps():
    betas = linear_betas(500, scale_to_num_timesteps=True)
    assert betas[0].item() == pytest.approx(2e-4) and betas[-1].item() == pytest.approx(0.04)
    assert linear_betas(500)[-1].item() == pytest.approx(0.02)  # off by default: DDPM/diffusers parity


def test_quadratic_matches_pure_python():
    T = 100
    lo, hi = math.sqrt(1e-4), math.sqrt(0.02)
    expected = [(lo + (hi - lo) * i / (T - 1)) ** 2 for i in range(T)]
    assert quadratic_betas(T).tolist() == pytest.approx(expected, rel=1e-12)


def test_cosine_golden_values_and_cap():
    """docs/math.md §1: beta_0 = 4.128e-05, abar_0 = 0.999959, abar_{T-1} = 2.43e-09, only the last beta capped."""
    betas = cosine_betas(1000)
    abar = GaussianDiffusion(betas).alphas_cumprod
    assert betas[0].item() == pytest.approx(4.128e-05, rel=1e-3)
    assert abar[0].item() == pytest.approx(0.999959, abs=1e-6)
    assert abar[-1].item() == pytest.approx(2.43e-09, rel=1e-2)
    assert (betas == 0.999).sum().item() == 1 and betas[-1].item() == 0.999
    assert torch.isfinite(GaussianDiffusion(betas).posterior_log_variance_clipped).all()


def test_cosine_matches_pure_python():
    T, s = 1000, 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    expected = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    assert cosine_betas(T).tolist() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_sigmoid_is_chen_2023_alpha_bar_schedule():
    T, start, end, tau = 1000, -3.0, 3.0, 1.0

    def sig(z):
        return 1 / (1 + math.exp(-z))

    def abar(u):
        return (sig(end / tau) - sig((u * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))

    expected = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
    betas = sigmoid_betas(T, start, end, tau)
    assert betas.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert ((betas > 0) & (betas <= 0.999)).all()


@pytest.mark.parametrize("make", [linear_betas, quadratic_betas, cosine_betas, sigmoid_betas])
def test_abar_decreases_from_below_one(make):
    abar = GaussianDiffusion(make(200)).alphas_cumprod
    assert abar[0] < 1 and (abar[1:] < abar[:-1]).all() and abar[-1] > 0


@pytest.mark.parametrize("make", [linear_betas, quadratic_betas, cosine_betas, sigmoid_betas])
@pytest.mark.parametrize("T", [0, -5])
def test_timesteps_below_one_rejected(make, T):
    with pytest.raises(ValueError, match="num_timesteps must be an integer >= 1"):
        make(T)


def test_invalid_betas_rejected():
    with pytest.raises(ValueError, match=r"every beta must lie in \(0, 1\]"):
        GaussianDiffusion(custom_betas([0.1, 1.5]))
    with pytest.raises(ValueError, match="scale_to_num_timesteps"):
        GaussianDiffusion(linear_betas(10, scale_to_num_timesteps=True))  # beta_end = 2.0
