"""L_vlb-only training and loss-aware timestep sampling (Improved DDPM sec. 3.3), against independent
computations: the importance distribution from a hand-kept history (float64, Python lists), the estimator's
unbiasedness in closed form and by Monte Carlo, and its variance against uniform t in closed form."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.likelihood import vlb_terms_bpd
from ddpm.core.objective import (
    LossSecondMomentTimesteps,
    UniformTimesteps,
    build_timestep_sampler,
    check_objective,
    training_terms,
)
from ddpm.core.parametrization import Parametrization
from ddpm.core.schedules import linear_betas
from ddpm.core.timesteps import inverse_cdf_timesteps


def _filled(T=6, H=3, uniform_prob=0.05, seed=0):
    """A warmed-up sampler and the same history as Python lists of floats."""
    s = LossSecondMomentTimesteps(T, H, uniform_prob)
    g = torch.Generator().manual_seed(seed)
    ref = [deque(maxlen=H) for _ in range(T)]
    for _ in range(4):
        t = torch.randint(0, T, (3 * T,), generator=g)
        losses = torch.rand(3 * T, generator=g, dtype=torch.float64) * (1 + t.double()) ** 2
        s.update(t, losses)
        for ti, li in zip(t.tolist(), losses.tolist()):
            ref[ti].append(li)
    assert all(len(r) == H for r in ref)
    return s, ref


def test_history_keeps_the_last_h_losses_of_each_t_even_with_duplicates_in_a_batch():
    T, H = 4, 3
    s = LossSecondMomentTimesteps(T, H, 0.001)
    ref = [deque(maxlen=H) for _ in range(T)]
    batches = [([2, 2, 2, 2, 2, 0], [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]),  # five of t = 2 in one batch: keep 3, 4, 5
               ([2, 1, 2], [6.0, 7.0, 8.0]), ([3, 0, 3, 3, 3], [1.5, 2.5, 3.5, 4.5, 5.5])]
    for t, losses in batches:
        s.update(torch.tensor(t), torch.tensor(losses))
        for ti, li in zip(t, losses):
            ref[ti].append(li)
        for ti in range(T):
            held = s.loss_history[ti, : int(s.loss_count[ti])].tolist()
            assert sorted(held) == sorted(ref[ti]), (ti, held, list(ref[ti]))


def test_uniform_with_weight_one_until_every_t_holds_its_history():
    T, H = 5, 2
    s = LossSecondMomentTimesteps(T, H, 0.001)
    s.update(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.arange(1.0, 10.0))  # t = 4 has only one loss
    torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))
    t, w = s.sample(64, torch.device("cpu"))
    assert torch.equal(w, torch.ones(64)) and t.min() >= 0 and t.max() < T
    s.update(torch.tensor([4]), torch.tensor([100.0]))
    assert not torch.allclose(s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))


def test_probabilities_are_the_root_second_moment_mixed_with_uniform():
    s, ref = _filled()
    T, u = len(ref), s.uniform_prob
    rms = [math.sqrt(sum(x * x for x in r) / len(r)) for r in ref]
    want = [(1 - u) * m / sum(rms) + u / T for m in rms]
    torch.testing.assert_close(s.probabilities(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    t, w = s.sample(1000, torch.device("cpu"))
    torch.testing.assert_close(w.double(), 1 / (T * torch.tensor(want, dtype=torch.float64)[t]), rtol=1e-6, atol=0)


def test_importance_weighted_loss_is_unbiased_exactly_and_by_monte_carlo():
    """E_{t~p}[L_t / (T p_t)] = mean_t L_t: exact in float64, and the sampled estimate within 5 standard errors."""
    s, _ = _filled(T=8, H=4)
    T = 8
    L = torch.linspace(0.1, 30.0, T, dtype=torch.float64) ** 2  # a fixed loss per t
    p = s.probabilities()
    exact = (p * L / (T * p)).sum()
    torch.testing.assert_close(exact, L.mean(), rtol=1e-12, atol=0)
    torch.manual_seed(0)
    t, w = s.sample(200_000, torch.device("cpu"))
    est = w.double() * L[t]
    assert abs(est.mean() - L.mean()) < 5 * est.std() / math.sqrt(est.numel())


def test_loss_aware_estimator_has_lower_variance_than_uniform_for_losses_spread_over_t():
    """Closed form: Var_p = (1/T^2) sum_t L_t^2 / p_t - (mean L)^2; the history's losses are the true L_t."""
    T, H = 50, 5
    L = torch.logspace(-3, 1, T, dtype=torch.float64).flip(0)  # L_vlb-like: large at small t
    s = LossSecondMomentTimesteps(T, H, 0.001)
    for _ in range(H):
        s.update(torch.arange(T), L)
    p, uniform = s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64)

    def variance(q):
        return (L.pow(2) / q).sum() / T**2 - L.mean() ** 2

    torch.testing.assert_close(p, 0.999 * L / L.sum() + 0.001 / T)  # constant losses: p_t prop. to L_t
    assert variance(p) < 0.01 * variance(uniform)


def test_history_is_checkpointed_and_restored():
    s, _ = _filled()
    fresh = LossSecondMomentTimesteps(6, 3, 0.05)
    fresh.load_state_dict(s.state_dict())
    torch.testing.assert_close(fresh.probabilities(), s.probabilities(), rtol=0, atol=0)
    assert set(s.state_dict()) == {"loss_history", "loss_count", "write_pos"}
    assert UniformTimesteps(6).state_dict() == {}  # uniform runs' checkpoints keep their keys


