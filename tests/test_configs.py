"""Every option of every config group composes, and the parts that need no hardware instantiate."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from ddpm.core.diffusion import GaussianDiffusion
from tests.conftest import CONF, compose

GROUPS = ["scheduler", "model", "data", "sampler", "objective", "trainer", "perf", "logger", "callbacks", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


NEEDS = {"image_folder": ["data.root=somewhere"],  # options whose required keys (???) a user gives
         "torchvision": ["data.name=kmnist", "data.dataset=kmnist", "data.channels=1"]}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}", *NEEDS.get(option, ["seed=42"])])
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.in_channels == cfg.data.channels


def test_variants_list_only_what_they_change():
    """model/ options extend unet_base, the torchvision data sets extend data/torchvision: no key repeats its
    base's value (a repeated key would hide a change of the base)."""
    import yaml

    for group, base, variants in (("model", "unet_base", ["unet_tiny", "unet_small", "unet_large"]),
                                  ("data", "torchvision", ["mnist", "fashion_mnist", "cifar10"])):
        parent = yaml.safe_load((Path(CONF) / group / f"{base}.yaml").read_text())
        for name in variants:
            own = yaml.safe_load((Path(CONF) / group / f"{name}.yaml").read_text())
            assert own.pop("defaults") == [base, "_self_"], name
            assert [k for k, v in own.items() if parent.get(k) == v] == [], name


def test_required_groups_exist():
    for group, expected in {
        "scheduler": {"linear", "cosine", "quadratic", "sigmoid"},
        "model": {"unet_tiny", "unet_small", "unet_base", "unet_large"},
        "data": {"digits", "mnist", "fashion_mnist", "cifar10", "image_folder"},
        "trainer": {"default", "cpu", "gpu", "ddp"},
        "logger": {"wandb", "csv", "tensorboard", "none"},
        "callbacks": {"default"},
    }.items():
        assert expected <= set(options(group)), group


@pytest.mark.parametrize("scheduler", options("scheduler"))
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_every_schedule_builds_a_valid_diffusion(scheduler, T):
    cfg = compose([f"scheduler={scheduler}", f"scheduler.num_timesteps={T}"])
    d = GaussianDiffusion(instantiate(cfg.scheduler))
    assert d.num_timesteps == T and torch.isfinite(d.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("trainer", ["default", "cpu"])
@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_trainer_and_logger_instantiate(tmp_path, trainer, logger):
    from ddpm.tasks.config import to_plain
    from ddpm.training.loggers import build_loggers

    cfg = compose([f"trainer={trainer}", f"logger={logger}"], output_dir=tmp_path)
    loggers = build_loggers(to_plain(cfg.get("logger")), 0.1)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    t = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert t.max_steps == cfg.trainer.max_steps and len(t.loggers) == len(loggers)


def test_gpu_trainers_use_bf16_mixed():
    for name in ("gpu", "ddp"):
        cfg = compose([f"trainer={name}"])
        assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert compose(["trainer=ddp"]).trainer.strategy == "ddp"


def test_output_dirs_are_unique_to_the_microsecond():
    run_dir = (Path(CONF) / "hydra" / "default.yaml").read_text()
    assert "%f" in run_dir and "chdir: false" in run_dir


def test_config_numbers_that_define_a_method():
    """The numbers that make a schedule the paper's, checked where they are written (conf/scheduler/), and the
    cosine schedule built from its config against an independent float64 evaluation of Nichol & Dhariwal's
    formula (s = 0.008 gives beta_0 = 4.128e-05; s = 0 would give beta_0 = 2.5e-6)."""
    linear = compose(["scheduler=linear"]).scheduler
    assert (linear.beta_start, linear.beta_end, linear.num_timesteps) == (1e-4, 0.02, 1000)
    assert linear.scale_to_num_timesteps is False
    cosine = compose(["scheduler=cosine"]).scheduler
    assert (cosine.s, cosine.max_beta, cosine.num_timesteps) == (0.008, 0.999, 1000)
    sigmoid = compose(["scheduler=sigmoid"]).scheduler
    assert (sigmoid.start, sigmoid.end, sigmoid.tau) == (-3.0, 3.0, 1.0)  # Chen (2023) / lucidrains' defaults

    import math

    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)]
    betas = instantiate(cosine)
    torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    assert abs(betas[0].item() - 4.128e-05) < 5e-9


def test_perf_group_options_compose():
    from dataclasses import fields

    from ddpm.runtime.perf import Perf

    for option in ("auto", "gpu", "cpu"):
        assert set(compose([f"perf={option}"]).perf) == {f.name for f in fields(Perf)}


def test_mnist_likes_pad_and_others_resize_by_default():
    for data, fit in {"mnist": "pad", "fashion_mnist": "pad", "digits": "resize", "cifar10": "resize",
                      "image_folder": "resize", "synthetic": "resize"}.items():
        assert compose([f"data={data}"]).data.fit == fit, data
