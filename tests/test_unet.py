"""The U-Net: output shapes for every size and data set, the 35.7M CIFAR-10 count, and config errors."""

import math

import pytest
import torch
from hydra.utils import instantiate

from ddpm.nn.unet import UNet, check_unet_config, timestep_embedding
from tests.conftest import compose

MODELS = ["unet_tiny", "unet_small", "unet_base", "unet_large"]
DATA = ["digits", "mnist", "fashion_mnist", "cifar10", "image_folder"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATA)
def test_every_model_fits_every_data_set(model, data):
    """Every combination composes into a buildable network (channels and size come from the data config)."""
    cfg = compose([f"model={model}", f"data={data}", "data.root=unused"])
    m = cfg.model
    check_unet_config(m.image_size, m.channel_mult, m.attention_resolutions, m.base_channels, m.num_heads, m.num_groups)
    assert m.in_channels == cfg.data.channels and m.image_size == cfg.data.image_size
    assert "out_channels" not in m  # the parametrization decides it in code (DiffusionModule)


@pytest.mark.parametrize("model", ["unet_tiny", "unet_small", "unet_base"])
@pytest.mark.parametrize("data", ["digits", "cifar10"])
def test_output_shape(model, data):
    cfg = compose([f"model={model}", f"data={data}"])
    net = instantiate(cfg.model).eval()
    c, s = cfg.data.channels, cfg.data.image_size
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape


def test_large_output_shape_on_digits():
    net = instantiate(compose(["model=unet_large", "data=digits"]).model).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 8), torch.tensor([5])).shape == (1, 1, 8, 8)


def test_unet_base_is_the_35_7m_ddpm_cifar10_network():
    net = instantiate(compose(["model=unet_base", "data=cifar10"]).model)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 35.7e6) < 0.1e6, n
    assert net.base_channels == 128 and len(net.mid) == 3


def test_output_conv_is_zero_initialised_and_time_changes_output():
    net = UNet(8, 1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_groups=8)
    x = torch.randn(2, 1, 8, 8)
    assert net(x, torch.tensor([1, 2])).abs().max().item() == 0.0
    with torch.no_grad():  # zero-initialised residual branches hide t at init: perturb every weight
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([1, 900]))
    assert not torch.allclose(a[1], b[1])


def test_timestep_embedding_matches_ddpm_formula():
    t, dim = torch.tensor([0, 1, 10, 999]), 8
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for row, tv in enumerate(t.tolist()):
        freqs = [math.exp(-math.log(10000) * i / (half - 1)) for i in range(half)]
        expected = [math.sin(tv * f) for f in freqs] + [math.cos(tv * f) for f in freqs]
        assert emb[row].tolist() == pytest.approx(expected, abs=1e-4)


def test_attention_heads_agree_with_manual_softmax():
    from ddpm.nn.unet import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2, groups=4, eps=1e-6)
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 8, 3, 3)
    h = block.norm(x)
    q, k, v = block.qkv(h).reshape(2, 3, 2, 4, 9).unbind(1)  # (B, heads, C/heads, HW)
    w = torch.softmax(torch.einsum("bhcq,bhck->bhqk", q, k) / math.sqrt(4), dim=-1)
    out = torch.einsum("bhqk,bhck->bhcq", w, v).reshape(2, 8, 3, 3)
    torch.testing.assert_close(block(x), x + block.proj_out(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=28, channel_mult=(1, 2, 2, 2)), "cannot be halved 3 times evenly"),
        (dict(image_size=8, attention_resolutions=(16,)), r"attention resolution\(s\) \[16\] never occur"),
        (dict(image_size=8, base_channels=24), "GroupNorm groups"),
        (dict(image_size=8, num_heads=3, attention_resolutions=()), "attention heads"),
    ],
)
def test_bad_unet_config_says_what_to_change(kwargs, message):
    base = dict(image_size=8, channel_mult=(1, 2), base_channels=32, attention_resolutions=(4,), num_groups=16,
                num_heads=1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        UNet(**base)


def test_forward_rejects_wrong_input_shape():
    net = UNet(8, 1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), num_groups=8)
    with pytest.raises(ValueError, match=r"UNet expects \(B, 1, 8, 8\)"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([0]))


def test_upsample_equals_nearest_interpolation_in_values_gradients_and_layout():
    """Upsample broadcasts instead of calling F.interpolate (a cheaper backward): same function, float64."""
    import torch.nn.functional as F

    from ddpm.nn.unet import Upsample

    torch.manual_seed(0)
    up = Upsample(4).double()
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    ours, ref = up(x), up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    grad_ours, grad_ref = torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0]
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-12, atol=1e-12)  # only the summation order differs
    nhwc = x.detach().to(memory_format=torch.channels_last)
    assert up(nhwc).is_contiguous(memory_format=torch.channels_last)
