"""Config helpers: user-facing errors, OmegaConf resolvers and plain-value conversion."""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf


class UserError(Exception):
    """Bad input from the user: printed as one line, with what to do, and the run exits with status 2."""


class ConfigError(UserError, ValueError):
    """The composed config can't produce a valid run."""


def _div(a: Any, b: Any) -> int | float:
    """`${div:${data.image_size},2}`: attention resolutions follow the data's image size.

    A remainder gives a float, which the U-Net's checks then report with the image size that caused it.
    """
    a, b = int(a), int(b)
    return a // b if a % b == 0 else a / b


def _is_set(value: Any) -> bool:
    """`${is_set:${model.num_classes}}`: a conditional model gets labelled batches."""
    return value is not None


def register_resolvers() -> None:
    for name, fn in (("div", _div), ("is_set", _is_set)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_plain(cfg: Any) -> Any:
    """A resolved DictConfig/ListConfig as plain dicts/lists (what checkpoints may hold)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def run_or_explain(task: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """An entry point's body (eval.py, export.py): bad input (UserError, a config error) ends the process with one
    line on stderr and exit code 2, never a traceback."""
    import logging
    import sys

    from omegaconf.errors import OmegaConfBaseException

    try:
        return fn(cfg)
    except (UserError, OmegaConfBaseException) as err:
        logging.getLogger(task).error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
