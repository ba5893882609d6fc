"""Callbacks: PNG grids of EMA samples, written to disk and sent to whichever loggers are attached."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image


def to_grid(images: Tensor, nrow: int, upscale: int) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1], pixels enlarged `upscale` times (nearest)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    return make_grid(x, nrow=nrow, padding=upscale, pad_value=1.0)


def log_image(trainer: pl.Trainer, key: str, path: Path, grid: Tensor, caption: str) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], caption=[caption], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=trainer.global_step)


class SampleGrid(pl.Callback):
    """Samples `n_samples` images from the EMA weights with a fixed seed at every `every_n_validations`-th
    validation and at the end of training; saves `out_dir/step_XXXXXXX.png` and `out_dir/final.png`."""

    def __init__(self, out_dir: str, n_samples: int = 64, nrow: int = 8, seed: int = 0, upscale: int = 1,
                 every_n_validations: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.n_samples, self.nrow, self.seed, self.upscale = n_samples, nrow, seed, upscale
        self.every_n_validations = every_n_validations
        self._validations = 0

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Path:
        out = pl_module.sample(self.n_samples, seed=self.seed)
        grid = to_grid(out.images, self.nrow, self.upscale)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}.png"
        save_image(grid, path)
        log_image(trainer, "samples", path, grid, f"EMA samples, step {trainer.global_step}")
        return path

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0:
            self._write(trainer, pl_module, f"step_{trainer.global_step:07d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            path = self._write(trainer, pl_module, "final")
            print(f"Samples: {path.resolve()}")


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the final step.

    Lightning writes last.ckpt at the end of training only if none was written before, so with
    every_n_train_steps=1000 and max_steps=1500 it would keep step 1000 and lose 500 steps.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
