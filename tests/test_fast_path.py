"""The fast path (torch.compile, channels_last, bf16 autocast) computes what the plain path computes.

Tolerances: fp32 compiled / channels_last vs eager: 1e-4 absolute on a loss of order 1 and on samples in
[-1, 1] (kernel fusion reorders float sums). bf16 autocast: 3e-2 on the loss (bf16 keeps 8 bits of mantissa).
"""

import pytest
import torch

from ddpm.train import build_module
from tests.conftest import compose


def make(**module):
    overrides = ["model=unet_tiny", "scheduler.num_timesteps=20", "model.dropout=0.0"]
    overrides += [f"module.{k}={v}" for k, v in module.items()]
    torch.manual_seed(0)
    m = build_module(compose(overrides))
    with torch.no_grad():  # leave the zero-initialised start, where eps_theta = 0 whatever the network
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.ema.module.load_state_dict(m.net.state_dict())
    m.log = lambda *a, **k: None
    m.sampler.progress = False
    return m


def loss_of(m, x, t, noise):
    return m.diffusion.training_losses(m._network("train"), x.contiguous(memory_format=m._memory_format()), t, noise).mean()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    return x, torch.randint(0, 20, (16,), generator=g), torch.randn(16, 1, 8, 8, generator=g)


def test_compiled_and_channels_last_loss_and_gradients_match(batch):
    plain, fast = make(), make(compile=True, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    fast.on_fit_start()
    a, b = loss_of(plain, *batch), loss_of(fast, *batch)
    assert abs(a.item() - b.item()) < 1e-4
    a.backward(), b.backward()
    for (name, p), q in zip(plain.net.named_parameters(), fast.net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_compiled_sampling_matches_eager(batch):
    plain, fast = make(), make(compile=True)
    fast.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fast.sample(4, seed=3).images, plain.sample(4, seed=3).images, rtol=0, atol=1e-4)


def test_bf16_autocast_loss_is_close(batch):
    m = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_of(m, *batch)
    assert abs(low.item() - loss_of(m, *batch).item()) < 3e-2
    assert make(sample_precision="bf16").sample(2, seed=0).images.dtype == torch.float32  # the chain stays fp32
