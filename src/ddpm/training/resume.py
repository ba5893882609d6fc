"""Exact resume: what a checkpoint must hold beyond weights and optimizer so that an interrupted run continues
as if it had never stopped, and how it is put back.

Lightning restores weights, optimizer, schedulers, step counters and callback state. What is left is this
module's: the random streams (t, eps and dropout draws; every rank's under DDP), the W&B run id (a resumed run
continues the same W&B run), the optimizer state's memory layout (see `perf.match_state_layout`) and the last
NaN check before anything is written (a checkpoint never holds NaN weights).
"""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl

from ddpm.runtime.perf import match_state_layout
from ddpm.runtime.rng import checkpoint_rng_states, continue_or_seed_ranks
from ddpm.training.loggers import resume_ids

RNG_KEYS = ("rng_states", "rng_states_per_rank")


class ExactResume:
    """Held by the LightningModule, called from its checkpoint hooks (it is not a Callback: `callbacks=none`
    must not turn exact resume off)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def save(self, trainer: pl.Trainer, checkpoint: dict[str, Any], check_loss: Callable[[], None]) -> None:
        """check_loss: raises if the last loss is not finite, before anything is added (no NaN checkpoint)."""
        check_loss()
        checkpoint.update(checkpoint_rng_states(trainer.world_size))
        checkpoint.update(resume_ids(trainer.loggers))

    def load(self, checkpoint: dict[str, Any]) -> None:
        self._loaded = {k: checkpoint[k] for k in RNG_KEYS if k in checkpoint}

    def start(self, trainer: pl.Trainer) -> None:
        """At the start of training, after the optimizer is restored: its state takes its parameters' layout; the
        random streams continue the saved run's or, under DDP, each rank gets its own."""
        for optimizer in trainer.optimizers:
            match_state_layout(optimizer)
        loaded, self._loaded = self._loaded, None
        continue_or_seed_ranks(loaded, trainer.global_rank, trainer.world_size)
