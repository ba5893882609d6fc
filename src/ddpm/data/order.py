"""The order of training images and their random flips: one implementation for both data paths.

An epoch's order and flips depend on (seed, epoch) alone, so a resumed run sees exactly the batches an
uninterrupted run would, and the DataLoader path and the GPU-resident path (DeviceLoader) see the same
images, flipped the same way, whatever the number of loader workers.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ddpm.runtime.rng import derive_seed


def image_of(item) -> Tensor:
    """Data sets yield an image or (image, label); the diffusion only needs the image."""
    return item[0] if isinstance(item, (tuple, list)) else item


def epoch_flips(seed: int, epoch: int, n: int, p: float) -> Tensor:
    """(n,) bool: whether image i is mirrored in this epoch (probability p each, a stream of its own)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 1))
    return torch.rand(n, generator=g) < p


class EpochSampler(DistributedSampler):
    """This rank's share of a (seed, epoch)-determined random order, with each image's flip decision.

    Yields (index, flip) pairs, read by `Flipped`. With several processes, rank r takes every world-th index of
    the shared order (the tail that does not divide evenly is dropped, as with drop_last). `skip` drops this
    rank's first indices once (resuming mid-epoch). A DistributedSampler only so that Lightning does not wrap it
    in another one (which would index past a shortened resumed epoch); Lightning calls `set_epoch` at every
    epoch start. `__len__` stays the full per-rank length, so Lightning's restored batch count matches.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, flip_p: float = 0.0) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0  # no super(): there is no dataset
        self.rank, self.world_size, self.flip_p = rank, world_size, flip_p

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_plan(self) -> tuple[Tensor, Tensor]:
        """This rank's indices for the current epoch (skip applied, then reset) and their flips, both (N_r,)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g)[self.rank:len(self) * self.world_size:self.world_size]
        skip, self.skip = self.skip, 0
        order = order[skip:]
        return order, epoch_flips(self.seed, self.epoch, self.n, self.flip_p)[order]

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        order, flips = self.epoch_plan()
        return iter(zip(order.tolist(), flips.tolist()))

    def __len__(self) -> int:
        return self.n // self.world_size


def label_of(item) -> Tensor:
    """The class label of an (image, label) item."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError("this data set yields no class labels")
    return torch.as_tensor(item[1], dtype=torch.long)


class Flipped(Dataset):
    """Training images: item (index, flip) -> the image, mirrored when flip; a plain index gives it as is.
    With labels=True the item is (image, label), for class-conditional models."""

    def __init__(self, base: Dataset, labels: bool = False) -> None:
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, bool]) -> Tensor | tuple[Tensor, Tensor]:
        i, flip = key if isinstance(key, tuple) else (key, False)
        item = self.base[i]
        x = image_of(item)
        x = x.flip(-1) if flip else x
        return (x, label_of(item)) if self.labels else x


def unpack_batch(batch: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
    """Batches are images (B, C, H, W), or (images, labels (B,)) for a conditional model (checked at setup)."""
    return (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
