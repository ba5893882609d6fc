"""Evaluating a sample request, for the training-time callback and eval.py alike: draw the samples (sharded over
ranks), score them with the sample metrics fed during the draw, and add the bits/dim of held-out images.

Each caller decides what to ask and where the figures go (the callback logs `val/...`, eval.py writes metrics.json);
what is computed, and how, is decided here once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ddpm.pipeline.sampling import ReduceSum, SampleRequest, Samples, SamplingPipeline


@dataclass(frozen=True)
class BitsPerDimRequest:
    """The full variational bound on the first `n_images` of `split` (T network calls each)."""

    split: Any
    n_images: int
    seed: int = 0
    batch_size: int = 256
    clip_denoised: bool = False


@dataclass
class Evaluation:
    """What one request gave: the samples, the figures (FID and its companions, bits/dim), and the seconds the
    draw took (the device synchronised at both ends)."""

    samples: Samples
    results: dict[str, float] = field(default_factory=dict)
    sampling_seconds: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_request(pipeline: SamplingPipeline, request: SampleRequest, rank: int = 0, world: int = 1,
                     to_eval: Callable[[Tensor], Tensor] = lambda x: x, metrics: Any = None,
                     bpd: BitsPerDimRequest | None = None, reduce_sum: ReduceSum = lambda x: x) -> Evaluation:
    """Draw `request` (this rank's share), compute `metrics` (a `SampleMetrics`, reset by its compute) over all
    ranks, then bits/dim if asked. A stop signal during the draw returns the samples so far and no figures."""
    _sync(pipeline.device)
    start = time.perf_counter()
    samples = pipeline.draw(request, rank, world, to_eval, metrics)
    _sync(pipeline.device)
    out = Evaluation(samples, sampling_seconds=time.perf_counter() - start)
    if samples.aborted:
        return out
    if metrics is not None:
        out.results.update(metrics.compute(samples.n_total))
    if bpd is not None and bpd.n_images > 0:
        out.results.update(pipeline.bits_per_dim(bpd.split, bpd.n_images, bpd.seed, bpd.batch_size,
                                                 bpd.clip_denoised, rank, world, reduce_sum))
    return out
