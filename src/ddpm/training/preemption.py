"""Stopping on SIGTERM / SIGINT (SLURM preemption, `kill`, Ctrl-C) without losing the run.

While training, the first signal asks for a stop: the current step finishes, evaluation is skipped,
`last.ckpt` is written at that step (Lightning writes checkpoints atomically), `metrics.json` records
`status=interrupted`, and the process exits with 128 + the signal number. `ckpt_path=last` then resumes
exactly. A second signal of the same kind acts as usual (terminates at once).

Lightning's own SIGTERM handling raises SystemExit with code 0 (a preempted sweep job looks successful),
and would skip the final checkpoint: the handlers here replace it while training runs.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning.pytorch as pl
import torch

from ddpm.runtime.stop import SIGNALS, adopt, handler, requested


class GracefulStop(pl.Callback):
    """Installs the handlers for the duration of training and turns a received signal into `should_stop`.

    Under DDP every rank must stop at the same step (the checkpoint is collective) and end as interrupted: the
    ranks share what they received every `trainer.log_every_n_steps` steps (one all-reduce), a single process
    checks after every step."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, after Lightning registered its own SIGTERM handler (trainer.fit registers it after setup)
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, handler) for s in SIGNALS}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.world_size == 1:
            trainer.should_stop = trainer.should_stop or requested() is not None
        elif trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            # the signal any rank received (the largest number; 0: none) reaches every rank, so all stop at this
            # step and record the same stop: `kill` of the launching process signals rank 0 alone
            received = torch.tensor(requested() or 0, device=pl_module.device)
            signum = int(trainer.strategy.reduce(received, reduce_op="max"))
            if signum:
                adopt(signum)
                trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
