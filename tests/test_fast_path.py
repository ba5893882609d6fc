"""The fast path (torch.compile, channels_last, bf16 autocast) computes what the plain path computes.

Tolerances: fp32 compiled / channels_last vs eager: 1e-4 absolute on a loss of order 1 and on samples in
[-1, 1] (kernel fusion reorders float sums). bf16 autocast: 3e-2 on the loss (bf16 keeps 8 bits of mantissa).
"""

import math

import pytest
import torch

from ddpm.core.objective import training_losses
from ddpm.tasks.train import build_module
from tests.conftest import compose

PERF = {"compile", "compile_mode", "channels_last", "fused_optimizer", "sample_precision"}


def make(**options):
    overrides = ["model=unet_tiny", "scheduler.num_timesteps=20", "model.dropout=0.0"]
    overrides += [f"{'perf' if k in PERF else 'module'}.{k}={v}" for k, v in options.items()]
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
    x = x.contiguous(memory_format=m.plan.batch_memory_format)
    return training_losses(m.diffusion, m.network("train"), x, t, noise).mean()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    return x, torch.randint(0, 20, (16,), generator=g), torch.randn(16, 1, 8, 8, generator=g)


@pytest.mark.slow
def test_compiled_and_channels_last_loss_and_gradients_match(batch):
    plain, fast = make(), make(compile=True, channels_last=True)
    fast.configure_model()
    fast.load_state_dict(plain.state_dict())
    a, b = loss_of(plain, *batch), loss_of(fast, *batch)
    assert abs(a.item() - b.item()) < 1e-4
    a.backward(), b.backward()
    for (name, p), q in zip(plain.net.named_parameters(), fast.net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_compiled_sampling_matches_eager(batch):
    from ddpm.core.samplers import DDIMSampler, DPMSolverSampler

    plain, fast = make(), make(compile=True)
    fast.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fast.pipeline().sample(4, seed=3).images, plain.pipeline().sample(4, seed=3).images,
                               rtol=0, atol=1e-4)
    for sampler in (DDIMSampler(plain.diffusion, num_steps=5, eta=1.0), DPMSolverSampler(plain.diffusion, num_steps=5)):
        sampler.progress = False
        torch.testing.assert_close(fast.pipeline().with_sampler(sampler).sample(4, seed=3).images,
                                   plain.pipeline().with_sampler(sampler).sample(4, seed=3).images, rtol=0, atol=1e-4)


def test_bf16_autocast_loss_is_close(batch):
    m = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_of(m, *batch)
    assert abs(low.item() - loss_of(m, *batch).item()) < 3e-2
    drawn = make(sample_precision="bf16").pipeline().sample(2, seed=0)
    assert drawn.images.dtype == torch.float32  # the chain stays fp32


def test_gradient_clipping_clips_to_the_float64_norm_and_logs_the_norm_before_clipping():
    m = make()
    logged = {}
    m.log = lambda name, value, **k: logged.__setitem__(name, float(value))
    g = torch.Generator().manual_seed(2)
    for p in m.net.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    before = [p.grad.double().clone() for p in m.net.parameters()]
    norm = torch.sqrt(sum((b ** 2).sum() for b in before)).item()  # independent: float64, one sum
    m.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert logged["train/grad_norm"] == pytest.approx(norm, rel=1e-5)
    scale = 1.0 / (norm + 1e-6)  # torch's clip_grad_norm_ convention (eps 1e-6 in the denominator)
    for b, p in zip(before, m.net.parameters()):
        torch.testing.assert_close(p.grad.double(), b * scale, rtol=1e-5, atol=1e-8)
    m.configure_gradient_clipping(None, gradient_clip_val=1e-3, gradient_clip_algorithm="value")
    assert max(p.grad.abs().max().item() for p in m.net.parameters()) == pytest.approx(1e-3, rel=1e-6)  # fp32 1e-3


def _fit(fused: bool) -> list[torch.Tensor]:
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", f"perf.fused_optimizer={fused}",
                   "data.batch_size=32"])
    torch.manual_seed(0)
    module, data = build_module(cfg), instantiate(cfg.data)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, gradient_clip_val=0.05, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    assert getattr(trainer.optimizers[0], "defaults", {}).get("fused") is (True if fused else None)
    return [p.detach().clone() for p in module.ema.module.parameters()]