def test_uniform_sampler_draws_as_before():
    torch.manual_seed(3)
    t, w = UniformTimesteps(1000).sample(16, torch.device("cpu"))
    torch.manual_seed(3)
    assert w is None and torch.equal(t, torch.randint(0, 1000, (16,)))


def test_bad_settings_say_what_to_set():
    with pytest.raises(ValueError, match="objective.loss must be one of"):
        check_objective(Parametrization.of("eps", "fixedlarge"), "kl", 0.001, "uniform", None, 0.0)
    with pytest.raises(ValueError, match="objective.timestep_sampler must be one of"):
        check_objective(Parametrization.of("eps", "fixedlarge"), "vlb", 0.001, "importance", None, 0.0)
    with pytest.raises(ValueError, match="objective.loss=vlb"):
        check_objective(Parametrization.of("eps", "learned_range"), "simple", 0.0, "uniform", None, 0.0)
    learned = Parametrization.of("eps", "learned_range")
    check_objective(learned, "vlb", 0.0, "loss_aware", None, 0.0)  # L_vlb alone needs no lambda
    with pytest.raises(ValueError, match="objective.loss_aware"):
        build_timestep_sampler("loss_aware", 10, None)
    with pytest.raises(ValueError, match="uniform_prob"):
        build_timestep_sampler("loss_aware", 10, {"history_per_term": 10, "uniform_prob": 0.0})


class _Net(torch.nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, out_channels, 1)

    def forward(self, x, t):
        return self.conv(x)


@pytest.mark.parametrize("variance_type", ["learned_range", "fixedlarge"])
def test_vlb_loss_is_t_times_l_t_and_trains_the_mean_too(variance_type):
    """loss=vlb: the per-sample loss is T L_t (the float64 L_t tested in test_beyond_ddpm.py), and unlike
    L_hybrid's frozen mean its gradient reaches the eps channels."""
    for T in (50, 200):
        d = GaussianDiffusion(linear_betas(T, scale_to_num_timesteps=True), variance_type)
        torch.manual_seed(0)
        net = _Net(d.output_channels(1))
        x0, t, noise = torch.rand(8, 1, 4, 4) * 2 - 1, torch.randint(0, T, (8,)), torch.randn(8, 1, 4, 4)
        terms = training_terms(d, net, x0, t, noise, loss="vlb")
        x_t = d.q_sample(x0, t, noise)
        out = d.split_output(net(x_t, t).float(), x_t, t)
        l_t = vlb_terms_bpd(d, out.eps, x0, x_t, t, clip_denoised=False, var_frac=out.var_frac)
        torch.testing.assert_close(terms["loss"].double(), T * l_t, rtol=1e-6, atol=0)
        (eps_grad,) = torch.autograd.grad(terms["loss"].sum(), net.conv.weight)
        assert eps_grad[0].abs().sum() > 0  # output channel 0 is eps


def test_the_objective_object_weights_gathers_and_splits_by_quarter():
    """Objective: the step's loss is the mean of the per-sample losses (uniform t: weight 1); a loss-aware sampler
    is updated with what `gather` returns (here: this rank's values twice, as two ranks would); the per-quarter
    statistics equal a hand computation."""
    from ddpm.core.objective import Objective, TrainingLoss

    d = GaussianDiffusion(linear_betas(40))
    net = _Net(1)
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    torch.manual_seed(0)
    out = Objective(d, {"loss": "simple", "vlb_weight": 0.0}, None, None)(net, x0, None)
    assert torch.allclose(out.loss, out.losses.mean()) and out.parts == {}
    aware = Objective(d, {"loss": "vlb", "vlb_weight": 0.0, "timestep_sampler": "loss_aware",
                                "loss_aware": {"history_per_term": 4, "uniform_prob": 0.001}}, None, None)
    aware(net, x0, None, gather=lambda v: torch.cat([v, v]))
    assert int(aware.timestep_sampler.loss_count.sum()) <= 2 * 16 and int(aware.timestep_sampler.loss_count.sum()) > 16
    manual = TrainingLoss(torch.tensor(0.0), torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0, 9, 10, 39]), {})
    assert manual.by_quarter(40) == {0: (1.5, 2), 1: (3.0, 1), 3: (5.0, 1)}
    with pytest.raises(ValueError, match="objective.timestep_sampler must be one of"):
        Objective(d, {"timestep_sampler": "importance"}, None, None)


def test_inverse_cdf_draws_each_t_with_its_probability():
    """Frequencies of 400,000 draws against p (zeros included): each within 5 binomial standard errors, and a t of
    zero mass never drawn."""
    p = torch.tensor([0.0, 0.5, 0.0, 0.1, 0.3, 0.0999, 0.0001], dtype=torch.float64)
    torch.manual_seed(0)
    t = inverse_cdf_timesteps(torch.cumsum(p, 0), 400_000, torch.device("cpu"))
    freq = torch.bincount(t, minlength=len(p)).double() / t.numel()
    se = (p * (1 - p) / t.numel()).sqrt()
    assert (freq[p == 0] == 0).all() and ((freq - p).abs() <= 5 * se + 1e-12).all(), freq
