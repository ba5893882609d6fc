"""Learned variance (L_hybrid), x0 / v prediction and classifier-free guidance against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.guidance import drop_labels, guided
from ddpm.core.likelihood import vlb_terms_bpd
from ddpm.core.objective import training_terms
from ddpm.core.schedules import linear_betas
from tests.helpers.gaussian import MU, S_DATA, gaussian_eps


def _d(variance_type="learned_range", prediction="eps", T=50):
    return GaussianDiffusion(linear_betas(T, 1e-4, 0.02, scale_to_num_timesteps=True), variance_type, prediction)


def test_learned_range_interpolates_log_beta_and_log_beta_tilde_in_float64():
    d = _d()
    betas = d.betas.numpy()
    abar = torch.cumprod(torch.tensor(1 - betas, dtype=torch.float64), 0).numpy()
    for t in (1, 7, 49):
        tilde = betas[t] * (1 - abar[t - 1]) / (1 - abar[t])
        for frac in (0.0, 0.3, 1.0):
            got = d.log_variance_of(torch.tensor([t]), torch.zeros(1, 1, 1, 1, dtype=torch.float64),
                                    torch.full((1, 1, 1, 1), frac, dtype=torch.float64))
            want = frac * math.log(betas[t]) + (1 - frac) * math.log(tilde)
            assert abs(float(got) - want) < 1e-12
    # frac = 1 / 0 equal fixedlarge / fixedsmall for t >= 1
    t = torch.arange(1, 50)
    like = torch.zeros(49, 1, 1, 1, dtype=torch.float64)
    one, zero = torch.ones_like(like), torch.zeros_like(like)
    assert torch.allclose(d.log_variance_of(t, like, one), _d("fixedlarge").log_variance_of(t, like), atol=1e-12)
    assert torch.allclose(d.log_variance_of(t, like, zero), _d("fixedsmall").log_variance_of(t, like), atol=1e-12)


def test_hybrid_loss_weight_is_lambda_T_once_and_mean_is_stop_gradient():
    torch.manual_seed(0)
    for T in (50, 200):
        d = _d(T=T)
        x0 = torch.rand(4, 1, 4, 4) * 2 - 1
        out = torch.randn(4, 2, 4, 4, requires_grad=True)
        t = torch.tensor([0, 3, 10, T - 1])
        terms = training_terms(d, lambda x, tt: out, x0, t, torch.randn_like(x0), vlb_weight=0.001)
        assert torch.allclose(terms["loss"], terms["mse"] + (T / 1000) * terms["vlb"])
        (grad,) = torch.autograd.grad(terms["vlb"].sum(), out)
        assert grad[:, :1].abs().max() == 0.0  # eps channels: no gradient from L_vlb
        assert grad[:, 1:].abs().max() > 0.0


def test_vlb_term_with_learned_variance_matches_float64_closed_form_kl():
    d = _d()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(1, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(1, 1, 2, 2, generator=g,
                                                                                            dtype=torch.float64)
    t = 20
    frac = torch.rand(1, 1, 2, 2, generator=g, dtype=torch.float64)
    b = d.betas.numpy()
    abar = d.alphas_cumprod.numpy()
    xt = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
    eps_hat = eps * 0.9
    got = vlb_terms_bpd(d, eps_hat, x0, xt, torch.tensor([t]), clip_denoised=False, var_frac=frac)
    kl = 0.0
    for i in range(4):
        x0i, xti, ei, fi = (v.flatten()[i].item() for v in (x0, xt, eps_hat, frac))
        c1 = b[t] * math.sqrt(abar[t - 1]) / (1 - abar[t])
        c2 = (1 - abar[t - 1]) * math.sqrt(1 - b[t]) / (1 - abar[t])
        mu_q, var_q = c1 * x0i + c2 * xti, b[t] * (1 - abar[t - 1]) / (1 - abar[t])
        mu_p = (xti - b[t] / math.sqrt(1 - abar[t]) * ei) / math.sqrt(1 - b[t])
        var_p = math.exp(fi * math.log(b[t]) + (1 - fi) * math.log(var_q))
        kl += 0.5 * (math.log(var_p / var_q) + var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1)
    assert abs(float(got) - kl / 4 / math.log(2)) < 1e-9


def test_eps_x0_v_conversions_round_trip_in_float64():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, 3, 3, generator=g,
                                                                                     dtype=torch.float64)
    t = torch.tensor([0, 1, 5, 20, 40, 49])
    for prediction in ("eps", "x0", "v"):
        d = _d("fixedlarge", prediction)
        xt = d.q_sample(x0, t, eps)
        target = d.parametrization.prediction.target(d, x0, t, eps)
        assert torch.allclose(d.parametrization.prediction.to_eps(d, xt, t, target), eps, atol=1e-9)
    d = _d("fixedlarge", "v")
    xt, v = d.q_sample(x0, t, eps), d.v_target(x0, t, eps)
    assert torch.allclose(d.predict_x0_from_v(xt, t, v), x0, atol=1e-12)


def test_label_dropout_is_binomial():
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, 10, 0.1, torch.Generator().manual_seed(0))
    k = int((dropped == 10).sum())
    sd = math.sqrt(20000 * 0.1 * 0.9)
    assert abs(k - 2000) < 4 * sd  # 4 standard deviations: fails with probability < 1e-4


class WithNull:
    """A toy conditional network f(x, t, y) with the null label it was trained with (as UNet.null_label)."""

    def __init__(self, fn, null_label: int) -> None:
        self.fn, self.null_label = fn, null_label

    def __call__(self, x, t, y):
        return self.fn(x, t, y)


def test_guidance_formula_and_w0_is_the_conditional_model():
    def net(x, t, y):  # a toy conditional "network" with 2C outputs
        return torch.cat([x * (y[:, None, None, None].float() + 1), x + y[:, None, None, None].float()], 1)

    x, t, y = torch.randn(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2])
    assert torch.equal(guided(WithNull(net, 5), y, 0.0)(x, t), net(x, t, y))
    w = 2.0
    got = guided(WithNull(net, 5), y, w)(x, t)
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 5))
    assert torch.allclose(got[:, :1], (1 + w) * cond[:, :1] - w * uncond[:, :1])
    assert torch.equal(got[:, 1:], cond[:, 1:])  # variance channels: unguided


# ----- exact predictors of Gaussian data through every sampler (see tests/test_samplers.py) -----------------
T, N = 1000, 40_000


def exact_predictor(prediction: str, abar_all: torch.Tensor, channels: int = 1, var_v: float | None = None):
    """The exact x0 / v / eps predictor, written out from eps* (x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar),
    v = sqrt(abar) eps - sqrt(1 - abar) x0); var_v: the learned_range channel's constant value."""
    eps_star = gaussian_eps(abar_all, MU, S_DATA)

    def net(x, t):
        abar = abar_all[t].reshape(-1, 1, 1, 1)
        e = eps_star(x, t)
        x0 = (x - (1 - abar).sqrt() * e) / abar.sqrt()
        out = {"eps": e, "x0": x0, "v": abar.sqrt() * e - (1 - abar).sqrt() * x0}[prediction]
        return out if var_v is None else torch.cat([out, torch.full_like(out, var_v)], 1)
    return net


