"""Data: where images come from (`datasets`), their epoch order and flips (`order`), the LightningDataModules
(`datamodule`) and the GPU-resident loader (`device_loader`)."""

from .datamodule import (
           DigitsDataModule,
           ImageDataModule,
           ImageFolderDataModule,
           SyntheticDataModule,
           TorchvisionDataModule,
)
from .datasets import DataError
from .device_loader import DeviceLoader
from .order import EpochSampler, image_of

__all__ = ["DataError", "DeviceLoader", "DigitsDataModule", "EpochSampler", "ImageDataModule", "ImageFolderDataModule",
           "SyntheticDataModule", "TorchvisionDataModule", "image_of"]