def test_fused_optimizer_with_clipping_trains_like_the_foreach_one():
    """Lightning refuses to clip for fused optimizers; ours clips itself. Same math: the weights after 4 clipped
    steps agree within 1e-6 (the fused kernel orders its float ops differently)."""
    for a, b in zip(_fit(False), _fit(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fused_optimizer_with_fp16_loss_scaling_is_refused():
    from ddpm.errors import ConfigError
    from ddpm.runtime.perf import resolve_plan

    perf = dict(compose(["perf=gpu"]).perf)
    with pytest.raises(ConfigError, match="bf16-mixed"):
        resolve_plan(perf, torch.device("cpu"), "16-mixed")
    assert resolve_plan(perf, torch.device("cpu"), "bf16-mixed").fused_optimizer


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_float64_recurrence(warmup):
    """EMA_0 = W_0 (a copy, as torch's AveragedModel makes), then EMA_k = d_k EMA_{k-1} + (1 - d_k) W_k with
    d_k = min(decay, (1 + k) / (10 + k)) under warm-up, else decay; recomputed here in float64."""
    m = make(ema_decay=0.9, ema_warmup=warmup)
    g = torch.Generator().manual_seed(4)
    reference = None
    for step in range(6):
        with torch.no_grad():
            for p in m.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        weights = [p.detach().double().clone() for p in m.net.parameters()]
        m.ema.step(m.net, step)
        d = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
        reference = weights if reference is None else [d * r + (1 - d) * w for r, w in zip(reference, weights)]
        if step == 0:
            for w, e in zip(weights, m.ema.module.parameters()):
                assert torch.equal(e.double(), w)  # the first update copies exactly
    for r, e in zip(reference, m.ema.module.parameters()):
        torch.testing.assert_close(e.double(), r, rtol=1e-6, atol=1e-6)
    assert int(m.ema.n_averaged) == 6
    from ddpm.nn.ema import ema_decay_at

    assert ema_decay_at(10**6, 0.9, warmup) == 0.9 and (ema_decay_at(1, 0.9, warmup) == 2 / 11) is warmup
    assert ema_decay_at(0, 0.9, warmup) == 0.0


def test_trainer_step_updates_the_ema_once_starting_with_a_copy():
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "data.batch_size=16"])
    module, data = build_module(cfg), instantiate(cfg.data)
    pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0).fit(module, datamodule=data)
    assert int(module.ema.n_averaged) == 1
    for p, e in zip(module.net.parameters(), module.ema.module.parameters()):
        assert torch.equal(p, e)


def test_unknown_compile_mode_is_refused_and_sample_precision_32_is_accepted():
    with pytest.raises(Exception, match="compile_mode must be one of"):
        make(compile_mode="fastest").plan
    assert make(sample_precision=32).plan.sample_bf16 is False  # Hydra reads `=32` as an int
    assert make(sample_precision="bf16").plan.sample_bf16 is True


def test_channels_last_makes_the_parameters_nhwc_and_keeps_the_compiled_batch_nchw():
    """compiled: Inductor lays activations out NHWC inside the graph, the batch stays NCHW; the parameters (and
    the EMA's) are NHWC in both modes, so the graph's NHWC weight gradients need no copy."""
    assert make(compile=True, channels_last=True).plan.batch_memory_format == torch.contiguous_format
    assert make(channels_last=True).plan.batch_memory_format == torch.channels_last  # eager: the tensors themselves
    for m in (make(compile=True, channels_last=True), make(channels_last=True)):
        m.configure_model()
        convs = [p for p in (*m.net.parameters(), *m.ema.module.parameters()) if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    plain = make()
    plain.configure_model()
    assert all(p.is_contiguous() for p in plain.net.parameters())


def _fit_steps(steps: int, tmp_path, channels_last: bool, ckpt_path=None) -> tuple[list[torch.Tensor], str]:
    """Fit unet_tiny on digits to `steps` on the CPU (fused Adam), from `ckpt_path` if given; the weights and
    the path of the checkpoint saved at the end."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "model.dropout=0.0", "data.batch_size=32",
                   "perf.fused_optimizer=true", f"perf.channels_last={channels_last}"])
    torch.manual_seed(0)
    module, data = build_module(cfg), instantiate(cfg.data)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    path = str(tmp_path / f"step{steps}_{channels_last}.ckpt")
    trainer.save_checkpoint(path)
    return [p.detach().clone() for p in module.net.parameters()], path


def test_resuming_nchw_adam_state_into_channels_last_parameters_trains_like_nchw(tmp_path):
    """A checkpoint of an NCHW run (a CPU run, say) resumed with channels_last on: the fused Adam kernel walks
    parameter and moments as flat memory, so NCHW moments next to NHWC weights would pair each weight with
    another's moments. The state is converted to the parameters' layout: the two resumed runs (same checkpoint,
    same draws) then agree to 1e-6 (measured 7e-9: NHWC convolutions sum in another order; without the
    conversion they differ by 5e-5 after two steps)."""
    _, half = _fit_steps(2, tmp_path, channels_last=False)
    nchw, _ = _fit_steps(4, tmp_path, channels_last=False, ckpt_path=half)
    nhwc, _ = _fit_steps(4, tmp_path, channels_last=True, ckpt_path=half)
    for a, b in zip(nchw, nhwc):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_training_steps_do_not_wait_for_the_device_except_at_checks(monkeypatch):
    """Lightning turns progress-bar tensors into floats (.item(): a wait for the GPU) at every step; the module
    logs no progress-bar tensor, and the bar shows the loss the NaN check fetched (every check_every_n_steps)."""
    import lightning.pytorch as pl
    import lightning.pytorch.trainer.connectors.logger_connector.result as result
    from hydra.utils import instantiate

    from ddpm.training.callbacks import LossProgressBar

    converted = []
    convert = result.convert_tensors_to_scalars
    monkeypatch.setattr(result, "convert_tensors_to_scalars", lambda v: converted.append(v) or convert(v))
    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "data.batch_size=32",
                   "module.check_every_n_steps=5"])
    module, data = build_module(cfg), instantiate(cfg.data)
    bar = LossProgressBar()
    trainer = pl.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False, callbacks=[bar],
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    assert converted == []
    assert bar.get_metrics(trainer, module)["train/loss"] == module.checked_loss
    assert isinstance(module.checked_loss, float) and math.isfinite(module.checked_loss)