def _samplers(d):
    from ddpm.core.samplers import AncestralSampler, DDIMSampler, DPMSolverSampler
    return {"ancestral-100": (AncestralSampler(d, clip_denoised=False, num_steps=100, progress=False), 0.015),
            "ddim-100": (DDIMSampler(d, num_steps=100, eta=0.0, clip_denoised=False, progress=False), 0.015),
            "dpm-solver++-20": (DPMSolverSampler(d, num_steps=20, spacing="logsnr", clip_denoised=False,
                                                 progress=False), 0.012)}


def _draw(sampler, net, n=N, seed=3):
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    return sampler.sample(net, x_T.shape, generator=g, noise=x_T).images.flatten()


def test_x0_and_v_models_fed_the_exact_predictor_sample_the_data_distribution():
    """Every sampler sees an x0- or v-model through the same conversion: the samples have the data's mean and
    standard deviation (tolerances as in test_samplers.py: 5 standard errors plus the discretisation), and are
    the eps-model's samples draw for draw (same noise)."""
    for prediction in ("x0", "v"):
        d = GaussianDiffusion(linear_betas(T).double(), "fixedlarge", prediction)
        d_eps = GaussianDiffusion(linear_betas(T).double(), "fixedlarge", "eps")
        for name, (sampler, tol) in _samplers(d).items():
            out = _draw(sampler, exact_predictor(prediction, d.alphas_cumprod))
            assert abs(out.mean().item() - MU) < 5 * S_DATA / math.sqrt(N) + tol, (prediction, name)
            assert abs(out.std().item() - S_DATA) < 5 * S_DATA / math.sqrt(2 * N) + tol, (prediction, name)
            ref = _draw(_samplers(d_eps)[name][0], exact_predictor("eps", d.alphas_cumprod))
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_learned_range_at_frac_1_and_0_samples_as_fixedlarge_and_fixedsmall_also_respaced():
    """v = 1 (frac = 1) is sigma^2 = beta'_i, v = -1 is beta_tilde'_i of the respaced chain: draw for draw the
    fixed-variance samplers; DDIM ignores the variance channels."""
    from ddpm.core.samplers import AncestralSampler, DDIMSampler

    betas = linear_betas(T).double()
    learned = GaussianDiffusion(betas, "learned_range")
    abar = learned.alphas_cumprod
    for v, fixed in ((1.0, "fixedlarge"), (-1.0, "fixedsmall")):
        for steps in (None, 50):
            got = _draw(AncestralSampler(learned, num_steps=steps, progress=False), exact_predictor("eps", abar, 1, v),
                        n=256)
            want = _draw(AncestralSampler(GaussianDiffusion(betas, fixed), num_steps=steps, progress=False),
                         exact_predictor("eps", abar), n=256)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    got = _draw(DDIMSampler(learned, num_steps=20, progress=False), exact_predictor("eps", abar, 1, 0.3), n=256)
    want = _draw(DDIMSampler(GaussianDiffusion(betas), num_steps=20, progress=False), exact_predictor("eps", abar),
                 n=256)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_guided_gaussian_mixture_toy_samples_each_class_and_null_samples_the_mixture():
    """Two classes N(-1, 0.3^2), N(+1, 0.3^2), equal weights. Closed forms: class eps*_c as above; the
    unconditional eps* = sum_c r_c(x_t) eps*_c with r_c the posterior of class c given x_t. w = 0 samples each
    class exactly (mean, std within 5 standard errors + discretisation); guided (w = 1, 3) samples land on their
    class's side with the mean near the class mean (guidance pushes them outwards by under 0.15: measured 0.06
    and 0.11 with this sampler); the null label samples the mixture (mean 0, std sqrt(1 + 0.3^2))."""
    from ddpm.core.samplers import AncestralSampler

    means, s, n = (-1.0, 1.0), 0.3, 20_000
    d = GaussianDiffusion(linear_betas(T).double())
    abar_all = d.alphas_cumprod
    class_eps = [gaussian_eps(abar_all, m, s) for m in means]

    def net(x, t, y):
        abar = abar_all[t].reshape(-1, 1, 1, 1)
        logp = torch.stack([-(x - abar.sqrt() * m) ** 2 for m in means]) / (2 * (abar * s**2 + 1 - abar))
        r = torch.softmax(logp, 0)  # p(c | x_t), equal priors and variances
        eps_c = [f(x, t) for f in class_eps]
        y = y.reshape(-1, 1, 1, 1)
        return torch.where(y == 2, r[0] * eps_c[0] + r[1] * eps_c[1], torch.where(y == 0, eps_c[0], eps_c[1]))

    sampler = AncestralSampler(d, clip_denoised=False, num_steps=100, progress=False)
    labels = torch.arange(n) % 2
    se_mean, se_std = 5 * s / math.sqrt(n / 2), 5 * s / math.sqrt(n)
    for w in (0.0, 1.0, 3.0):
        out = sampler.sample(guided(WithNull(net, 2), labels, w), (n, 1, 1, 1), torch.Generator().manual_seed(0)).images
        for c, m in enumerate(means):
            x = out.flatten()[labels == c]
            on_side = ((x > 0) == (m > 0)).double().mean().item()
            if w == 0:
                assert abs(x.mean().item() - m) < se_mean + 0.01 and abs(x.std().item() - s) < se_std + 0.02
                assert on_side > 0.995
            else:
                assert 0 < (x.mean().item() - m) * m < 0.15 and on_side == 1.0, (w, c, x.mean().item(), on_side)
    null = sampler.sample(guided(WithNull(net, 2), torch.full((n,), 2), 0.0), (n, 1, 1, 1),
                          torch.Generator().manual_seed(1)).images.flatten()
    assert abs(null.mean().item()) < 5 * math.sqrt(1 + s**2) / math.sqrt(n) + 0.01
    assert abs(null.std().item() - math.sqrt(1 + s**2)) < 0.02
    assert abs((null > 0).double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)


