"""The sampler contract, run on every file in conf/sampler/: a new sampler is its module and its YAML file, and this
file tests it without being edited. Each sampler's own formulas are tested against hand computations elsewhere
(test_samplers.py, test_edm.py, test_euler_ancestral.py).

The Monte-Carlo check uses the exact eps-predictor of Gaussian data x_0 ~ N(MU, S_DATA^2) (tests/helpers/gaussian.py):
every sampler at its configured defaults must reproduce the mean within 0.02 and the standard deviation within 0.06
(n = 20,000: 5 standard errors are 0.018 and 0.013; the rest is the discretisation error of the defaults, largest
for the first-order Euler ancestral at its 100 steps: its standard deviation comes out 0.034 low)."""

from __future__ import annotations

import pytest
import torch

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.schedules import linear_betas
from ddpm.io.compat import instantiate
from ddpm.tasks.config import compose, to_plain
from tests.conftest import CONF, ROOT
from tests.helpers.gaussian import MU, S_DATA, exact_eps

NAMES = sorted(p.stem for p in (ROOT / "conf" / "sampler").glob("*.yaml"))
N = 20_000
DIFFUSION = GaussianDiffusion(linear_betas(1000))


def build(name: str, diffusion: GaussianDiffusion = DIFFUSION, **changes):
    """The sampler conf/sampler/<name>.yaml configures, as a run composes it, without progress output."""
    cfg = to_plain(compose("train", [f"sampler={name}"], CONF).sampler)
    return instantiate({**cfg, "progress": False, **changes}, diffusion=diffusion)


class Counting:
    """A model that counts its calls and the samples it saw."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("name", NAMES)
def test_a_samplers_name_is_its_config_name(name):
    sampler = build(name)
    assert sampler.name == name and sampler.describe().startswith(f"{name}(")


@pytest.mark.parametrize("name", NAMES)
def test_nfe_is_the_network_calls_per_sample(name):
    model = Counting(exact_eps(DIFFUSION))
    sampler = build(name, num_steps=6)
    sampler.sample(model, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert model.calls == sampler.nfe


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_draws_the_same_samples(name):
    sampler = build(name, num_steps=5)

    def draw(seed):
        return sampler.sample(exact_eps(DIFFUSION), (4, 1, 2, 2), generator=torch.Generator().manual_seed(seed)).images

    assert torch.equal(draw(1), draw(1))


@pytest.mark.parametrize("name", NAMES)
def test_the_callback_sees_every_step_and_the_chain_starts_at_the_noise(name):
    sampler = build(name, num_steps=5)
    seen = []
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    first, last = sampler.timesteps[0], sampler.timesteps[-1]
    out = sampler.sample(exact_eps(DIFFUSION), noise.shape, generator=torch.Generator().manual_seed(3), noise=noise,
                         record_timesteps=[first, last], callback=seen.append)
    assert [s["i"] for s in seen] == list(range(len(sampler.timesteps)))
    assert [s["t"] for s in seen] == sampler.timesteps
    assert torch.equal(seen[-1]["x"], out.images) and all(s["denoised"].shape == noise.shape for s in seen)
    assert out.chain_timesteps == [first, last, -1]
    torch.testing.assert_close(out.chain[0], noise)  # x_T at the network's scale
    assert torch.equal(out.chain[-1], out.images)


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_at_its_defaults_draws_the_data_distribution(name):
    sampler = build(name, clip_denoised=False)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(N, 1, 1, 1, generator=g, dtype=torch.float64)
    x = sampler.sample(exact_eps(DIFFUSION), noise.shape, generator=g, noise=noise).images.flatten()
    assert abs(x.mean().item() - MU) < 0.02 and abs(x.std().item() - S_DATA) < 0.06, (x.mean(), x.std())
