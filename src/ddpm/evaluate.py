"""`evaluate(cfg)`: samples and metrics from a checkpoint, on every device it is given.

Each rank draws its share of the samples with its own seeds and feeds the metrics; torchmetrics sums
the statistics over ranks; rank 0 writes `samples.npz` (uint8, N x H x W x C, key `arr_0` as in
openai/improved-diffusion), `samples.png` (the first 64), and `metrics.json`, and logs them.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, to_plain
from .data import image_of

log = logging.getLogger(__name__)


def run_config(ckpt_path: Path) -> DictConfig | None:
    """The resolved config.yaml that train.py wrote beside the run's checkpoints/ folder, if present."""
    path = ckpt_path.resolve().parent.parent / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate
    from lightning.fabric import Fabric
    from torchvision.utils import save_image

    from .callbacks import to_grid
    from .features import quantize
    from .loggers import build_loggers
    from .metrics import SampleMetrics
    from .module import DiffusionModule

    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path {ckpt} does not exist; pass the .ckpt of a run, e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    unknown = set(cfg.metrics) - {"fid", "bpd"}
    if unknown:
        raise ConfigError(f"unknown metrics {sorted(unknown)}; choose from [fid, bpd]")
    data_cfg = cfg.get("data") or (run_config(ckpt) or {}).get("data")
    if data_cfg is None and ("fid" in cfg.metrics or "bpd" in cfg.metrics):
        raise ConfigError(f"no data config: {ckpt.parent.parent}/config.yaml is missing; pass data=<name> (e.g. data=digits)")

    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision)
    fabric.launch()
    module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).to(fabric.device)
    module.eval()
    datamodule = instantiate(data_cfg) if data_cfg is not None else None
    if datamodule is not None:
        datamodule.check()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = fabric.global_rank, fabric.world_size

    metrics = None
    if "fid" in cfg.metrics:
        metrics = SampleMetrics(**to_plain(cfg.fid))
        metrics.prepare_on_ranks(datamodule, fabric.device, rank == 0, fabric.barrier)

    per_rank = math.ceil(cfg.n_samples / world)
    shards = []
    for i, start in enumerate(range(0, per_rank, cfg.batch_size)):
        with fabric.autocast():
            images = module.sample(min(cfg.batch_size, per_rank - start), seed=cfg.seed + 1_000_003 * rank + i,
                                   use_ema=cfg.use_ema).images.float()
        if metrics is not None:
            metrics.update(images)
        shards.append(quantize(images).cpu())
    samples = torch.cat(shards)  # (per_rank, C, H, W) uint8
    np.savez(out_dir / f"samples_rank{rank}.npz", samples.permute(0, 2, 3, 1).numpy())

    results: dict[str, Any] = {"ckpt_path": str(ckpt.resolve()), "global_step": int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]),
                               "use_ema": bool(cfg.use_ema), "seed": int(cfg.seed), "n_samples": per_rank * world,
                               "clip_denoised": bool(module.sampler.clip_denoised) if hasattr(module.sampler, "clip_denoised") else None}
    if metrics is not None:
        results.update(metrics.compute(per_rank * world))
    if "bpd" in cfg.metrics:
        results.update(_bits_per_dim(cfg, module, datamodule, fabric))

    fabric.barrier()
    if rank == 0:
        parts = [np.load(out_dir / f"samples_rank{r}.npz")["arr_0"] for r in range(world)]
        np.savez(out_dir / "samples.npz", np.concatenate(parts)[: cfg.n_samples])
        for r in range(world):
            (out_dir / f"samples_rank{r}.npz").unlink()
        grid = to_grid(samples[: cfg.n_grid].float() / 127.5 - 1, cfg.nrow, cfg.upscale)
        save_image(grid, out_dir / "samples.png")
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
        for logger in build_loggers(to_plain(cfg.get("logger")), cfg.wandb_connect_timeout_s):
            logger.log_hyperparams(to_plain(cfg))
            logger.log_metrics({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))},
                               step=results["global_step"])
            if hasattr(logger, "log_image"):
                logger.log_image(key="eval/samples", images=[str(out_dir / "samples.png")])
            logger.finalize("success")
        log.info("Metrics: %s", json.dumps(results))
        print(f"Wrote {out_dir / 'samples.npz'}, {out_dir / 'samples.png'} and {out_dir / 'metrics.json'}")
    return results


@torch.no_grad()
def _bits_per_dim(cfg: DictConfig, module, datamodule, fabric) -> dict[str, float]:
    """The full VLB on the first `bpd_images` held-out (val) images, this rank's share; averaged over ranks."""
    val = datamodule.split("val")
    n = min(cfg.bpd_images, len(val))
    idx = list(range(fabric.global_rank, n, fabric.world_size))
    x0 = torch.stack([image_of(val[i]) for i in idx]).to(fabric.device)
    g = torch.Generator(device=fabric.device).manual_seed(cfg.seed)
    out = module.diffusion.bits_per_dim(module.ema.module if cfg.use_ema else module.net, x0,
                                        clip_denoised=cfg.bpd_clip_denoised, chunk=cfg.batch_size, generator=g)
    sums = torch.stack([out[k].sum() for k in ("total", "prior", "decoder")] + [torch.tensor(float(len(idx)), device=fabric.device, dtype=torch.float64)])
    sums = fabric.all_reduce(sums, reduce_op="sum")
    total, prior, decoder, count = sums.tolist()
    return {"bpd": total / count, "bpd_prior": prior / count, "bpd_decoder": decoder / count, "bpd_n": int(count),
            "bpd_clip_denoised": bool(cfg.bpd_clip_denoised)}

