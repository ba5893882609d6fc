"""Training batches indexed out of the whole training split, held on the training device."""

from __future__ import annotations

from typing import Iterator, Union

import torch
from torch import Tensor

from ddpm.data.order import EpochSampler


class DeviceLoader:
    """For data sets that fit in GPU memory: no workers, no collate, no host-to-device copy per step.

    The epoch's order and flips (the EpochSampler's, resume skip included: the same batches as the DataLoader
    path) go to the device once per epoch, in one non-blocking copy; each batch is then an index_select on the
    device, which never makes the host wait for the GPU. Lightning finds `sampler` and calls its set_epoch, as
    for a DataLoader."""

    def __init__(self, images: Tensor, sampler: EpochSampler, batch_size: int, labels: Tensor | None = None) -> None:
        self.images = images  # (N, C, H, W) on the device, already in [-1, 1]
        self.labels = labels  # (N,) long on the device, or None: batches are then images alone
        self.sampler, self.batch_size = sampler, batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _to_device(self, x: Tensor) -> Tensor:
        if self.images.device.type != "cuda":
            return x.to(self.images.device)
        # non-blocking from pinned memory; torch's pinned-memory cache keeps the block until the copy is done
        return x.pin_memory().to(self.images.device, non_blocking=True)

    def __iter__(self) -> Iterator[Union[Tensor, tuple[Tensor, Tensor]]]:
        order, flips = self.sampler.epoch_plan()  # (N_r,) each
        n_batches = len(order) // self.batch_size  # drop_last: fixed batches per epoch, exact resume
        keep = n_batches * self.batch_size
        batches = self._to_device(order[:keep].view(n_batches, self.batch_size))
        batch_flips = self._to_device(flips[:keep].view(n_batches, self.batch_size)) if flips.any() else None
        for b, idx in enumerate(batches):  # (B,) rows of the device tensors: views, no sync
            x = self.images.index_select(0, idx)
            if batch_flips is not None:
                x = torch.where(batch_flips[b][:, None, None, None], x.flip(-1), x)
            yield x if self.labels is None else (x, self.labels.index_select(0, idx))
