"""`evaluate(cfg)`: samples and metrics from a checkpoint, on every device it is given (`eval.py`).

The checkpoint becomes a `SamplingPipeline` (its EMA weights, its diffusion; the sampler of conf/sampler/ if one
is chosen, else its own); the sampling, FID and bits/dim are those of training-time evaluation. Rank 0 writes
`samples.npz` (uint8, N x H x W x C, key `arr_0` as in openai/improved-diffusion), `samples.png` (the first
`n_grid`) and `metrics.json`, and logs them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.io.checkpoint import read_checkpoint
from ddpm.tasks.config import to_plain
from ddpm.tasks.records import write_metrics

log = logging.getLogger(__name__)


def run_config(ckpt_path: Path) -> DictConfig | None:
    """The resolved config.yaml that train.py wrote beside the run's checkpoints/ folder, if present, with its
    data config in today's form (`compat.upgrade_data_config`)."""
    from ddpm.io.compat import upgrade_data_config

    path = ckpt_path.resolve().parent.parent / "config.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    if cfg.get("data") is not None:
        cfg.data = upgrade_data_config(to_plain(cfg.data))
    return cfg


def _inputs(cfg: DictConfig) -> tuple[Path, dict[str, Any], Any]:
    """The checkpoint and the data config (from the run's config.yaml unless given), checked."""
    from ddpm.tasks.checks import EVAL_RULES, check_config

    check_config(cfg, {k: v for k, v in EVAL_RULES.items() if k != "bpd_images" or "bpd" in cfg.metrics})
    ckpt = Path(cfg.ckpt_path)
    contents = read_checkpoint(ckpt, to_plain(cfg.get("scheduler")) or None)  # one line for anything else
    unknown = set(cfg.metrics) - {"fid", "bpd"}
    if unknown:
        raise ConfigError(f"unknown metrics {sorted(unknown)}; choose from [fid, bpd]")
    data_cfg = cfg.get("data") or (run_config(ckpt) or {}).get("data")
    if data_cfg is None and ("fid" in cfg.metrics or "bpd" in cfg.metrics):
        raise ConfigError(f"no data config: {ckpt.parent.parent}/config.yaml is missing; pass data=<name> "
                          "(e.g. data=digits)")
    return ckpt, contents, data_cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the weights `cfg.ema` chooses (`weight_choices`); with ema=all, each tracked EMA into its own folder
    (ema_<sigma_rel>/), the run's EMA last into the run folder with every one's figures under `by_ema`."""
    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    from ddpm.metrics import SampleMetrics

    ckpt, contents, data_cfg = _inputs(cfg)
    names = weight_choices(cfg, contents)
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision)
    fabric.launch()
    datamodule = instantiate(data_cfg) if data_cfg is not None else None  # its to_eval crops padded samples
    if datamodule is not None and {"fid", "bpd"} & set(cfg.metrics):  # the files only where a metric reads them
        datamodule.check()
    out_dir = Path(cfg.paths.output_dir)
    metrics = None
    if "fid" in cfg.metrics:
        metrics = SampleMetrics(**to_plain(cfg.fid))
        metrics.prepare_on_ranks(datamodule, fabric.device, fabric.global_rank == 0, fabric.barrier)
    by_ema: dict[str, dict[str, Any]] = {}
    for name in names[1:]:
        _, by_ema[name] = _evaluate_weights(cfg, name, fabric, ckpt, contents, datamodule, metrics,
                                            out_dir / f"ema_{name}", log_run=False)
    results, _ = _evaluate_weights(cfg, names[0], fabric, ckpt, contents, datamodule, metrics, out_dir,
                                   log_run=True, by_ema=by_ema)
    if by_ema and fabric.global_rank == 0:
        for name, scores in results["by_ema"].items():
            print(f"{name:>6}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()
                                            if isinstance(v, float) and not k.endswith("_n")))
    return results


def weight_choices(cfg: DictConfig, contents: dict[str, Any]) -> list[str]:
    """The weights to evaluate, the one whose results the run folder gets first: `ema` null -> the run's EMA
    ("ema"; "net" with use_ema=false); a tracked power-function profile by its sigma_rel; all -> "ema" and every
    profile. ConfigError naming the choices for anything else."""
    from ddpm.io.checkpoint import ema_profile_names

    choice, profiles = cfg.get("ema"), ema_profile_names(contents)
    if choice is None:
        return ["ema" if cfg.use_ema else "net"]
    if str(choice) == "all":
        return ["ema", *profiles]
    name = f"{float(choice):g}" if isinstance(choice, (int, float)) else str(choice)
    if name not in ("ema", "net", *profiles):
        raise ConfigError(f"ema={choice}: this checkpoint holds ema, net"
                          f"{''.join(', ' + p for p in profiles)} (module.ema_profiles) and all")
    return [name]


def _evaluate_weights(cfg: DictConfig, name: str, fabric: Any, ckpt: Path, contents: dict[str, Any], datamodule: Any,
                      metrics: Any, out_dir: Path, log_run: bool,
                      by_ema: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One set of weights: sample, score, write out_dir (rank 0), log to the loggers if `log_run`. Returns what
    metrics.json holds and the metrics alone."""
    from ddpm.pipeline import SampleRequest, SamplingPipeline
    from ddpm.pipeline.evaluation import BitsPerDimRequest, evaluate_request

    pipeline = SamplingPipeline.from_checkpoint(ckpt, fabric.device, weights=name, sampler=_sampler_config(cfg),
                                                perf=to_plain(cfg.get("perf")) or None, contents=contents)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = fabric.global_rank, fabric.world_size
    sampler = pipeline.sampler
    conditioning = {"classes": to_plain(cfg.get("classes")), "per_row": cfg.nrow,
                    "guidance_scale": float(cfg.get("guidance_scale") or 0.0)}
    request = SampleRequest(n=cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed, keep=cfg.n_samples,
                            **conditioning)
    warmup_seconds = 0.0
    with fabric.autocast():
        compiled = pipeline.forward is not pipeline.net
        warmup_batches = cfg.warmup_batches if cfg.warmup_batches is not None else int(compiled)
        # compile / capture CUDA graphs outside the timed part, for every batch shape this rank will draw (a
        # ragged last batch is another graph)
        per_rank = -(-cfg.n_samples // world)
        shapes = sorted({min(cfg.batch_size, per_rank), per_rank % cfg.batch_size} - {0}, reverse=True)
        for i in range(warmup_batches):
            for size in shapes:
                warm = SampleRequest(n=size, batch_size=size, seed=cfg.seed + i, **conditioning)
                warmup_seconds += evaluate_request(pipeline, warm).sampling_seconds
        bpd = (BitsPerDimRequest(datamodule.split("val"), cfg.bpd_images, cfg.seed, cfg.batch_size,
                                 cfg.bpd_clip_denoised) if "bpd" in cfg.metrics else None)
        evaluation = evaluate_request(pipeline, request, rank, world,
                                      datamodule.to_eval if datamodule is not None else (lambda x: x), metrics, bpd,
                                      lambda x: fabric.all_reduce(x, reduce_op="sum"))
    samples = evaluation.samples
    np.savez(out_dir / f"samples_rank{rank}.npz", samples.images.permute(0, 2, 3, 1).numpy())

    step = int(contents["global_step"])
    results: dict[str, Any] = {"ckpt_path": str(ckpt.resolve()), "global_step": step, "weights": name,
                               "use_ema": name != "net", "seed": int(cfg.seed), "n_samples": samples.n_total,
                               "sampler": sampler.describe(), "nfe": sampler.nfe,
                               "clip_denoised": getattr(sampler, "clip_denoised", None),
                               "sampling_seconds": round(evaluation.sampling_seconds, 3),
                               "warmup_seconds": round(warmup_seconds, 3)}
    if pipeline.num_classes is not None:
        results.update({"guidance_scale": conditioning["guidance_scale"], "classes": conditioning["classes"]})
    results.update(evaluation.results)
    if bpd is not None:
        results["bpd_clip_denoised"] = bool(cfg.bpd_clip_denoised)
    if by_ema:  # every tracked EMA's metrics beside the run's own
        results["by_ema"] = {name: dict(evaluation.results), **by_ema}
    fabric.barrier()
    if rank == 0:
        _write(cfg, out_dir, results, world, log_run)
    return results, dict(evaluation.results)


def _sampler_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The chosen conf/sampler option (None: the checkpoint's own); a default num_steps beyond a short schedule's
    T runs T steps (said in the log)."""
    sampler = to_plain(cfg.get("sampler"))
    return {**sampler, "cap_at_num_timesteps": True} if sampler else None


def _write(cfg: DictConfig, out_dir: Path, results: dict[str, Any], world: int, log_run: bool = True) -> None:
    """Rank 0: the shards as one samples.npz, the grid, metrics.json, and (log_run) the loggers."""
    from torchvision.utils import save_image

    from ddpm.core.images import to_grid
    from ddpm.training.loggers import build_loggers, log_image, log_metrics

    parts = [np.load(out_dir / f"samples_rank{r}.npz")["arr_0"] for r in range(world)]
    samples = np.concatenate(parts)[: cfg.n_samples]
    np.savez(out_dir / "samples.npz", samples)
    for r in range(world):
        (out_dir / f"samples_rank{r}.npz").unlink()
    grid = to_grid(torch.from_numpy(samples[: cfg.n_grid]).permute(0, 3, 1, 2), cfg.nrow, cfg.upscale)
    save_image(grid, out_dir / "samples.png")
    write_metrics(out_dir, results)
    for logger in build_loggers(to_plain(cfg.get("logger")), cfg.wandb_connect_timeout_s) if log_run else []:
        logger.log_hyperparams(to_plain(cfg))
        flat = {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        flat.update({f"eval/{name}/{k}": v for name, scores in results.get("by_ema", {}).items()
                     for k, v in scores.items() if isinstance(v, (int, float))})
        log_metrics([logger], flat, results["global_step"])
        log_image([logger], "eval/samples", out_dir / "samples.png", grid, "EMA samples", results["global_step"])
        logger.finalize("success")
    log.info("Metrics: %s", json.dumps(results))
    print(f"Wrote {out_dir / 'samples.npz'}, {out_dir / 'samples.png'} and {out_dir / 'metrics.json'}")
