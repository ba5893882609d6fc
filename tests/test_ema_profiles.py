"""EDM2's power-function EMA (Karras et al. 2024) against its definition: the average of the weights of steps
1..N weighted by the power function t^gamma integrated over each step, s^(gamma+1) - (s-1)^(gamma+1) (the closed
form of the recursion's products), whose relative standard deviation is sigma_rel; and the run's tracked profiles
as eval.py reads them."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.nn.ema import PowerEMA, power_function_gamma


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_gamma_matches_edm2s_published_pairs(sigma_rel, gamma):
    assert power_function_gamma(sigma_rel) == pytest.approx(gamma, abs=0.005)  # EDM2, sec. 3.1


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_the_average_weighs_step_s_by_s_to_the_gamma_and_has_relative_std_sigma_rel(sigma_rel):
    """A 'network' whose two parameters are s and s^2 after step s: the EMA holds E[s] and E[s^2] under the
    average's weights. Against the integrated power-function weights summed in float64, and std / N against
    sigma_rel (the continuous profile's; within 1% at N = 4000)."""
    n = 4000
    net = torch.nn.Linear(2, 1, bias=False).double()
    ema = PowerEMA(net, sigma_rel)
    for step in range(n):
        s = step + 1
        with torch.no_grad():
            net.weight.copy_(torch.tensor([[s, s * s]], dtype=torch.float64))
        ema.step(net, step)
    m1, m2 = ema.module.weight[0].tolist()
    gamma = power_function_gamma(sigma_rel)
    s = torch.arange(1, n + 1, dtype=torch.float64)
    w = s ** (gamma + 1) - (s - 1) ** (gamma + 1)
    assert m1 == pytest.approx(float((w * s).sum() / w.sum()), rel=1e-9)
    assert m2 == pytest.approx(float((w * s * s).sum() / w.sum()), rel=1e-9)
    assert math.sqrt(m2 - m1 * m1) / n == pytest.approx(sigma_rel, rel=0.01)


def test_a_profile_longer_than_the_uniform_average_is_refused():
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        power_function_gamma(0.3)


@pytest.mark.slow
def test_tracked_profiles_are_checkpointed_and_each_is_evaluated(tmp_path):
    import json

    from ddpm.io.checkpoint import network_weights
    from ddpm.pipeline import SamplingPipeline
    from tests.helpers import SMOKE
    from tests.helpers.entry import run_entry

    run = run_entry("train", [*SMOKE, "module.ema_profiles=[0.05,0.2]", "logger=none", "trainer.max_steps=6"],
                    tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = next(tmp_path.rglob("last.ckpt"))
    contents = torch.load(ckpt, map_location="cpu", weights_only=True)
    short, long = network_weights(contents, "0.05"), network_weights(contents, "0.2")
    assert short.keys() == network_weights(contents, "ema").keys()
    assert not all(torch.equal(short[k], long[k]) for k in short)  # two averages, not copies
    pipe = SamplingPipeline.from_checkpoint(ckpt, weights="0.2")
    assert all(torch.equal(v, long[k]) for k, v in pipe.net.state_dict().items())
    with pytest.raises(ConfigError, match="holds ema, net, 0.05, 0.2"):
        network_weights(contents, "0.1")

    ev = run_entry("eval", [f"ckpt_path={ckpt}", "ema=all", "n_samples=16", "batch_size=16", "metrics=[fid]",
                            "logger=none"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    out = next(tmp_path.glob("logs/eval/runs/*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"] == "ema" and set(metrics["by_ema"]) == {"ema", "0.05", "0.2"}
    for name in ("0.05", "0.2"):
        own = json.loads((out / f"ema_{name}" / "metrics.json").read_text())
        assert own["weights"] == name and own["fd_resnet"] == metrics["by_ema"][name]["fd_resnet"]
    bad = run_entry("eval", [f"ckpt_path={ckpt}", "ema=0.1", "n_samples=16", "logger=none"], tmp_path)
    assert bad.returncode == 2 and "ema=0.1: this checkpoint holds ema, net, 0.05, 0.2" in bad.stderr
