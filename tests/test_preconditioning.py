"""EDM's recipe (Karras et al. 2022) against independent computations: the preconditioning coefficients of EDM's
Table 1 written out here in float64, the exact denoiser of Gaussian data, the log-normal's CDF (math.erf), and the
training images' standard deviation computed from scikit-learn's digits with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.objective import Objective, training_terms
from ddpm.core.parametrization import EDMPrediction, Parametrization, VPrediction
from ddpm.core.preconditioning import EDMPreconditioned
from ddpm.core.schedules import cosine_betas, linear_betas
from ddpm.core.timesteps import LogNormalTimesteps
from ddpm.io.compat import instantiate
from ddpm.tasks.config import compose, to_plain
from tests.conftest import CONF, ROOT
from tests.helpers.gaussian import MU, S_DATA, exact_eps

SD = 0.6  # sigma_data of the preconditioning; the Gaussian data's own standard deviation is S_DATA = 0.5
T = 1000
EDM = GaussianDiffusion(linear_betas(T), prediction="edm", sigma_data=SD)
EPS = GaussianDiffusion(linear_betas(T))


def table1(sigma, sd=SD):
    """EDM's Table 1: c_skip, c_out, c_in."""
    return sd**2 / (sigma**2 + sd**2), sigma * sd / np.sqrt(sigma**2 + sd**2), 1 / np.sqrt(sigma**2 + sd**2)


def sigma_of(t: torch.Tensor) -> np.ndarray:
    """sigma at integer or fractional t, ln sigma interpolated linearly (float64, numpy)."""
    abar = EPS.alphas_cumprod.numpy()
    log_sigma = 0.5 * np.log((1 - abar) / abar)
    return np.exp(np.interp(t.double().numpy(), np.arange(T), log_sigma))


def exact_F(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The raw network output F that makes D(x; sigma) the exact denoiser of N(MU, S_DATA^2) data: it undoes c_in
    itself and solves D* = c_skip x + c_out F for F."""
    sigma = sigma_of(t).reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = table1(sigma)
    x = x_in.double().numpy() / c_in  # EDM's x = x_0 + sigma eps
    d_star = MU + S_DATA**2 / (S_DATA**2 + sigma**2) * (x - MU)
    return torch.from_numpy((d_star - c_skip * x) / c_out).to(x_in.dtype)


def test_the_target_makes_the_denoiser_return_the_clean_image():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(8, 1, 3, 3, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 200, 500, 700, 900, 999])
    target = EDM.parametrization.prediction.target(EDM, x0, t, eps)
    sigma = sigma_of(t).reshape(-1, 1, 1, 1)
    c_skip, c_out, _ = table1(sigma)
    x = x0.numpy() + sigma * eps.numpy()
    np.testing.assert_allclose(c_skip * x + c_out * target.numpy(), x0.numpy(), atol=1e-9)


def test_with_unit_sigma_data_the_target_is_minus_v():
    d1 = GaussianDiffusion(cosine_betas(T), prediction="edm", sigma_data=1.0)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, 2, 2, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0, 3, 100, 400, 800, 999])
    torch.testing.assert_close(d1.parametrization.prediction.target(d1, x0, t, eps),
                               -VPrediction().target(d1, x0, t, eps))


@pytest.mark.parametrize("t", [0, 5, 250, 600, 999])
def test_the_output_reads_as_eps_and_the_loss_is_edms_weighted_denoiser_error(t):
    """eps read from F equals (x - D) / sigma, and the unweighted MSE in F's space equals
    lambda(sigma) ||D - x_0||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2 (EDM's eq. 8 weight)."""
    g = torch.Generator().manual_seed(t)
    x0, eps, F = (torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    tt = torch.full((4,), t)
    sigma = float(sigma_of(tt)[0])
    c_skip, c_out, _ = table1(sigma)
    x = x0 + sigma * eps
    x_t = x / math.sqrt(1 + sigma**2)
    D = c_skip * x + c_out * F
    eps_hat = EDM.split_output(F, x_t, tt).eps
    torch.testing.assert_close(eps_hat, (x - D) / sigma)
    torch.testing.assert_close(EDM.predict_x0_from_eps(x_t, tt, eps_hat), D)  # the denoiser, through eps
    target = EDM.parametrization.prediction.target(EDM, x0, tt, eps)
    lam = (sigma**2 + SD**2) / (sigma * SD) ** 2
    torch.testing.assert_close((F - target).pow(2).mean(), lam * (D - x0).pow(2).mean())
    snr = torch.tensor(1 / sigma**2, dtype=torch.float64)  # eps_mse_factor: eps error / F error, squared
    factor = EDM.parametrization.prediction.eps_mse_factor(snr)
    torch.testing.assert_close((eps_hat - eps).pow(2).mean(), factor * (F - target).pow(2).mean())


def test_the_network_sees_unit_variance_inputs_for_data_of_standard_deviation_sigma_data():
    seen = {}

    def net(x_in, t):
        seen["x"] = x_in
        return torch.zeros_like(x_in)

    wrapped = EDMPreconditioned(net, SD, EPS.alphas_cumprod)
    g = torch.Generator().manual_seed(3)
    for t in (0, 300, 999):
        x0 = SD * torch.randn(200_000, generator=g, dtype=torch.float64).reshape(-1, 1, 1, 1)
        tt = torch.full((x0.shape[0],), t)
        wrapped(EPS.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64)), tt)
        assert abs(seen["x"].std().item() - 1) < 0.01  # 5 standard errors: 0.008
        torch.testing.assert_close(wrapped.sigma(tt[:1]), torch.from_numpy(sigma_of(tt[:1])))


def test_sigma_at_fractional_t_interpolates_log_sigma():
    wrapped = EDMPreconditioned(torch.nn.Identity(), SD, EPS.alphas_cumprod)
    t = torch.tensor([0.0, 0.25, 17.5, 998.9, 999.0])
    torch.testing.assert_close(wrapped.sigma(t), torch.from_numpy(sigma_of(t)))


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml")))
def test_every_sampler_reads_the_preconditioned_exact_denoiser_as_the_exact_eps(name):
    """The same noise through the same sampler: the EDM network of exact F and the exact eps-predictor draw the
    same samples (float64)."""
    cfg = {**to_plain(compose("train", [f"sampler={name}"], CONF).sampler), "progress": False, "num_steps": 8}
    cfg.pop("clip_denoised", None)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(64, 1, 2, 2, generator=g, dtype=torch.float64)
    wrapped = EDM.parametrization.wrap(exact_F, EDM)
    ours = instantiate(cfg, diffusion=EDM).sample(wrapped, noise.shape, noise=noise,
                                                  generator=torch.Generator().manual_seed(5)).images
    ref = instantiate(cfg, diffusion=EPS).sample(exact_eps(EPS), noise.shape, noise=noise,
                                                 generator=torch.Generator().manual_seed(5)).images
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-8)


