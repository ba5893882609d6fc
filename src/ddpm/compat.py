"""The one place that knows what older checkpoints and run configs look like, and upgrades them.

Every reader of a checkpoint's hyperparameters (`DiffusionModule`, `SamplingPipeline.from_checkpoint`) and of a
run's data config (eval.py, the benchmarks) goes through here, so a key renamed or added later is handled once.
Upgrading never changes results: an old checkpoint samples bit-identically after it (tests/test_train.py).
"""

from __future__ import annotations

from typing import Any

PERF_KEYS = ("compile", "compile_mode", "channels_last", "fused_optimizer", "sample_precision")
MODULE_DEFAULTS = {  # keys added after the first checkpoints: their values then (DDPM's)
    "prediction": "eps", "vlb_weight": 0.001, "cond_drop_prob": 0.0, "loss": "simple",
    "timestep_sampler": "uniform", "loss_aware": None,
}
OLD_DATA_KEYS = ("on_device", "on_device_max_gib")  # data-module keys the perf group holds now


def legacy_perf(hparams: dict[str, Any]) -> dict[str, Any] | None:
    """The perf config of a checkpoint saved before the `perf` group existed (its switches were module keys,
    removed from `hparams` here)."""
    if not any(k in hparams for k in PERF_KEYS):
        return None
    old = {k: hparams.pop(k) for k in PERF_KEYS if k in hparams}
    return {"compile": False, "compile_mode": "default", "channels_last": False, "fused_optimizer": False,
            "sample_precision": "32", **old, "data_on_device": False, "data_on_device_max_gib": 0.0}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's module hyperparameters in today's form: perf as a group, later keys at their old values."""
    hparams = dict(hparams)
    if hparams.get("perf") is None:
        hparams["perf"] = legacy_perf(hparams)
    for key in PERF_KEYS:
        hparams.pop(key, None)
    return {**MODULE_DEFAULTS, **hparams}


def upgrade_data_config(data: dict[str, Any] | Any) -> Any:
    """A run's data config in today's form (keys moved to the perf group dropped); None stays None."""
    if data is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data)
    return {k: v for k, v in plain.items() if k not in OLD_DATA_KEYS}
