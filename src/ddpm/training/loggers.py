"""Loggers from config, with W&B that never prompts and never crashes a run.

With no credentials, or no route to the W&B server, the W&B logger switches to offline mode, says so
once, and prints the `wandb sync` command that uploads the run later. WANDB_MODE, when set, wins.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.utils import instantiate
from torch import Tensor

log = logging.getLogger(__name__)

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def wandb_credentials() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc (where `wandb login` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(_wandb_host()) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout_s: float) -> bool:
    try:
        with socket.create_connection((_wandb_host(), 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_offline_reason(timeout_s: float) -> str | None:
    """Why this run must log offline, or None if it can go online."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if mode == "online":
        return None
    if not wandb_credentials():
        return "no W&B credentials (set WANDB_API_KEY or run `wandb login`)"
    if not wandb_reachable(timeout_s):
        return f"{_wandb_host()} is not reachable"
    return None


def logger_config(loggers: dict[str, Any] | None, sweep: dict[str, Any] | None,
                  wandb_run_id: str | None = None) -> dict[str, Any]:
    """The logger configs of a run (the `logger` group, plain); in a sweep each W&B run is grouped by sweep, named
    and tagged by its overrides; a resumed run continues the W&B run of its checkpoint."""
    loggers = {name: dict(lcfg) for name, lcfg in (loggers or {}).items()}
    for lcfg in loggers.values():
        if lcfg.get("_target_") != WANDB_TARGET:
            continue
        if wandb_run_id:
            lcfg["id"], lcfg["resume"] = wandb_run_id, "allow"
        if sweep is not None:
            lcfg["group"] = sweep["sweep"]
            lcfg["name"] = lcfg.get("name") or " ".join(sweep["overrides"]) or f"job{sweep['job']}"
            lcfg["tags"] = [*(lcfg.get("tags") or []), *sweep["overrides"]][:64]
    return loggers


def build_loggers(cfg: dict[str, Any] | None, connect_timeout_s: float) -> list:
    """Instantiate every logger in `cfg` (name -> config); an empty config means no logger."""
    loggers = []
    for name, lcfg in (cfg or {}).items():
        lcfg = dict(lcfg)
        if lcfg.get("_target_") == WANDB_TARGET and not lcfg.get("offline"):
            reason = wandb_offline_reason(connect_timeout_s)
            if reason:
                lcfg["offline"] = True
                run_dir = Path(lcfg.get("save_dir", ".")).resolve() / "wandb"
                log.warning("W&B: %s -> logging offline to %s. Upload later with: wandb sync %s/offline-run-*",
                            reason, run_dir, run_dir)
        if lcfg.get("save_dir"):
            Path(lcfg["save_dir"]).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(lcfg))
    return loggers


def resume_ids(loggers: list) -> dict[str, Any]:
    """What a checkpoint keeps so that a resumed run continues the same W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    ids = [logger.version for logger in loggers if isinstance(logger, WandbLogger)]
    return {"wandb_run_id": ids[0]} if ids else {}


def log_image(loggers: list, key: str, path: Path, grid: Tensor, caption: str, step: int) -> None:
    """A saved figure to every logger that takes images (W&B by file, TensorBoard by tensor (C, H, W))."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], caption=[caption], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)


def log_metrics(loggers: list, metrics: dict[str, float], step: int) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def report(trainer: Any, metrics: dict[str, float]) -> None:
    """Straight to the trainer's loggers (works in every hook, also on_train_end) and into callback_metrics."""
    import torch

    log_metrics(trainer.loggers, metrics, trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in metrics.items()})
