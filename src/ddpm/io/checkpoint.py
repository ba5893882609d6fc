"""The one reader of checkpoints, for every entry point (train.py's `ckpt_path` and `init_from`, eval.py, the
notebooks and benchmarks through `SamplingPipeline.from_checkpoint`).

Besides our .ckpt files it reads a diffusers DDPM folder (unet/ + scheduler/, or a bare UNet2DModel folder with a
schedule given) and `hf:<repo id>` (the Hub, through huggingface_hub), converted by `diffusers_io.py` into the
same form: hyper_parameters, state_dict (net.* and ema.module.*), global_step.

A path that is no checkpoint of ours -- missing, a folder, a text file, a truncated download, a torch file of
another program -- stops the run with one line that names the path and what was expected, never torch's
unpickling traceback. Checkpoints are read with `weights_only=True` (plain values only) and memory-mapped, so
reading one to check it costs little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddpm.errors import ConfigError

EXPECTED = ("a .ckpt file written by this framework's train.py (e.g. logs/train/runs/<run>/checkpoints/last.ckpt), "
            "a diffusers DDPM folder or hf:<repo id>")
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "global_step")


def read_checkpoint(path: str | Path, scheduler: dict[str, Any] | None = None,
                    key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint's contents (tensors memory-mapped), or a ConfigError that says what is wrong with `path`.
    scheduler: the schedule of a bare UNet2DModel folder (one that has no scheduler/); key: the option that named
    the path (ckpt_path, init_from), as the message says it."""
    from ddpm.io import diffusers_io

    if str(path).startswith("hf:"):
        path = diffusers_io.hub_folder(str(path)[3:])
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key} {path} does not exist; expected {EXPECTED}")
    if diffusers_io.is_diffusers_folder(path):
        return diffusers_io.read_diffusers_folder(path, scheduler)
    if path.is_dir():
        raise ConfigError(f"{key} {path} is a folder without unet/config.json or config.json; expected {EXPECTED}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and mmap errors all mean the same to the user
        raise ConfigError(f"{key} {path} is not a readable torch checkpoint ({type(err).__name__}); it may be "
                          f"truncated or another kind of file; expected {EXPECTED}") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"{key} {path} is a torch file but not a checkpoint of this framework (no "
                          f"{', '.join(missing)}); expected {EXPECTED}")
    return ckpt


WEIGHT_PREFIXES = {"ema": "ema.module.", "net": "net."}  # where a checkpoint's state_dict holds each network


def ema_profile_names(ckpt: dict[str, Any]) -> list[str]:
    """The power-function EMAs a checkpoint tracks (module.ema_profiles), named by their sigma_rel ("0.05")."""
    return [f"{float(s):g}" for s in ckpt["hyper_parameters"].get("ema_profiles") or ()]


def network_weights(ckpt: dict[str, Any], which: str = "ema") -> dict[str, torch.Tensor]:
    """The state_dict of one network of a checkpoint (as `read_checkpoint` returns it): "ema", the averaged weights
    every sample is drawn with, "net", the trained ones, or a tracked power-function EMA by its sigma_rel."""
    prefixes = {**WEIGHT_PREFIXES, **{name: f"ema_profiles.{i}.module." for i, name in
                                      enumerate(ema_profile_names(ckpt))}}
    if which not in prefixes:
        raise ConfigError(f"weights {which!r}: this checkpoint holds {', '.join(prefixes)}")
    prefix = prefixes[which]
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
