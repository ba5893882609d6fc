"""One evaluation path for training-time evaluation (`callbacks.SampleEvaluation`) and `eval.py`.

Sampling is sharded over ranks: rank r draws ceil(n / world) samples in batches seeded
derive_seed(seed, r, batch), feeds them to the metrics (torchmetrics sums the statistics over ranks) and keeps
the first `keep` as uint8. A class-conditional model draws sample i (global index) of class
classes[(i // per_row) % len(classes)]: a grid of `per_row` images per row has one row per class.
Bits/dim takes every world-th held-out image and sums over ranks. Samples of padded
data are cropped back to the native size (`to_eval`) before anything sees them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from . import likelihood, preemption
from .data import image_of
from .guidance import check_conditioning, class_labels
from .images import quantize
from .rng import derive_seed

ReduceSum = Callable[[Tensor], Tensor]  # sums a tensor over ranks (identity on one process)


@contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Dropout off for the duration, the previous mode restored afterwards, also on an exception."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


@dataclass
class Samples:
    """What one evaluation drew: the kept samples (uint8, (K, C, H, W), CPU), the denoising chain of the first
    batch (frames (B, C, H, W) in [-1, 1]), and how many were drawn over all ranks; aborted on a stop signal."""

    images: Tensor
    chain: list[Tensor] = field(default_factory=list)
    n_total: int = 0
    aborted: bool = False


@torch.no_grad()
def draw_samples(module, n: int, batch_size: int, seed: int, rank: int, world: int, keep: int,
                 to_eval: Callable[[Tensor], Tensor] = lambda x: x, metrics=None, use_ema: bool = True,
                 chain_timesteps: Sequence[int] = (), chain_samples: int = 0, sampler=None,
                 classes: Sequence[int] | None = None, per_row: int = 8, guidance_scale: float = 0.0) -> Samples:
    """This rank's share of n samples from `module.sample` (with `sampler`, else the module's); `keep` of them
    kept, all of them fed to `metrics` (with the labels they were drawn with, for class accuracy). classes: the
    labels to draw (None: all of a conditional model's classes); guidance_scale: classifier-free guidance w."""
    k = module.num_classes
    classes = check_conditioning(k, classes=classes, guidance_scale=guidance_scale)
    per_rank = math.ceil(n / world)
    kept: list[Tensor] = []
    out = Samples(images=torch.empty(0, dtype=torch.uint8), n_total=per_rank * world)
    for i, start in enumerate(range(0, per_rank, batch_size)):
        if preemption.requested() is not None:
            out.aborted = True
            return out
        record = chain_timesteps if i == 0 else ()
        b = min(batch_size, per_rank - start)
        labels = None if k is None else class_labels(torch.arange(b) + rank * per_rank + start, classes, per_row)
        drawn = module.sample(b, seed=derive_seed(seed, rank, i), use_ema=use_ema, record_timesteps=record,
                              sampler=sampler, labels=labels, guidance_scale=guidance_scale)
        images = to_eval(drawn.images.float())
        if record:
            out.chain = [to_eval(frame[:chain_samples].float()).cpu() for frame in drawn.chain]
        if metrics is not None:
            metrics.update(images, labels)
        if sum(len(k) for k in kept) < keep:
            kept.append(quantize(images).cpu())
    out.images = torch.cat(kept)[:keep] if kept else out.images
    return out


@torch.no_grad()
def bits_per_dim(module, split, n_images: int, rank: int, world: int, seed: int, batch_size: int,
                 clip_denoised: bool, reduce_sum: ReduceSum, use_ema: bool = True) -> dict[str, float]:
    """The full variational bound on the first n_images of `split` (T network calls each), this rank's share
    (every world-th image), summed over ranks: mean bits/dim, its prior and decoder parts, and the count."""
    idx = list(range(rank, min(n_images, len(split)), world))
    device = module.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, prior, decoder, count
    if idx:
        x0 = torch.stack([image_of(split[i]) for i in idx]).to(device)
        g = torch.Generator(device=device).manual_seed(seed)
        with eval_mode(module.ema.module if use_ema else module.net) as net:
            out = likelihood.bits_per_dim(module.diffusion, net, x0, clip_denoised, chunk=batch_size, generator=g)
        sums = torch.stack([out["total"].sum(), out["prior"].sum(), out["decoder"].sum(),
                            torch.tensor(float(len(idx)), dtype=torch.float64, device=device)])
    total, prior, decoder, count = reduce_sum(sums).tolist()
    return {"bpd": total / count, "bpd_prior": prior / count, "bpd_decoder": decoder / count, "bpd_n": int(count)}
