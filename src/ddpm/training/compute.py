"""Compute: training throughput (`Throughput`), and quality against compute. Every evaluation of a run records
the images seen and the training seconds beside its metrics (logged as val/images_seen and val/train_seconds,
W&B x-axes) and appends them to the run's `evaluations.jsonl`, which the sweep summary plots for every job, so
"which recipe is better at equal compute" is one multirun."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
import torch

from ddpm.data import image_of
from ddpm.training.loggers import report

EVALUATIONS_FILE = "evaluations.jsonl"


class TrainingClock:
    """Wall-clock seconds of training since `start`, evaluations (and anything else run `paused`) left out."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._paused = 0.0

    def start(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    @contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - began

    def seconds(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start - self._paused


def images_seen(global_step: int, batch_size: int, world_size: int, accumulate: int = 1) -> int:
    """Training images behind `global_step` optimizer steps (every rank's batch, every accumulated micro-batch)."""
    return int(global_step) * int(batch_size) * int(world_size) * int(accumulate)


def append_evaluation(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / EVALUATIONS_FILE, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / EVALUATIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


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
            self._images += image_of(batch).shape[0] * trainer.world_size
        if step < self.warmup or (step - self.warmup) % self.window:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if self._start is not None:
            self.rates.append(self._images / (now - self._start))
            report(trainer, {"train/img_per_s": self.rates[-1]})
        self._start, self._images = now, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rates and trainer.is_global_zero:
            rates = sorted(self.rates)
            print(f"Throughput: median {rates[len(rates) // 2]:.0f} img/s over {len(rates)} windows of "
                  f"{self.window} steps (after {self.warmup} warm-up steps)")
