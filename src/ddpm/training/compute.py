"""Compute: training throughput (`Throughput`), what start-up costs (`StartupReport`), and quality against
compute. Every evaluation of a run records the images seen and the training seconds beside its metrics (logged as
val/images_seen and val/train_seconds, W&B x-axes) and appends them to the run's `evaluations.jsonl`, which the
sweep summary plots for every job, so "which recipe is better at equal compute" is one multirun."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
import torch

from ddpm.data import image_of
from ddpm.training.loggers import report

log = logging.getLogger(__name__)
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


def process_seconds() -> float | None:
    """Seconds since this process started (Linux's /proc, to the clock tick after boot; None elsewhere): start-up
    includes the imports and the data set-up that precede training."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class StartupReport(pl.Callback):
    """What start-up cost, in the log and the loggers (perf/...): the first training step of this process (where
    torch.compile, CUDA-graph capture and cuDNN's autotuning happen), what torch.compile did in it and which of its
    caches it used (`runtime.perf.compile_stats`), and the seconds to step `at_step` since training began and since
    the process started. Waits for the device twice per run, at those two steps."""

    def __init__(self, at_step: int = 20) -> None:
        self.at_step = int(at_step)
        self._start: float | None = None
        self._first_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        from ddpm.runtime.perf import compile_stats

        done = trainer.global_step - self._first_step
        if self._start is None or done not in (1, self.at_step) or not trainer.is_global_zero:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        if done == 1:
            stats = compile_stats() if getattr(pl_module, "plan", None) is not None and pl_module.plan.compile else {}
            compiled = (f"torch.compile {stats['compile_seconds']:.1f} s (Inductor {stats['inductor_seconds']:.1f} s, "
                        f"{stats['graphs']} graph(s)); FX graph cache {stats['fx_graph_cache_hits']} hit(s) / "
                        f"{stats['fx_graph_cache_misses']} miss(es), AOTAutograd cache "
                        f"{stats['aot_autograd_cache_hits']} / {stats['aot_autograd_cache_misses']}, in "
                        f"{stats['cache_dir']}") if stats else "not compiled"
            log.info("start-up: first training step %.1f s; %s", seconds, compiled)
            values = {"perf/first_step_seconds": seconds,
                      **{f"perf/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}}
        else:
            since = process_seconds()
            log.info("start-up: step %d reached %.1f s after training began%s", done, seconds,
                     "" if since is None else f", {since:.1f} s after the process started")
            values = {f"perf/seconds_to_step_{done}": seconds}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
