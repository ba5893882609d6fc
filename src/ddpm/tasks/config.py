"""Config helpers: the OmegaConf resolvers the configs use, plain-value conversion, and composing a config as
train.py does (tests, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

# the repository's conf/ (an editable install); tasks are run from train.py / eval.py / export.py beside it
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


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


def compose(config_name: str = "train", overrides: Sequence[str] = (), config_dir: str | Path | None = None
            ) -> DictConfig:
    """conf/<config_name>.yaml composed with `overrides` as the command line would (no run dir, no logging set-up):
    for tests, notebooks and benchmarks that need a config without running a task."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
