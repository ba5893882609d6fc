"""The real side of a Fréchet distance: which reference images (the whole split, or a fixed seeded subset of it),
their features in one pass that reports its progress and warns when it will be long, or statistics published
elsewhere (pytorch-fid's / torch-fidelity's / EDM's mu and sigma of CIFAR-10's training set), used as they are.

A subset changes the number, not only its noise: FID is biased by the number of samples on either side, so the
size is part of the cache key and is logged beside the metric (`<metric>_reference_n`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ddpm.core.progress import progress
from ddpm.errors import ConfigError

log = logging.getLogger(__name__)
SLOW_S = 180.0  # a feature pass estimated longer than this on a CPU gets a warning that says how to cut it
SUGGESTED_SIZE = 2000


def reference_subset(images: Tensor, size: int | None, seed: int = 0) -> Tensor:
    """The whole split (size None, or at least its length), or `size` of its images drawn once by `seed`, in
    their original order: the same subset for every run."""
    if size is None or size >= len(images):
        return images
    if size < 2:
        raise ConfigError(f"fid.reference_size must be at least 2 (or null: the whole split), got {size}")
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return images[keep]


def feature_pass(images: Tensor, update: Callable[[Tensor], Tensor], device: torch.device | str, desc: str,
                 batch_size: int = 500) -> Tensor:
    """The features of every image, in batches fed to `update` (which returns the batch's features); progress on
    a terminal or in the log, and after the first batch one warning if the whole pass will take more than a few
    minutes on a CPU, saying how to cut it."""
    starts = range(0, len(images), batch_size)
    feats, began = [], time.perf_counter()
    for i, start in enumerate(progress(starts, len(starts), desc, min_total=2)):
        feats.append(update(images[start:start + batch_size].to(device)))
        if i == 0 and len(starts) > 1 and torch.device(device).type == "cpu":
            estimate = (time.perf_counter() - began) * len(starts)
            if estimate > SLOW_S and len(images) > SUGGESTED_SIZE:
                per_image = estimate / len(images)
                log.warning("%s: about %.0f min for %d images on this CPU; fid.reference_size=%d uses a fixed "
                            "subset (about %.1f min; the whole split, the default, is what papers report)",
                            desc, estimate / 60, len(images), SUGGESTED_SIZE, per_image * SUGGESTED_SIZE / 60)
            elif estimate > SLOW_S:
                log.warning("%s: about %.0f min for %d images on this CPU (once: the statistics are cached)",
                            desc, estimate / 60, len(images))
    return torch.cat(feats)


def published_statistics(path: str | Path, num_features: int) -> tuple[Tensor, Tensor]:
    """mu (D,) and sigma (D, D) in float64 from an .npz with keys `mu` and `sigma` (as pytorch-fid and EDM publish
    them), checked against the feature network's D; one line for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"fid.reference_stats {path} does not exist; give an .npz with keys mu and sigma")
    try:
        with np.load(path) as stats:
            mu, sigma = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
    except Exception as err:  # not an npz, keys missing: the same to the user
        raise ConfigError(f"fid.reference_stats {path} is not an .npz with keys mu and sigma ({err})") from err
    if mu.shape != (num_features,) or sigma.shape != (num_features, num_features):
        raise ConfigError(f"fid.reference_stats {path} holds mu {mu.shape} and sigma {sigma.shape}; the feature "
                          f"network gives {num_features} features (fid.feature)")
    return torch.from_numpy(mu), torch.from_numpy(sigma)


def fid_states(mu: Tensor, sigma: Tensor, n: int = 50_000) -> dict[str, Tensor]:
    """torchmetrics' FrechetInceptionDistance real-side sums for mean mu and covariance sigma: it computes
    mean = sum / n and cov = (cov_sum - n mean mean^T) / (n - 1), so any n > 1 gives back mu and sigma."""
    return {"real_features_sum": mu * n, "real_features_cov_sum": sigma * (n - 1) + n * torch.outer(mu, mu),
            "real_features_num_samples": torch.tensor(n, dtype=torch.long)}
