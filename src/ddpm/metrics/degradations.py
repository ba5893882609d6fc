"""Known-bad versions of a set of real images, each at increasing strength: the yardstick for a yardstick.

A sample-quality metric that the framework logs must score each of these worse than the clean held-out set,
and worse as the strength grows (`benchmarks/metric_quality.py`, `tests/test_metric_quality.py`). Each
degradation keeps the number of images, so the metric's small-sample bias is the same for every row.

Images are uint8 (N, C, H, W) with integer labels (N,); every function is deterministic given `seed`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Degradation = Callable[[Tensor, Tensor, float, int], Tensor]


def _to_float(images: Tensor) -> Tensor:
    return images.double()


def _to_uint8(x: Tensor) -> Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def noise(images: Tensor, labels: Tensor, sigma: float, seed: int) -> Tensor:
    """Additive Gaussian noise of standard deviation `sigma` (in 0..255 units), then requantised."""
    g = torch.Generator().manual_seed(seed)
    return _to_uint8(_to_float(images) + sigma * torch.randn(images.shape, generator=g, dtype=torch.float64))


def blur(images: Tensor, labels: Tensor, sigma: float, seed: int) -> Tensor:
    """Gaussian blur of standard deviation `sigma` pixels (separable kernel of radius ceil(3 sigma), reflected
    borders)."""
    radius = max(1, int(torch.tensor(3 * sigma).ceil()))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = _to_float(images)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return _to_uint8(x)


def _resample_classes(images: Tensor, labels: Tensor, weights: Tensor, seed: int) -> Tensor:
    """N images drawn (with replacement within a class) so that class c makes up weights[c] / sum of them."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    w = weights[classes].double()
    counts = torch.floor(w / w.sum() * len(images)).long()
    counts[torch.argsort(-w)[: len(images) - int(counts.sum())]] += 1  # the remainder to the heaviest classes
    picked = []
    for c, n in zip(classes.tolist(), counts.tolist()):
        pool = torch.nonzero(labels == c).flatten()
        picked.append(pool[torch.randint(len(pool), (n,), generator=g)])
    return images[torch.cat(picked)]


def drop_classes(images: Tensor, labels: Tensor, count: float, seed: int) -> Tensor:
    """The first `count` classes missing; the others fill their share (the same number of images)."""
    k = int(labels.max()) + 1
    if count >= k:
        raise ValueError(f"cannot drop {int(count)} of all {k} classes: at least one must remain")
    weights = torch.ones(k)
    weights[: int(count)] = 0
    return _resample_classes(images, labels, weights, seed)


def imbalance(images: Tensor, labels: Tensor, factor: float, seed: int) -> Tensor:
    """Class 0 at `factor` times its share, the other classes scaled down to keep N."""
    weights = torch.ones(int(labels.max()) + 1)
    weights[0] = factor
    return _resample_classes(images, labels, weights, seed)


def collapse(images: Tensor, labels: Tensor, share: float, seed: int) -> Tensor:
    """Mode collapse: a share of the images replaced by copies of one image."""
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    n = int(round(share * len(images)))
    idx = torch.randperm(len(images), generator=g)[:n]
    out[idx] = images[int(torch.randint(len(images), (1,), generator=g))]
    return out


def shrink(images: Tensor, labels: Tensor, amount: float, seed: int) -> Tensor:
    """Under-dispersion: every image pulled towards the set's mean image, x + amount (mean - x)."""
    x = _to_float(images)
    return _to_uint8(x + amount * (x.mean(dim=0, keepdim=True) - x))


# name -> (function, strengths from mild to strong)
SUITE: dict[str, tuple[Degradation, tuple[float, ...]]] = {
    "noise": (noise, (4.0, 8.0, 16.0, 32.0)),
    "blur": (blur, (0.5, 1.0, 1.5)),
    "drop_classes": (drop_classes, (1, 2, 4)),
    "collapse": (collapse, (0.1, 0.25, 0.5)),
    "imbalance": (imbalance, (2.0, 3.0, 5.0)),
    "shrink": (shrink, (0.1, 0.2, 0.4)),
}
