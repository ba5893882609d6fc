"""What a Fréchet distance folds into one number, shown apart: fidelity, coverage and the class mix.

- `precision_recall` (Kynkäänniemi et al. 2019, k-NN manifolds, k = 3): precision is the share of generated
  samples inside the real manifold (the union of balls around each real feature, radius = its distance to the
  k-th nearest real neighbour), recall the share of real samples inside the generated manifold. Blurry or noisy
  samples lose precision; mode collapse and under-dispersion lose recall.
- `ClassBalance`: the histogram of the feature classifier's predicted classes over the generated samples; its
  normalised entropy (1: every class equally often, 0: one class) and its total-variation distance to the same
  histogram of the real reference images (0: the real class mix). A dropped class or a collapsed sampler shows
  here at a glance.

Both are torchmetrics `Metric`s or plain functions of features, so they sum / gather over DDP ranks like FID.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def kth_neighbour_radii(features: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """Distance of each row to its k-th nearest other row (the row itself excluded)."""
    out = []
    for i in range(0, len(features), chunk):
        d = torch.cdist(features[i:i + chunk], features)
        out.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: the zero distance to itself comes first
    return torch.cat(out)


def coverage_of(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 4096) -> Tensor:
    """Share of `points` that lie in at least one ball (centres, radii)."""
    inside = 0
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return torch.tensor(inside / max(len(points), 1), dtype=torch.float64)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` features (float64 distances)."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall need more than k={k} real and generated samples, "
                         f"got {len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    precision = coverage_of(fake, real, kth_neighbour_radii(real, k))
    recall = coverage_of(real, fake, kth_neighbour_radii(fake, k))
    return float(precision), float(recall)


class FeatureStore(Metric):
    """Generated features, gathered over ranks at compute() (for precision / recall)."""

    full_state_update = False

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.add_state("features", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor) -> None:
        """Keeps at most `limit` features per rank: a 50k-sample evaluation does not hold 50k x 2048 floats."""
        held = sum(len(f) for f in self.features)
        if held < self.limit:
            self.features.append(features.detach().float()[: self.limit - held])

    def compute(self) -> Tensor:
        feats = self.features if isinstance(self.features, Tensor) else torch.cat(self.features)
        return feats[: self.limit]


class ClassBalance(Metric):
    """Predicted-class histogram of the generated samples: normalised entropy and total variation to the real
    histogram (`reference`, counts or shares of the real reference images)."""

    full_state_update = False

    def __init__(self, num_classes: int, reference: Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reference = None if reference is None else reference.double() / reference.double().sum()
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor) -> None:
        self.counts += torch.bincount(logits.argmax(1), minlength=self.num_classes).to(self.counts)

    def compute(self) -> dict[str, float]:
        p = self.counts / self.counts.sum().clamp(min=1)
        nz = p[p > 0]
        out = {"class_entropy": float(-(nz * nz.log()).sum() / math.log(self.num_classes))}
        if self.reference is not None:
            out["class_tv"] = float(0.5 * (p - self.reference.to(p)).abs().sum())
        return out
