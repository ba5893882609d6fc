"""Host (CPU) milliseconds per phase of Trainer.fit's training step, in the steady state: a callback for train.py.

    PYTHONPATH=benchmarks python train.py model=unet_base data=synthetic trainer=gpu \\
        +callbacks.fit_phases._target_=fit_phases.FitPhases

Lightning's SimpleProfiler averages over the whole run, compilation included; this times steps `start` to
`start + steps` only, with no synchronisation and no profiler overhead. The phases follow Lightning's hook order:
loop + data (previous batch end -> batch start), forward (-> on_before_backward: zero_grad, training_step),
backward (-> on_before_optimizer_step), optimizer (-> batch end: clipping, the optimizer step, the EMA update, the
LR scheduler, logging). If their sum is the step's wall time and the GPU needs less, the step is bound by the CPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning.pytorch as pl

PHASES = ("loop + data", "forward", "backward", "optimizer + EMA + logging")


class FitPhases(pl.Callback):
    def __init__(self, start: int = 300, steps: int = 200) -> None:
        self.start, self.steps = start, steps
        self._marks: dict[str, float] = {}
        self.ms: dict[str, list[float]] = {p: [] for p in PHASES}

    def _mark(self, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark("start")

    def on_before_backward(self, *args: Any) -> None:
        self._mark("backward")

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._mark("optimizer")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        end = time.perf_counter()
        m = self._marks
        if self.start < trainer.global_step <= self.start + self.steps and "end" in m:
            for phase, (a, b) in zip(PHASES, (("end", "start"), ("start", "backward"), ("backward", "optimizer"))):
                self.ms[phase].append((m[b] - m[a]) * 1e3)
            self.ms[PHASES[3]].append((end - m["optimizer"]) * 1e3)
        m["end"] = end

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.ms[PHASES[0]]:
            return
        med = {p: statistics.median(v) for p, v in self.ms.items()}
        print(f"FitPhases: host ms per step, median of {len(self.ms[PHASES[0]])} steps from step {self.start}: "
              + ", ".join(f"{p} {ms:.2f}" for p, ms in med.items()) + f"; sum {sum(med.values()):.2f}", flush=True)