def test_var_frac_replaces_the_variance_head_by_the_constant():
    """sampler.var_frac=F (benchmarks/samplers.py --frac F): whatever the network's variance channels say (v = 0.3
    here), frac = 1 / 0 samples draw for draw as the fixedlarge / fixedsmall respaced chains."""
    from ddpm.core.samplers import AncestralSampler

    betas = linear_betas(T).double()
    learned = GaussianDiffusion(betas, "learned_range")
    for frac, fixed in ((1.0, "fixedlarge"), (0.0, "fixedsmall")):
        sampler = AncestralSampler(learned, num_steps=20, clip_denoised=False, progress=False, var_frac=frac)
        assert sampler.describe() == f"ancestral(S=20, trailing, learned_range, frac={frac:g})"
        got = _draw(sampler, exact_predictor("eps", learned.alphas_cumprod, 1, 0.3), n=256)
        want = _draw(AncestralSampler(GaussianDiffusion(betas, fixed), num_steps=20, clip_denoised=False,
                                      progress=False), exact_predictor("eps", learned.alphas_cumprod), n=256)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for bad, diffusion in ((0.5, GaussianDiffusion(betas, "fixedlarge")), (1.5, learned)):
        with pytest.raises(ValueError, match="var_frac"):
            AncestralSampler(diffusion, var_frac=bad)


def test_one_check_of_a_sampling_requests_conditioning():
    from ddpm.core.guidance import check_conditioning
    from ddpm.errors import ConfigError

    assert check_conditioning(None) is None
    assert check_conditioning(3) == [0, 1, 2] and check_conditioning(3, classes=[2, 0]) == [2, 0]
    for kwargs, message in [({"num_classes": None, "guidance_scale": 1.0}, "need a class-conditional model"),
                            ({"num_classes": None, "classes": [0]}, "need a class-conditional model"),
                            ({"num_classes": None, "labels": torch.zeros(2)}, "need a class-conditional model"),
                            ({"num_classes": 3, "guidance_scale": -0.5}, "guidance_scale must be >= 0"),
                            ({"num_classes": 3, "classes": [3]}, r"classes must be labels in 0..2"),
                            ({"num_classes": 3, "classes": []}, r"classes must be labels in 0..2")]:
        with pytest.raises(ConfigError, match=message):
            check_conditioning(**kwargs)
    with pytest.raises(ConfigError, match="guidance_scale must be >= 0"):
        guided(WithNull(lambda x, t, y: x, 1), torch.zeros(1, dtype=torch.long), -1.0)
