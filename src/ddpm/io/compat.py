"""The one place that knows what older checkpoints and run configs look like, and upgrades them.

Every reader of a checkpoint's hyperparameters (`DiffusionModule`, `SamplingPipeline.from_checkpoint`) and of a
run's data config (eval.py, the benchmarks) goes through here, so a key renamed or added later is handled once.
Checkpoints and run configs also name classes and functions by import path (`_target_`): when a module moves,
its old path goes into `TARGETS`, and `instantiate` builds what a stored config names through that table.
Upgrading never changes results: an old checkpoint samples bit-identically after it (tests/test_compat.py).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

PERF_KEYS = ("compile", "compile_mode", "channels_last", "fused_optimizer", "sample_precision")
# keys added after the first checkpoints: their values then (DDPM's)
MODULE_DEFAULTS = {"prediction": "eps", "sigma_data": None, "ema_profiles": []}
MODEL_DEFAULTS = {  # U-Net keys added later, with the values the older networks were built with
    "num_classes": None, "downsample_padding": 1, "attention_head_dim": None, "flip_sin_to_cos": False,
    "freq_shift": 1, "resnet_time_scale_shift": "default", "mid_attention_norm": True}
# the objective's settings, module keys until they became the `objective` group; absent: DDPM's (ObjectiveConfig)
OBJECTIVE_KEYS = ("loss", "vlb_weight", "timestep_sampler", "loss_aware", "cond_drop_prob")
OLD_DATA_KEYS = ("on_device", "on_device_max_gib")  # data-module keys the perf group holds now
# import paths stored by runs before the package was grouped into layers -> today's; a key ending in "." maps every
# member of that module, any other key one name
TARGETS = {
    "ddpm.samplers.AncestralSampler": "ddpm.core.samplers.ancestral.AncestralSampler",
    "ddpm.samplers.DDIMSampler": "ddpm.core.samplers.ddim.DDIMSampler",
    "ddpm.samplers.DPMSolverSampler": "ddpm.core.samplers.dpm_solver.DPMSolverSampler",
    "ddpm.samplers.EDMSampler": "ddpm.core.samplers.edm.EDMSampler",
    "ddpm.callbacks.Throughput": "ddpm.training.compute.Throughput",
    "ddpm.unet.": "ddpm.nn.unet.",
    "ddpm.schedules.": "ddpm.core.schedules.",
    "ddpm.callbacks.": "ddpm.training.callbacks.",
    "ddpm.sweep.": "ddpm.tasks.sweep.",
    "ddpm.checks.": "ddpm.tasks.checks.",
}


def upgrade_target(target: str) -> str:
    """Today's import path of a `_target_` that a run stored (unchanged if it never moved)."""
    if target in TARGETS:
        return TARGETS[target]
    for old, new in TARGETS.items():
        if old.endswith(".") and target.startswith(old):
            return new + target[len(old):]
    return target


def upgrade_targets(config: Any) -> Any:
    """A stored config (plain dicts and lists, any depth) with every `_target_` in today's form."""
    if isinstance(config, Mapping):
        return {k: upgrade_target(v) if k == "_target_" else upgrade_targets(v) for k, v in config.items()}
    if isinstance(config, list):
        return [upgrade_targets(v) for v in config]
    return config


def instantiate(config: Mapping[str, Any], **kwargs: Any) -> Any:
    """The object a stored config names: its `_target_` (through `TARGETS`) called with its other keys and `kwargs`.

    Checkpoints hold flat configs (model, schedule, sampler: no nested `_target_`), so this is all that reading
    one needs, and the sampling side stays free of Hydra; composed configs go through Hydra's instantiate."""
    config = dict(config)
    target = upgrade_target(config.pop("_target_"))
    special = sorted(k for k in config if k.startswith("_") and k.endswith("_"))
    if special:
        raise ValueError(f"{target}: a stored config cannot carry Hydra's {special}")
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)(**config, **kwargs)


def legacy_perf(hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The perf config of a checkpoint saved before the `perf` group existed (its switches were module keys,
    removed from `hparams` here)."""
    if not any(k in hparams for k in PERF_KEYS):
        return None
    old = {k: hparams.pop(k) for k in PERF_KEYS if k in hparams}
    return {"compile": False, "compile_mode": "default", "channels_last": False, "fused_optimizer": False,
            "sample_precision": "32", **old, "data_on_device": False, "data_on_device_max_gib": 0.0}


def legacy_objective(hparams: dict[str, Any]) -> dict[str, Any]:
    """The objective config of a checkpoint saved when its settings were module keys (removed from `hparams`
    here); {} (DDPM's defaults) for one saved before they existed."""
    return {k: hparams.pop(k) for k in OBJECTIVE_KEYS if k in hparams}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's module hyperparameters in today's form: perf and objective as groups, moved `_target_`s,
    later keys at their old values."""
    hparams = upgrade_targets(dict(hparams))
    if hparams.get("perf") is None:
        hparams["perf"] = legacy_perf(hparams)
    for key in PERF_KEYS:
        hparams.pop(key, None)
    old = legacy_objective(hparams)
    hparams["objective"] = hparams.get("objective") or old
    if hparams.get("model") is not None:
        hparams["model"] = upgrade_model_config(hparams["model"])
    return {**MODULE_DEFAULTS, **hparams}


def upgrade_model_config(model: Mapping[str, Any]) -> dict[str, Any]:
    """A network config in today's form: moved `_target_`, the U-Net keys added later at their old values (so an
    older run's network compares equal to the same network configured today)."""
    model = upgrade_targets(dict(model))
    is_unet = model.get("_target_") == "ddpm.nn.unet.UNet"
    return {**MODEL_DEFAULTS, **model} if is_unet else model


def upgrade_run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved config.yaml (plain) in today's form: moved `_target_`s, the objective's module keys in
    the `objective` group."""
    cfg = upgrade_targets(cfg)
    module = dict(cfg.get("module") or {})
    if "objective" not in cfg and any(k in module for k in OBJECTIVE_KEYS):
        cfg["objective"] = legacy_objective(module)
        cfg["module"] = module
    return cfg


def upgrade_data_config(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A run's data config (plain) in today's form: keys moved to the perf group dropped, targets upgraded; None
    stays None."""
    if data is None:
        return None
    return upgrade_targets({k: v for k, v in data.items() if k not in OLD_DATA_KEYS})
