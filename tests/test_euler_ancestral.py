"""Euler ancestral against independent computations: one step by hand in float64 (with the noise it drew), its
deterministic case against DDIM (the same ODE step written in another variable), and the exact Gaussian score."""

from __future__ import annotations

import math

import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.samplers import DDIMSampler
from ddpm.core.samplers.euler_ancestral import EulerAncestralSampler
from ddpm.core.schedules import cosine_betas, linear_betas
from tests.helpers.gaussian import MU, S_DATA, exact_eps


def test_one_step_by_hand():
    """k-diffusion's step written out: sigma_up, sigma_down, the Euler step to sigma_down, noise sigma_up z."""
    d = GaussianDiffusion(linear_betas(1000))
    s = EulerAncestralSampler(d, num_steps=10, eta=0.7, s_noise=0.9, progress=False)
    abar = d.alphas_cumprod.tolist()
    t, t_next = s.timesteps[3], s.timesteps[4]
    sig, sig_next = math.sqrt((1 - abar[t]) / abar[t]), math.sqrt((1 - abar[t_next]) / abar[t_next])
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = x / math.sqrt(1 + sig**2)
    eps = exact_eps(d)(x_t, torch.full((5,), t))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)).double()  # the sampler draws float32
    up = min(sig_next, 0.7 * math.sqrt(sig_next**2 * (sig**2 - sig_next**2) / sig**2))
    down = math.sqrt(sig_next**2 - up**2)
    want = x + (down - sig) * eps + 0.9 * up * z
    got, _ = s.step(exact_eps(d), 3, x, torch.Generator().manual_seed(9), {})
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_eta_zero_is_ddim_eta_zero():
    """Without noise the Euler step in x_t / sqrt(abar_t) is DDIM's deterministic update (Song et al. 2021, 4.3)."""
    for betas in (linear_betas(1000), cosine_betas(1000)):
        d = GaussianDiffusion(betas)
        noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        euler = EulerAncestralSampler(d, num_steps=20, eta=0.0, progress=False)
        ddim = DDIMSampler(d, num_steps=20, eta=0.0, clip_denoised=False, progress=False)
        a = euler.sample(exact_eps(d), noise.shape, noise=noise).images
        b = ddim.sample(exact_eps(d), noise.shape, noise=noise).images
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_the_exact_score_gives_the_data_distribution():
    """n = 40,000: 5 standard errors are 0.0125 (mean) and 0.009 (std). A first-order method: the spread's error
    shrinks like 1/S (std measured 0.444, 0.466, 0.487, 0.499 at S = 50, 100, 300, 1000); at S = 300 0.02 more is
    allowed for it, and S = 1000 must be within Monte-Carlo error."""
    d = GaussianDiffusion(linear_betas(1000))
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(40_000, 1, 1, 1, generator=g, dtype=torch.float64)
    for steps, allowed in ((300, 0.02), (1000, 0.0)):
        sampler = EulerAncestralSampler(d, num_steps=steps, progress=False)
        x = sampler.sample(exact_eps(d), noise.shape, generator=g, noise=noise).images
        assert abs(x.mean().item() - MU) < 0.0125 and abs(x.std().item() - S_DATA) < 0.009 + allowed, steps
