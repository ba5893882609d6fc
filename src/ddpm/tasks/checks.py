"""Checks of the composed config that run before anything is built, so a bad number costs one line and no
traceback: sizes and counts positive, learning rate finite and positive, max_steps >= -1, and an output
directory that can be written (checked by a Hydra callback, before Hydra creates it)."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError


def _number(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _problems(cfg: DictConfig, rules: dict[str, tuple[str, Any]]) -> list[str]:
    """Each rule: key -> (what it must be, a predicate); keys absent from cfg are skipped."""
    out = []
    for key, (what, ok) in rules.items():
        value = _number(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            out.append(f"{key} must be {what}, got {value!r}")
    return out


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and v >= 1


def _non_negative_int(v: Any) -> bool:
    return isinstance(v, int) and v >= 0


TRAIN_RULES = {
    "data.batch_size": ("a positive integer", _positive_int),
    "data.image_size": ("a positive integer", _positive_int),
    "data.num_workers": ("an integer >= 0", _non_negative_int),
    "trainer.max_steps": ("an integer >= -1 (-1: no limit)", lambda v: isinstance(v, int) and v >= -1),
    "trainer.val_check_interval": ("a positive number", lambda v: v > 0),
    "trainer.accumulate_grad_batches": ("a positive integer", _positive_int),
    "optimizer.lr": ("a finite positive number", lambda v: math.isfinite(v) and v > 0),
    "module.lr_warmup_steps": ("an integer >= 0", _non_negative_int),
    "module.ema_decay": ("in [0, 1)", lambda v: 0 <= v < 1),
    "module.check_every_n_steps": ("an integer >= 0 (0: never)", _non_negative_int),
    "callbacks.sample_eval.n_grid": ("a positive integer", _positive_int),
    "callbacks.sample_eval.batch_size": ("a positive integer", _positive_int),
    "callbacks.sample_eval.every_n_validations": ("a positive integer", _positive_int),
    "callbacks.sample_eval.fid_samples": ("an integer >= 0 (0: off)", _non_negative_int),
    "callbacks.sample_eval.bpd_images": ("an integer >= 0 (0: off)", _non_negative_int),
    "callbacks.sample_eval.chain_frames": ("an integer >= 0", _non_negative_int),
    "callbacks.model_checkpoint.every_n_train_steps": ("an integer >= 0", _non_negative_int),
    "fid.reference_size": ("an integer >= 2 or null (the whole split)", lambda v: isinstance(v, int) and v >= 2),
}

EVAL_RULES = {
    "n_samples": ("a positive integer", _positive_int),
    "batch_size": ("a positive integer", _positive_int),
    "bpd_images": ("a positive integer", _positive_int),
    "n_grid": ("a positive integer", _positive_int),
    "warmup_batches": ("an integer >= 0 or null", _non_negative_int),
    "fid.reference_size": TRAIN_RULES["fid.reference_size"],
}


def check_config(cfg: DictConfig, rules: dict[str, tuple[str, Any]]) -> None:
    """ConfigError naming every out-of-range number of `cfg` at once."""
    problems = _problems(cfg, rules)
    if problems:
        raise ConfigError("; ".join(problems))


def check_output_dir(path: Path) -> None:
    """ConfigError unless `path` exists as a writable folder or can be created: tried with a temporary folder in
    its nearest existing ancestor, which is removed again (no trace left)."""
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        Path(tempfile.mkdtemp(dir=ancestor, prefix=".ddpm-write-check-")).rmdir()
    except OSError as err:
        raise ConfigError(f"cannot write the output dir {path} ({err.strerror or err}); set paths.log_dir to a "
                          "writable folder") from err


class OutputDirCheck(Callback):
    """Hydra callback: the run's (or sweep's) output dir is checked before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(path: str) -> None:
        try:
            check_output_dir(Path(path))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
