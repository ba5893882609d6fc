"""The one exit path of every entry point (train.py, eval.py, export.py), as lightning-hydra-template's
task_wrapper: bad input ends the process with one line on stderr and exit status 2, never a traceback; a stop
signal with 128 + the signal number once the state is saved; in a sweep that goes on (`sweep_fail_fast=false`),
a failing job is recorded in its metrics.json and the sweep continues with the next."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from ddpm.errors import UserError
from ddpm.runtime.stop import Interrupted
from ddpm.tasks.records import write_metrics

FAILED = float("inf")  # what a failed job of a sweep returns to the sweeper


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(name: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """fn(cfg), with every way it can end mapped to what a user or a sweeper expects (module docstring)."""
    log = logging.getLogger(name)
    goes_on = _multirun() and not cfg.get("sweep_fail_fast", False)
    try:
        return fn(cfg)
    except Interrupted as err:  # the state is saved and metrics.json says interrupted; a sweep stops too
        log.error("%s", err)
        print(f"interrupted: {err}", file=sys.stderr)
        if _multirun():
            from ddpm.tasks.sweep import summarize

            summarize(Path(HydraConfig.get().sweep.dir))
        sys.exit(err.exit_code)
    except (UserError, OmegaConfBaseException, InstantiationException) as err:  # bad input: one line
        if isinstance(err, InstantiationException):  # Hydra wraps a constructor's own message: show that one
            if not isinstance(err.__cause__, UserError):
                raise
            err = err.__cause__
        log.error("%s", err)
        if not goes_on:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        write_metrics(Path(cfg.paths.output_dir), {}, "failed", str(err))
        return FAILED
    except Exception as err:
        if not goes_on:
            raise
        log.exception("job failed; the sweep goes on (set sweep_fail_fast=true to stop it)")
        write_metrics(Path(cfg.paths.output_dir), {}, "failed", f"{type(err).__name__}: {err}")
        return FAILED
