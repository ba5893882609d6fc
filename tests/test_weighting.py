"""Loss weightings against independent computations: Min-SNR-gamma's weight for each target as the paper writes it
(Hang et al. 2023: min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v),
the parametrization's eps-space factor against errors converted through the forward process in float64, and a
training step's loss against the hand-weighted MSE; a min_snr run trains and every sampler samples it."""

from __future__ import annotations

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.objective import Objective, training_terms
from ddpm.core.schedules import cosine_betas, linear_betas
from ddpm.core.weighting import MinSNR
from ddpm.errors import ConfigError

TS = torch.tensor([0, 10, 100, 300, 500, 800, 999])


def snr_of(d: GaussianDiffusion, t: torch.Tensor) -> torch.Tensor:
    abar = d.alphas_cumprod[t].double()
    return abar / (1 - abar)


@pytest.mark.parametrize("prediction, paper", [
    ("eps", lambda s, g: torch.minimum(s, torch.full_like(s, g)) / s),
    ("x0", lambda s, g: torch.minimum(s, torch.full_like(s, g))),
    ("v", lambda s, g: torch.minimum(s, torch.full_like(s, g)) / (s + 1)),
])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_each_target_as_the_paper_writes_it(prediction, paper, gamma):
    for betas in (linear_betas(1000), cosine_betas(1000)):
        d = GaussianDiffusion(betas, prediction=prediction)
        snr = snr_of(d, TS)
        got = MinSNR(gamma).eps_weight(snr) * d.parametrization.prediction.eps_mse_factor(snr)
        torch.testing.assert_close(got, paper(snr, gamma), rtol=1e-12, atol=0)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_the_eps_space_factor_is_the_ratio_of_the_squared_errors(prediction):
    """An eps error delta, carried into the target's space through x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    (float64): |error in eps|^2 / |error in the target| ^2 is the factor, at every t."""
    d = GaussianDiffusion(linear_betas(1000).double(), prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(TS), 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(len(TS), 1, 4, 4, generator=g, dtype=torch.float64)
    delta = 1e-3 * torch.randn(eps.shape, generator=g, dtype=torch.float64)
    x_t = d.q_sample(x0, TS, eps)
    abar = d.alphas_cumprod[TS].reshape(-1, 1, 1, 1)
    x0_hat = (x_t - (1 - abar).sqrt() * (eps + delta)) / abar.sqrt()  # the x0 an eps error implies
    target = d.parametrization.prediction.target
    err = target(d, x0_hat, TS, eps + delta) - target(d, x0, TS, eps)
    ratio = delta.pow(2).flatten(1).sum(1) / err.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(ratio, d.parametrization.prediction.eps_mse_factor(snr_of(d, TS)), rtol=1e-9, atol=0)


def test_a_training_step_weights_each_samples_mse():
    d = GaussianDiffusion(linear_betas(1000))
    x0 = torch.randn(len(TS), 1, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731  (the MSE is then |eps|^2 per sample)
    terms = training_terms(d, model, x0, TS, noise, weighting=MinSNR(5.0))
    snr = snr_of(d, TS)
    want = noise.pow(2).flatten(1).mean(1) * (snr.clamp(max=5.0) / snr).float()
    torch.testing.assert_close(terms["loss"], want, rtol=1e-6, atol=0)
    torch.testing.assert_close(terms["mse"], noise.pow(2).flatten(1).mean(1))


def test_bad_weightings_are_one_line():
    d = GaussianDiffusion(linear_betas(10))
    with pytest.raises(ConfigError, match="objective.weighting.gamma must be > 0"):
        MinSNR(0.0)
    with pytest.raises(ConfigError, match="loss=vlb"):
        Objective(d, {"loss": "vlb", "weighting": {"_target_": "ddpm.core.weighting.MinSNR"}}, None, None, MinSNR())


@pytest.mark.slow
def test_a_min_snr_run_trains_and_every_sampler_samples_it(tmp_path):
    from ddpm.io.compat import instantiate
    from ddpm.pipeline import SamplingPipeline
    from ddpm.tasks.config import compose, to_plain
    from tests.conftest import CONF
    from tests.helpers import QUIET_EVAL
    from tests.helpers.entry import run_entry
    from tests.test_sampler_contract import NAMES

    done = run_entry("train", ["objective=min_snr", "module.prediction=v", *QUIET_EVAL, "logger=none",
                               "trainer.max_steps=3"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = next((tmp_path / "logs").rglob("last.ckpt"))
    pipe = SamplingPipeline.from_checkpoint(ckpt)
    assert pipe.diffusion.prediction == "v"
    for name in NAMES:
        cfg = to_plain(compose("train", [f"sampler={name}"], CONF).sampler)
        sampler = instantiate({**cfg, "progress": False, "num_steps": 4}, diffusion=pipe.diffusion)
        images = pipe.with_sampler(sampler).sample(2, seed=0).images
        assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all(), name