def test_log_normal_timesteps_follow_the_log_normal_of_sigma():
    """ln sigma_t of the drawn t against N(-1.2, 1.2^2): its CDF at several quantiles (within 0.006: the cells
    are <= 0.02 wide and 5 standard errors of 200,000 draws are 0.0056) and its moments."""
    s = LogNormalTimesteps(T, EPS.alphas_cumprod, p_mean=-1.2, p_std=1.2)
    torch.manual_seed(0)
    t = torch.cat([s.sample(50_000, torch.device("cpu"))[0] for _ in range(4)])
    log_sigma = np.log(sigma_of(t))
    for q in (-3.5, -2.4, -1.2, 0.0, 1.5):
        expected = 0.5 * (1 + math.erf((q + 1.2) / (1.2 * math.sqrt(2))))
        assert abs((log_sigma <= q).mean() - expected) < 0.006, q
    assert abs(log_sigma.mean() + 1.2) < 0.015 and abs(log_sigma.std() - 1.2) < 0.015
    assert s.state_dict() == {}  # nothing persistent: the table is the schedule's


def test_objective_edm_composes_edms_recipe_and_trains_on_it():
    cfg = compose("train", ["objective=edm"], CONF)
    assert cfg.module.prediction == "edm" and cfg.module.sigma_data == "auto"
    assert cfg.objective.timestep_sampler == "log_normal" and dict(cfg.objective.log_normal) == {"p_mean": -1.2,
                                                                                               "p_std": 1.2}
    objective = Objective(EDM, to_plain(cfg.objective), None, None)
    net = EDM.parametrization.wrap(exact_F, EDM)
    x0 = MU + S_DATA * torch.randn(512, 1, 2, 2, dtype=torch.float64)
    out = objective(net, x0, None)
    assert torch.isfinite(out.loss)
    # the exact F's loss is the denoiser's irreducible error; a network that outputs zero does worse
    zero = training_terms(EDM, lambda x, t: torch.zeros_like(x), x0, t=out.t)["loss"].mean()
    exact = training_terms(EDM, net, x0, t=out.t)["loss"].mean()
    assert exact < zero


def test_sigma_data_is_the_training_pixels_standard_deviation():
    from sklearn.datasets import load_digits

    dm = instantiate(to_plain(compose("train", [], CONF).data))
    measured = dm.pixel_std()
    full = load_digits().images / 16 * 2 - 1  # the whole set; the training split is 90% of it
    assert abs(measured - full.std()) < 0.01


def test_sigma_data_is_refused_without_edm_and_required_with_it():
    with pytest.raises(ValueError, match="module.sigma_data"):
        Parametrization.of("eps", "fixedlarge", 0.5)
    with pytest.raises(ValueError, match="data.sigma_data"):
        Parametrization.of("edm", "fixedlarge", None)
    with pytest.raises(ValueError, match="data.sigma_data"):
        EDMPrediction(-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["edm", "min_snr"])
def test_every_sampler_and_the_evaluator_run_on_a_checkpoint_of_each_recipe(objective, tmp_path):
    """A few training steps of the recipe, then eval.py with every sampler (bits/dim too) on its checkpoint."""
    from ddpm.pipeline import SamplingPipeline
    from tests.helpers import SMOKE
    from tests.helpers.entry import run_entry

    run = run_entry("train", [*SMOKE, f"objective={objective}", "logger=none", "trainer.max_steps=3"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = next(tmp_path.rglob("last.ckpt"))
    contents = torch.load(ckpt, map_location="cpu", weights_only=True)
    if objective == "edm":  # the measured sigma_data is what the checkpoint records
        assert contents["hyper_parameters"]["sigma_data"] == pytest.approx(0.75, abs=0.01)
    for name in sorted(p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml")):
        sampler = {**to_plain(compose("train", [f"sampler={name}"], CONF).sampler), "num_steps": 4, "progress": False}
        images = SamplingPipeline.from_checkpoint(ckpt, sampler=sampler).sample(3, seed=0).images
        assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all(), name
    ev = run_entry("eval", [f"ckpt_path={ckpt}", "n_samples=8", "batch_size=8", "bpd_images=2", "fid=classifier",
                            "logger=none"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
