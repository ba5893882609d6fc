"""Random streams: one seed-derivation rule, per-rank streams under DDP, and checkpointed RNG state.

Exact resume needs the global streams that draw t, eps and dropout masks to continue where the
interrupted run stood, and every helper that needs randomness of its own (flips, evaluation seeds,
the feature classifier) must draw from its own generator so it never shifts those streams.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # a prime: derived seeds of different (major, minor) pairs never collide for minor < stride


def derive_seed(seed: int, major: int, minor: int = 0) -> int:
    """The seed of one independent stream: (seed, epoch) for an epoch's order and flips, (seed, rank, batch)
    for an evaluation shard."""
    return int(seed) + SEED_STRIDE * int(major) + int(minor)


def capture_rng_state() -> dict[str, Any]:
    """The global torch, CUDA and Python streams as plain values (a checkpoint loads with weights_only=True)."""
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(state), "python_version": version,
                           "python_gauss": gauss}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"], tuple(states["python"]), states["python_gauss"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_rank(rank: int) -> None:
    """Under DDP every rank was seeded alike (seed_everything), so every rank would draw the same t, eps and
    dropout masks for different images. Called after DDP has broadcast rank 0's weights, so only those draws
    change, and they become independent across ranks."""
    torch.manual_seed(torch.initial_seed() + rank)


def checkpoint_rng_states(world_size: int) -> dict[str, Any]:
    """This process's streams and, under DDP, every rank's (gathered: this runs on every rank)."""
    out: dict[str, Any] = {"rng_states": capture_rng_state()}
    if world_size > 1:
        per_rank: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(per_rank, out["rng_states"])
        out["rng_states_per_rank"] = per_rank
    return out


def restore_checkpoint_rng(checkpoint: dict[str, Any], rank: int, world_size: int) -> bool:
    """Restore this rank's streams from a checkpoint; False if it holds none for this number of processes
    (then each rank should get its own seed: `seed_rank`)."""
    states = checkpoint.get("rng_states")
    if not states:
        return False
    per_rank = checkpoint.get("rng_states_per_rank") or [states]
    if len(per_rank) != world_size:
        return False
    restore_rng_state(per_rank[rank])
    return True


def continue_or_seed_ranks(checkpoint: dict[str, Any] | None, rank: int, world_size: int) -> None:
    """At the start of training: continue a resumed run's streams; else (or when the checkpoint came from
    another number of processes, with a warning) give each DDP rank its own."""
    if checkpoint and not restore_checkpoint_rng(checkpoint, rank, world_size):
        log.warning("checkpoint saved by another number of processes than %d: training continues, but not with "
                    "the random draws of an uninterrupted run", world_size)
        checkpoint = None
    if not checkpoint and world_size > 1:
        seed_rank(rank)
