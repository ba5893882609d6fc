"""Data: where images come from (`datasets`), their epoch order and flips (`order`), the LightningDataModules
(`datamodule`) and the GPU-resident loader (`device_loader`).

The LightningDataModules are loaded on first use (PEP 562), so that the sampling side (`ddpm.pipeline`), which
reads held-out images through `image_of`, imports no Lightning; configs name them as `ddpm.data.<Name>`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ddpm.data.datasets import DataError
from ddpm.data.order import EpochSampler, image_of

LAZY = {"DigitsDataModule": "datamodule", "ImageDataModule": "datamodule", "ImageFolderDataModule": "datamodule",
        "SyntheticDataModule": "datamodule", "TorchvisionDataModule": "datamodule", "DeviceLoader": "device_loader"}

__all__ = ["DataError", "EpochSampler", "image_of", *LAZY]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(f"ddpm.data.{LAZY[name]}"), name)
    raise AttributeError(f"module 'ddpm.data' has no attribute {name!r}")
