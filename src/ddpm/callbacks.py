"""Callbacks: sample evaluation (grid, denoising chain, FID, bits/dim) and a last.ckpt that is never stale."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from .metrics import SampleMetrics
from .samplers import chain_timesteps


def to_grid(images: Tensor, nrow: int, upscale: int) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1], pixels enlarged `upscale` times (nearest)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    return make_grid(x, nrow=nrow, padding=max(upscale, 2), pad_value=1.0)


def frames_grid(frames: list[Tensor], upscale: int) -> Tensor:
    """Frames (each (B, C, H, W)) as a grid with one row per image and one column per frame."""
    stacked = torch.stack(frames, dim=1)  # (B, F, C, H, W)
    return to_grid(stacked.flatten(0, 1), nrow=len(frames), upscale=upscale)


def log_image(trainer: pl.Trainer, key: str, path: Path, grid: Tensor, caption: str) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], caption=[caption], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=trainer.global_step)


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Straight to the loggers (works in every hook, also on_train_end) and into callback_metrics."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in metrics.items()})


class SampleEvaluation(pl.Callback):
    """At every `every_n_validations`-th validation and at the end of training, draws samples from the
    EMA weights with fixed seeds and, from that one set of samples:
      - writes `out_dir/step_XXXXXXX.png` (and `final.png`), a grid of the first `n_grid`;
      - writes a denoising chain (x_T ... x_0 at `chain_frames` timesteps for `chain_samples` images);
      - computes FID (or its offline classifier variant), KID, IS on `fid_samples` samples, spread over
        all ranks;
      - computes bits/dim on the first `bpd_images` validation images (T network calls each).
    At the start of training it also writes a figure of the forward process on real images.
    """

    def __init__(self, out_dir: str, n_grid: int = 64, nrow: int = 8, seed: int = 0, upscale: int = 1,
                 every_n_validations: int = 1, batch_size: int = 256, chain_frames: int = 10, chain_samples: int = 8,
                 fid: dict[str, Any] | None = None, fid_samples: int = 0, bpd_images: int = 0,
                 bpd_clip_denoised: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.n_grid, self.nrow, self.seed, self.upscale = n_grid, nrow, seed, upscale
        self.every_n_validations, self.batch_size = every_n_validations, batch_size
        self.chain_frames, self.chain_samples = chain_frames, chain_samples
        self.metrics = SampleMetrics(**fid) if fid and fid_samples > 0 else None
        self.fid_samples, self.bpd_images, self.bpd_clip_denoised = fid_samples, bpd_images, bpd_clip_denoised
        self._validations = 0
        self._last_grid: Path | None = None
        self._last_step = -1

    # ----- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metrics is not None:  # on the device: Inception reference statistics are heavy
            self.metrics.prepare_on_ranks(trainer.datamodule, pl_module.device, trainer.is_global_zero,
                                          trainer.strategy.barrier)
        if trainer.is_global_zero and self.chain_frames > 1:
            self._forward_process_figure(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0:
            self.evaluate(trainer, pl_module, f"step_{trainer.global_step:07d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_step != trainer.global_step:
            self.evaluate(trainer, pl_module, f"step_{trainer.global_step:07d}")
        if trainer.is_global_zero and self._last_grid is not None:
            final = self.out_dir / "final.png"
            shutil.copyfile(self._last_grid, final)
            print(f"Samples: {final.resolve()}")

    # ----- work --------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> dict[str, float]:
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = math.ceil(max(self.fid_samples if self.metrics else 0, self.n_grid) / world)
        kept: list[Tensor] = []
        chain = None
        for i, start in enumerate(range(0, per_rank, self.batch_size)):
            n = min(self.batch_size, per_rank - start)
            record = chain_timesteps(pl_module.diffusion.num_timesteps, self.chain_frames) if i == 0 and self.chain_frames > 1 else ()
            out = pl_module.sample(n, seed=self.seed + 1_000_003 * rank + i, record_timesteps=record)
            if i == 0 and out.chain:
                chain = [frame[: self.chain_samples] for frame in out.chain]
            if self.metrics is not None:
                self.metrics.update(out.images)
            if sum(len(k) for k in kept) < self.n_grid:
                kept.append(out.images.cpu())
        results: dict[str, float] = {}
        if self.metrics is not None:
            results.update({f"val/{k}": v for k, v in self.metrics.compute(per_rank * world).items()})
        if self.bpd_images > 0:
            results["val/bpd"] = self._bits_per_dim(trainer, pl_module)
        if results:
            log_metrics(trainer, results)
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            grid = to_grid(torch.cat(kept)[: self.n_grid], self.nrow, self.upscale)
            self._last_grid = self.out_dir / f"{name}.png"
            save_image(grid, self._last_grid)
            log_image(trainer, "samples", self._last_grid, grid, f"EMA samples, step {trainer.global_step}")
            if chain is not None:
                path = self.out_dir / f"{name}_chain.png"
                cgrid = frames_grid(chain, self.upscale)
                save_image(cgrid, path)
                log_image(trainer, "denoising_chain", path, cgrid, "x_T (left) ... x_0 (right), EMA weights")
        self._last_step = trainer.global_step
        return results

    def _bits_per_dim(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Mean bits/dim over this rank's share of the first `bpd_images` validation images, averaged over ranks."""
        val = trainer.datamodule.val_set
        idx = list(range(trainer.global_rank, min(self.bpd_images, len(val)), trainer.world_size))
        x0 = torch.stack([val[i] for i in idx]).to(pl_module.device)
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        net = pl_module.ema.module
        was_training = net.training
        net.eval()
        bpd = pl_module.diffusion.bits_per_dim(net, x0, clip_denoised=self.bpd_clip_denoised,
                                               chunk=self.batch_size, generator=g)["total"].mean()
        net.train(was_training)
        return float(trainer.strategy.reduce(bpd, reduce_op="mean"))

    def _forward_process_figure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val = trainer.datamodule.val_set
        x0 = torch.stack([val[i] for i in range(min(self.chain_samples, len(val)))]).to(pl_module.device)
        ts = chain_timesteps(pl_module.diffusion.num_timesteps, self.chain_frames)[::-1]  # 0 ... T-1
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        frames = [x0] + [pl_module.diffusion.q_sample(x0, torch.full((len(x0),), t, device=x0.device), noise) for t in ts]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "forward_process.png"
        grid = frames_grid(frames, self.upscale)
        save_image(grid, path)
        log_image(trainer, "forward_process", path, grid, f"x_0 (left), then q(x_t | x_0) at t = {ts}")


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the final step.

    Lightning writes last.ckpt at the end of training only if none was written before, so with
    every_n_train_steps=1000 and max_steps=1500 it would keep step 1000 and lose 500 steps.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing train/loss as of the module's last NaN check (every
    module.check_every_n_steps): a float the check has already fetched, so the bar never waits for the GPU."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        if getattr(pl_module, "checked_loss", None) is not None:
            metrics["train/loss"] = pl_module.checked_loss
        return metrics


class Throughput(pl.Callback):
    """Training images per second over windows of `window` steps after `warmup` steps (the GPU is synced
    only at window ends), logged as train/img_per_s and summarised at the end of training."""

    def __init__(self, warmup: int = 20, window: int = 50) -> None:
        self.warmup, self.window = warmup, window
        self._start: float | None = None
        self._images = 0
        self.rates: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._start is not None:
            self._images += batch.shape[0] * trainer.world_size
        if step < self.warmup or (step - self.warmup) % self.window:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if self._start is not None:
            self.rates.append(self._images / (now - self._start))
            log_metrics(trainer, {"train/img_per_s": self.rates[-1]})
        self._start, self._images = now, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rates and trainer.is_global_zero:
            rates = sorted(self.rates)
            print(f"Throughput: median {rates[len(rates) // 2]:.0f} img/s over {len(rates)} windows of "
                  f"{self.window} steps (after {self.warmup} warm-up steps)")
