"""Learned variance (L_hybrid), x0 / v prediction and classifier-free guidance against independent computations."""

from __future__ import annotations

import math

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.guidance import drop_labels, guided
from ddpm.schedules import linear_betas


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
        terms = d.training_terms(lambda x, tt: out, x0, t, torch.randn_like(x0), vlb_weight=0.001)
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
    got = d.vlb_terms_bpd(eps_hat, x0, xt, torch.tensor([t]), clip_denoised=False, var_frac=frac)
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
        target = d.training_target(x0, t, eps)
        assert torch.allclose(d.eps_from_prediction(xt, t, target), eps, atol=1e-9)
    d = _d("fixedlarge", "v")
    xt, v = d.q_sample(x0, t, eps), d.v_target(x0, t, eps)
    assert torch.allclose(d.predict_x0_from_v(xt, t, v), x0, atol=1e-12)


def test_label_dropout_is_binomial():
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, 10, 0.1, torch.Generator().manual_seed(0))
    k = int((dropped == 10).sum())
    sd = math.sqrt(20000 * 0.1 * 0.9)
    assert abs(k - 2000) < 4 * sd  # 4 standard deviations: fails with probability < 1e-4


def test_guidance_formula_and_w0_is_the_conditional_model():
    def net(x, t, y):  # a toy conditional "network" with 2C outputs
        return torch.cat([x * (y[:, None, None, None].float() + 1), x + y[:, None, None, None].float()], 1)

    x, t, y = torch.randn(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2])
    assert torch.equal(guided(net, y, 5, 0.0, 1)(x, t), net(x, t, y))
    w = 2.0
    got = guided(net, y, 5, w, 1)(x, t)
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 5))
    assert torch.allclose(got[:, :1], (1 + w) * cond[:, :1] - w * uncond[:, :1])
    assert torch.equal(got[:, 1:], cond[:, 1:])  # variance channels: unguided
