"""`export(cfg)`: a checkpoint of ours as a diffusers DDPMPipeline folder (`export.py format=diffusers`).

The folder holds unet/ (UNet2DModel config + safetensors weights, EMA by default), scheduler/ (the DDPMScheduler
config that reproduces our schedule, variance, prediction and clipping), model_index.json and a model card
(README.md) with the run's config, step and metrics. Everything is checked before the folder is created: a model
diffusers cannot represent (heads that differ by level) is refused with one line, and nothing is written; an
existing non-empty folder is refused unless overwrite=true. A class-conditional model is written too (its UNet
takes class_labels; the model card says how to sample it, since DDPMPipeline passes no label).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.io.checkpoint import network_weights, read_checkpoint
from ddpm.io.compat import upgrade_hparams
from ddpm.io.diffusers_io import _diffusers, state_dict_to_diffusers, unet_config_to_diffusers
from ddpm.io.diffusers_scheduler import scheduler_to_diffusers
from ddpm.tasks.records import read_metrics

log = logging.getLogger(__name__)
FORMATS = ("diffusers",)


def export(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: export writes {', '.join(FORMATS)}")
    diffusers = _diffusers()
    from ddpm.core.parametrization import Parametrization

    ckpt = read_checkpoint(cfg.ckpt_path)
    hp = upgrade_hparams(ckpt["hyper_parameters"])
    param = Parametrization.of(hp["prediction"], hp["variance_type"], hp.get("sigma_data"))
    model = param.network_config(dict(hp["model"]), int(hp["image_shape"][0]))
    unet_cfg = unet_config_to_diffusers(model)  # refusals before anything is written
    sched_cfg = scheduler_to_diffusers(hp)
    weights = network_weights(ckpt, "ema" if cfg.use_ema else "net")
    unet = diffusers.UNet2DModel(**unet_cfg)
    unet.load_state_dict(state_dict_to_diffusers(weights, model), strict=True)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder: choose a folder for the diffusers pipeline")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"out={out} exists and is not empty: choose another folder or pass overwrite=true")
    pipeline = diffusers.DDPMPipeline(unet=unet.eval(), scheduler=diffusers.DDPMScheduler(**sched_cfg))
    pipeline.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(model_card(cfg, ckpt, hp, sched_cfg))
    log.info("Exported %s (%s weights, step %s) to %s", cfg.ckpt_path, "EMA" if cfg.use_ema else "trained",
             ckpt["global_step"], out.resolve())
    print(f"Wrote a diffusers DDPMPipeline to {out.resolve()}")
    return out


def model_card(cfg: DictConfig, ckpt: dict[str, Any], hp: dict[str, Any], sched: dict[str, Any]) -> str:
    """README.md of the exported folder: what was trained, how long, what it scored, how to load it."""
    run = Path(str(cfg.ckpt_path)).resolve().parent.parent
    config = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else OmegaConf.to_yaml(
        OmegaConf.create({k: hp[k] for k in ("model", "scheduler", "variance_type", "prediction") if k in hp}))
    metrics = read_metrics(run) or {}
    lines = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation",
             "tags: [ddpm, diffusion]", "---", "", "# DDPM trained with the ddpm framework", "",
             f"Exported from `{cfg.ckpt_path}` at training step {ckpt['global_step']} "
             f"({'EMA' if cfg.use_ema else 'trained, not averaged'} weights).", "",
             f"Schedule: {sched.get('beta_schedule', 'trained_betas')}, T = {sched['num_train_timesteps']}, "
             f"variance {sched['variance_type']}, prediction {sched['prediction_type']}, "
             f"clip_sample {sched['clip_sample']}.", ""]
    k = hp["model"].get("num_classes")
    if k is None:
        lines += ["```python", "from diffusers import DDPMPipeline",
                  "pipe = DDPMPipeline.from_pretrained(\"<this folder>\")", "images = pipe(batch_size=16).images",
                  "```", ""]
    else:  # DDPMPipeline calls the UNet without labels: the scheduler's loop, written out
        lines += [f"Class-conditional: labels 0..{k - 1}, label {k} is the null label (the unconditional model of "
                  "classifier-free guidance); DDPMPipeline passes no label, so call the UNet yourself:", "",
                  "```python", "import torch", "from diffusers import DDPMScheduler, UNet2DModel",
                  "unet = UNet2DModel.from_pretrained(\"<this folder>\", subfolder=\"unet\")",
                  "scheduler = DDPMScheduler.from_pretrained(\"<this folder>\", subfolder=\"scheduler\")",
                  "labels = torch.arange(16) % " + str(k),
                  "x = torch.randn(16, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)",
                  "for t in scheduler.timesteps:",
                  "    x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample", "```", ""]
    if metrics:
        lines += ["## Metrics of the run", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items() if isinstance(v, (int, float))] + [""]
    lines += ["## Training config", "", "```yaml", config.rstrip(), "```", ""]
    return "\n".join(lines)
