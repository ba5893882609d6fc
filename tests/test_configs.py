"""Every option of every config group composes, and the parts that need no hardware instantiate."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from ddpm.diffusion import GaussianDiffusion
from tests.conftest import CONF, compose

GROUPS = ["scheduler", "model", "data", "sampler", "trainer", "logger", "callbacks", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}", "data.root=somewhere" if option == "image_folder" else "seed=42"])
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.in_channels == cfg.data.channels


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
    from ddpm.loggers import build_loggers
    from ddpm.config import to_plain

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
