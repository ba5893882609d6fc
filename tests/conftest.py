"""Shared fixtures: Hydra composition of conf/train.yaml, and an environment that never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from ddpm.tasks.config import compose as compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def compose(overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    """conf/train.yaml composed as `python train.py` would, with paths.output_dir made concrete."""
    cfg = compose_config("train", overrides, CONF)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or ROOT / "logs" / "test")
    return cfg


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: W&B offline, and no credentials from the user's home."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
