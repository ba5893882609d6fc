"""Images between the model's [-1, 1] floats and what people and metrics see: uint8 quantisation (as an 8-bit PNG
holds it) and grids (torchvision's make_grid, pixels enlarged so 8x8 samples are visible). Used by training-time
evaluation, eval.py, the metrics, the notebooks and the benchmarks alike."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid


def quantize(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255], rounding as an 8-bit PNG would: FID sees what a viewer sees."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_grid(images: Tensor, nrow: int, upscale: int) -> Tensor:
    """(B, C, H, W) in [-1, 1] (or uint8) -> one (C, H', W') grid in [0, 1], pixels enlarged `upscale` times."""
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    x = ((x.clamp(-1, 1) + 1) / 2).cpu()
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    return make_grid(x, nrow=nrow, padding=max(upscale, 2), pad_value=1.0)


def frames_grid(frames: list[Tensor], upscale: int) -> Tensor:
    """Frames (each (B, C, H, W)) as a grid with one row per image and one column per frame."""
    stacked = torch.stack(frames, dim=1)  # (B, F, C, H, W)
    return to_grid(stacked.flatten(0, 1), nrow=len(frames), upscale=upscale)
