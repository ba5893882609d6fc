"""`train(cfg)`: build everything from a composed config, check it, fit, and return the final metrics.

Everything that can fail on bad input (config, data, checkpoint) is built and checked before the
Trainer starts, so a mistake costs seconds, not a training run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.io.checkpoint import read_checkpoint
from ddpm.tasks.config import to_plain

log = logging.getLogger(__name__)


def init_source(cfg: DictConfig) -> dict[str, Any] | None:
    """`init_from` (a .ckpt of ours, a diffusers DDPM folder or hf:<id>): its network config replaces `model` (the
    weights define the network), checked against the data; None without init_from."""
    from omegaconf import open_dict

    from ddpm.io.compat import upgrade_hparams

    if not cfg.get("init_from"):
        return None
    if cfg.get("ckpt_path"):
        raise ConfigError("init_from (new run from weights, fresh optimizer) and ckpt_path (resume a run) exclude "
                          "each other: give one")
    source = read_checkpoint(cfg.init_from, key="init_from")
    model = dict(upgrade_hparams(source["hyper_parameters"])["model"])
    if (model["image_size"], model["in_channels"]) != (cfg.data.image_size, cfg.data.channels):
        raise ConfigError(f"init_from {cfg.init_from}: its network takes {model['in_channels']}x{model['image_size']}"
                          f"x{model['image_size']} images, data gives {cfg.data.channels}x{cfg.data.image_size}x"
                          f"{cfg.data.image_size}: choose matching data (data.image_size, data.channels)")
    with open_dict(cfg):
        cfg.model = model
    log.info("init_from %s: network %s from its config (model= is ignored)", cfg.init_from, model["_target_"])
    return source


def load_init_weights(module, source: dict[str, Any]) -> None:
    """The source's trained and EMA weights into a fresh module (the optimizer starts anew)."""
    from ddpm.io.checkpoint import network_weights

    for which, net in (("net", module.net), ("ema", module.ema.module)):
        net.load_state_dict(network_weights(source, which))


def build_module(cfg: DictConfig):
    """The DiffusionModule from the config's plain parts; invalid model/schedule values become ConfigError."""
    from hydra.errors import InstantiationException

    from ddpm.training.module import DiffusionModule

    try:
        return DiffusionModule(
            model=to_plain(cfg.model),
            scheduler=to_plain(cfg.scheduler),
            sampler=to_plain(cfg.sampler),
            optimizer=to_plain(cfg.optimizer),
            image_shape=[cfg.data.channels, cfg.data.image_size, cfg.data.image_size],
            perf=to_plain(cfg.perf),
            objective=to_plain(cfg.objective),
            **to_plain(cfg.module),
        )
    except (ValueError, TypeError, InstantiationException) as err:
        raise ConfigError(str(err.__cause__ or err)) from err  # Hydra wraps the constructor's own message


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(old.get(k), new.get(k), f"{prefix}.{k}")]
    return [] if old == new else [f"{prefix}: checkpoint {old!r}, this run {new!r}"]


def _model_diffs(ckpt: dict[str, Any], module) -> list[str]:
    """How the checkpoint's network differs from this run's, both in today's form (moved `_target_`s are equal)."""
    from ddpm.io.compat import upgrade_model_config

    saved = ckpt.get("hyper_parameters", {})
    diffs = _diff(upgrade_model_config(saved.get("model") or {}), upgrade_model_config(dict(module.hparams.model)),
                  "model")
    return diffs + _diff(list(saved.get("image_shape", [])), list(module.hparams.image_shape), "image_shape")


def resolve_ckpt_path(cfg: DictConfig, module) -> str | None:
    """The checkpoint to resume from: `ckpt_path` as given; for `last`, the newest last.ckpt of this task's earlier
    runs (single runs and sweep jobs) whose model config matches this run's. With none given, in a requeued SLURM
    job (SLURM_RESTART_COUNT > 0; submitit reruns it with the same output dir), that dir's own last.ckpt."""
    path = cfg.get("ckpt_path")
    own = Path(cfg.paths.output_dir).resolve()
    if path is None:
        requeued = own / "checkpoints" / "last.ckpt"
        return str(requeued) if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and requeued.is_file() else None
    if path != "last":
        return path
    root = Path(cfg.paths.log_dir) / cfg.task_name
    found = sorted((p for p in root.glob("*/**/checkpoints/last.ckpt") if own not in p.resolve().parents),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise ConfigError(f"ckpt_path=last: no earlier last.ckpt under {root.resolve()}; "
                          "give a checkpoint's path instead")
    why = []
    for candidate in found:
        try:
            diffs = _model_diffs(read_checkpoint(candidate), module)
        except ConfigError as err:
            diffs = [str(err)]
        if not diffs:
            return str(candidate)
        why.append(f"{candidate.parent.parent.name}: {diffs[0]}")
    raise ConfigError(f"ckpt_path=last: none of the {len(found)} earlier run(s) under {root.resolve()} has this "
                      f"run's model config ({'; '.join(why[:5])}); give a checkpoint's path, or the run's config")


def check_checkpoint(path: str, module) -> dict[str, Any]:
    """Refuse to resume from a checkpoint trained with another network or image shape; return what
    resuming needs besides the state Lightning restores (the W&B run id). A diffusers folder or hf:<id> holds no
    optimizer or step to resume: it starts a run (init_from)."""
    from ddpm.io.diffusers_io import is_diffusers_folder

    if str(path).startswith("hf:") or is_diffusers_folder(Path(path)):
        raise ConfigError(f"ckpt_path={path} is a diffusers model, which has no training state to resume: start a "
                          f"run from its weights with init_from={path}")
    ckpt = read_checkpoint(path)
    diffs = _model_diffs(ckpt, module)
    if diffs:
        raise ConfigError(
            f"checkpoint {path} was trained with a different model config: " + "; ".join(diffs)
            + ". Resume with the config it was trained with (see its run's config.yaml), or drop ckpt_path."
        )
    return {"wandb_run_id": ckpt.get("wandb_run_id")}


def sweep_context() -> dict[str, Any] | None:
    """In a Hydra multirun: the sweep's name and this job's overrides (for W&B group, name and tags)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return {"sweep": Path(hc.sweep.dir).name, "overrides": list(hc.overrides.task), "job": hc.job.num}


def check_multirun_devices(cfg: DictConfig, sweep: dict | None) -> None:
    """Hydra multirun + multi-GPU DDP in one process tree is broken upstream (DDP re-launches the script)."""
    devices = cfg.trainer.get("devices", 1)
    multi = devices in (-1, "auto") or (isinstance(devices, int) and devices > 1) or not isinstance(devices, int)
    if sweep is not None and multi and str(cfg.trainer.get("strategy", "")).startswith("ddp"):
        raise ConfigError(
            "Hydra multirun with multi-GPU DDP in one process tree is broken upstream: run each multi-GPU job "
            "as a single run (python train.py trainer=ddp ...), or sweep with one GPU per job through a launcher "
            "(python train.py -m hydra/launcher=joblib trainer=gpu ...; SLURM: hydra/launcher=submitit_slurm)."
        )


def assign_gpu(cfg: DictConfig, sweep: dict | None) -> None:
    """One GPU per sweep job (joblib launcher): job k trains on GPU k mod n, chosen through trainer.devices."""
    if sweep is None or not cfg.get("gpu_per_job") or cfg.trainer.get("accelerator") != "gpu":
        return
    if torch.cuda.is_available():
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.trainer.devices = [sweep["job"] % torch.cuda.device_count()]


def resolve_sigma_data(cfg: DictConfig, datamodule) -> None:
    """module.sigma_data=auto (objective=edm with data.sigma_data=auto): measured on the training split and written
    into the run's config, so its config.yaml and checkpoints hold the number the network was preconditioned with."""
    from omegaconf import open_dict

    if cfg.module.get("sigma_data") != "auto":
        return
    value = round(datamodule.pixel_std(), 4)
    log.info("sigma_data: measured %.4f on %s's training split (EDM's preconditioning; set data.sigma_data to fix "
             "it)", value, datamodule.name)
    with open_dict(cfg):
        cfg.module.sigma_data = value


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit a DDPM as configured; writes and returns the final logged metrics as floats. A stop signal during
    training raises `preemption.Interrupted` after last.ckpt and metrics.json (status=interrupted) are written."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from ddpm.core.guidance import check_labels
    from ddpm.runtime import stop
    from ddpm.tasks.checks import TRAIN_RULES, check_config
    from ddpm.tasks.records import write_metrics
    from ddpm.training.loggers import build_loggers, logger_config
    from ddpm.training.preemption import GracefulStop

    check_config(cfg, TRAIN_RULES)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = init_source(cfg)  # before config.yaml: it records the network actually trained
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    sweep = sweep_context()
    check_multirun_devices(cfg, sweep)
    assign_gpu(cfg, sweep)
    datamodule = instantiate(cfg.data)
    resolve_sigma_data(cfg, datamodule)
    module = build_module(cfg)
    if source is not None:
        load_init_weights(module, source)
    datamodule.check()
    check_labels(module.num_classes, datamodule)
    ckpt_path = resolve_ckpt_path(cfg, module)
    resume = check_checkpoint(ckpt_path, module) if ckpt_path else {}

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [GracefulStop()]
    for callback in callbacks:  # what a callback builds from the module is checked before the Trainer starts
        if hasattr(callback, "bind"):
            callback.bind(module)

    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)  # once every input is checked
    logger_cfg = logger_config(to_plain(cfg.get("logger")), sweep, resume.get("wandb_run_id"))
    loggers = build_loggers(logger_cfg, cfg.wandb_connect_timeout_s)
    if not loggers:  # an LR monitor with nothing to log to is an error in Lightning; drop it instead
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(to_plain(cfg))
    n_params = sum(p.numel() for p in module.net.parameters())
    log.info("U-Net %s: %.2fM parameters; output dir %s", cfg.model._target_, n_params / 1e6, output_dir.resolve())

    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    stop.reset()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    signum = stop.requested()
    for logger in loggers:
        logger.finalize("success" if signum is None else "aborted")
    if trainer.is_global_zero:  # one record of the run, whichever rank ends last
        write_metrics(output_dir, {"step": trainer.global_step, **metrics},
                          "success" if signum is None else "interrupted")
    if signum is not None:
        raise stop.Interrupted(signum, trainer.global_step)
    return metrics


def train_and_score(cfg: DictConfig) -> float:
    """`train`, then the number a sweeper optimizes: `optimized_metric`, or inf where it was not logged (FID off)."""
    metrics = train(cfg)
    if cfg.optimized_metric not in metrics:
        log.warning("optimized_metric %s was not logged; returning inf to the sweeper", cfg.optimized_metric)
        return float("inf")
    return metrics[cfg.optimized_metric]
