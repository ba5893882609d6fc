"""LightningDataModules that yield image batches (B, C, H, W) in [-1, 1].

Every data set goes through `ImageDataModule`: a full data set, a seeded train/val split, the epoch order
and flips of `order.py`, and either a DataLoader or, when the execution plan holds the split on the device,
a DeviceLoader. Subclasses only say how to load the images. `check()` runs before any training so a
missing or corrupt data set fails with one message that says what to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from ddpm.data.datasets import (
    FITS,
    DataError,
    ImageFiles,
    TorchvisionFiles,
    class_folders,
    crop_to_native,
    digits,
    image_files,
    pil_transform,
    synthetic,
)
from ddpm.data.device_loader import DeviceLoader
from ddpm.data.order import EpochSampler, Flipped, image_of, label_of
from ddpm.runtime.perf import ExecutionPlan


class ImageDataModule(pl.LightningDataModule):
    """Base class: subclasses implement `load()` (the full data set) and may override `check()`."""

    native_size: int | None = None  # the set's own image size (None: images of any size)
    has_labels: bool = True  # the set yields (image, label); with data.labels=true batches are (images, labels)

    def __init__(self, root: str, image_size: int, channels: int, batch_size: int, val_fraction: float,
                 random_flip: bool, num_workers: int, split_seed: int, pin_memory: bool, name: str,
                 shuffle_seed: int | None, fit: str = "resize", labels: bool = False,
                 sigma_data: float | str | None = "auto") -> None:
        """fit: "pad" or "resize" when the set's images are smaller than image_size. labels: batches are
        (images, labels) for a class-conditional model (model.num_classes set). sigma_data: the training images'
        standard deviation as the network sees them, for EDM's preconditioning; "auto": `pixel_std()` measures
        it when a run needs it. Configs of older runs are upgraded by `compat.upgrade_data_config`."""
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if fit not in FITS:
            raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}")
        if not (sigma_data in (None, "auto") or (isinstance(sigma_data, (int, float)) and sigma_data > 0)):
            raise ValueError(f"data.sigma_data must be auto or a number > 0, got {sigma_data!r}")
        self.sigma_data = sigma_data
        self.root, self.name, self.fit = Path(root), name, fit
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.val_fraction, self.random_flip, self.num_workers = val_fraction, random_flip, num_workers
        self.split_seed, self.pin_memory, self.labels = split_seed, pin_memory, bool(labels)
        self.shuffle_seed = int(shuffle_seed if shuffle_seed is not None else torch.randint(2**31, ()).item())
        self.plan: ExecutionPlan | None = None  # the execution plan, handed over by the module at setup
        self._resume_batches = 0  # batches of the current epoch already trained on (set when resuming)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def load(self) -> Dataset:
        raise NotImplementedError

    def check(self) -> None:
        """Raise `DataError` if the data can't be loaded; called before training starts."""
        if self.labels and not self.has_labels:
            raise DataError(f"{self.name} has no class labels, which a class-conditional model (model.num_classes) "
                            "needs: use a labelled data set (digits, mnist, fashion_mnist, cifar10, image_folder with "
                            "one sub-folder per class) or an unconditional model (model.num_classes=null)")
        if self.fit == "pad" and self.native_size is not None and self.native_size > self.image_size:
            raise DataError(f"{self.name}: data.fit=pad needs data.image_size >= the native {self.native_size}px; "
                            "use data.fit=resize to shrink the images")

    # ----- evaluation at the native size ---------------------------------------------------------
    @property
    def padded(self) -> bool:
        return self.fit == "pad" and self.native_size is not None and self.native_size < self.image_size

    @property
    def eval_size(self) -> int:
        """The size samples are judged at (FID, grids): the native size of padded images, else image_size."""
        return self.native_size if self.padded else self.image_size  # type: ignore[return-value]

    def to_eval(self, images: Tensor) -> Tensor:
        """(B, C, image_size, image_size) -> (B, C, eval_size, eval_size): padded images crop back exactly."""
        return crop_to_native(images, self.eval_size) if self.padded else images

    # ----- splits ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self.load()
        n_val = max(1, round(len(full) * self.val_fraction))  # type: ignore[arg-type]
        split = torch.Generator().manual_seed(self.split_seed)
        self.train_set, self.val_set = random_split(full, [len(full) - n_val, n_val], generator=split)  # type: ignore[arg-type]

    def split(self, name: str) -> Dataset:
        """The un-augmented train or val split, items as the data set yields them (with labels if any)."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        self.setup()
        return self.train_set if name == "train" else self.val_set  # type: ignore[return-value]

    def labeled_images(self, name: str, batch_size: int = 512) -> tuple[Tensor, Tensor | None]:
        """A split's images at eval_size as uint8 (N, C, H, W), as 8-bit files hold them, and labels (N,) or None."""
        images, labels = [], []
        loader = DataLoader(self.split(name), batch_size=batch_size, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(0))  # no draw from the global RNG
        for batch in loader:
            labeled = isinstance(batch, (list, tuple)) and len(batch) > 1
            x, y = (batch[0], batch[1]) if labeled else (image_of(batch), None)
            images.append(((self.to_eval(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
            labels.append(y)
        has_labels = all(y is not None for y in labels)
        return torch.cat(images), (torch.cat(labels).long() if has_labels else None)

    def pixel_std(self, batch_size: int = 1024) -> float:
        """The standard deviation of the training split's pixels as the network sees them (in [-1, 1], fitted
        to image_size; padding included), over all pixels: EDM's sigma_data. Float64 sums, one pass."""
        total = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares
        loader = DataLoader(self.split("train"), batch_size=batch_size, num_workers=self.num_workers)
        for batch in loader:
            x = image_of(batch).double()
            total += torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), x.pow(2).sum()])
        n, s1, s2 = total.tolist()
        return math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0))

    # ----- loaders ---------------------------------------------------------------------------------
    def _loader(self, ds: Dataset, sampler: EpochSampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0,
                          # worker seeds from this generator, not the global RNG: a resumed run's RNG stream then
                          # matches the uninterrupted run's however often loaders are (re)created
                          generator=torch.Generator().manual_seed(self.shuffle_seed))

    def split_labels(self, name: str) -> Tensor:
        """A split's labels (N,) long, read from the data set's label table where it has one (no image decoded)."""
        split = self.split(name)
        base, idx = getattr(split, "dataset", split), getattr(split, "indices", None)
        table = getattr(base, "targets", None)
        if table is None and isinstance(base, TensorDataset) and len(base.tensors) > 1:
            table = base.tensors[1]
        if table is None:
            return torch.stack([label_of(split[i]) for i in range(len(split))])  # type: ignore[arg-type]
        table = torch.as_tensor(table, dtype=torch.long)
        return table[torch.as_tensor(idx, dtype=torch.long)] if idx is not None else table

    def num_classes(self) -> int:
        """The number of classes of the training split (labels 0..K-1)."""
        return int(self.split_labels("train").max()) + 1

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        train = Flipped(self.split("train"), self.labels)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if len(train) // world < self.batch_size:
            raise DataError(f"{self.name}: {len(train)} training images, over {world} process(es) fewer than "
                            f"data.batch_size={self.batch_size} each")
        sampler = EpochSampler(len(train), self.shuffle_seed, rank, world, flip_p=0.5 if self.random_flip else 0.0)
        sampler.skip, self._resume_batches = self._resume_batches * self.batch_size, 0
        plan = self.plan
        nbytes = len(train) * self.channels * self.image_size ** 2 * 4  # float32
        if plan is not None and plan.holds_data(nbytes):
            labels = self._labels_on(plan.device) if self.labels else None
            return DeviceLoader(self._images_on(plan.device), sampler, self.batch_size, labels)
        return self._loader(train, sampler, drop_last=True)  # fixed batches per epoch: exact resume

    def _images_on(self, device: torch.device) -> Tensor:
        """The un-augmented training split as one float tensor (N, C, H, W) on `device` (decoded once)."""
        loader = DataLoader(Flipped(self.split("train")), batch_size=1024, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(0))  # no draw from the global RNG
        return torch.cat([x.float() for x in loader]).to(device)

    def _labels_on(self, device: torch.device) -> Tensor:
        """The training split's labels (N,) on `device`."""
        return self.split_labels("train").to(device)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Flipped(self.split("val"), self.labels), None, drop_last=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: where in the epoch training stands (batches = optimizer steps x accumulation)."""
        if self.trainer is None or self.train_set is None:
            return {}
        per_epoch = len(self.train_set) // self.trainer.world_size // self.batch_size  # type: ignore[arg-type]
        done = self.trainer.global_step * self.trainer.accumulate_grad_batches
        return {"batches_into_epoch": done % per_epoch, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("batch_size") == self.batch_size:
            self._resume_batches = int(state["batches_into_epoch"])


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels); no download."""

    native_size = 8

    def load(self) -> Dataset:
        if self.channels != 1:
            raise DataError("digits is greyscale: set data.channels=1")
        return digits(self.image_size, self.fit)


class SyntheticDataModule(ImageDataModule):
    """Random images in [-1, 1] of any shape, for throughput runs where no data set is present."""

    has_labels = False

    def __init__(self, num_images: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_images, self.seed = num_images, seed

    def load(self) -> Dataset:
        return synthetic(self.num_images, self.channels, self.image_size, self.seed)


class TorchvisionDataModule(ImageDataModule):
    """MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own loaders (see `TorchvisionFiles`)."""

    def __init__(self, dataset: str, download: bool = True, source_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.files = TorchvisionFiles(dataset, self.root, download, source_dir)
        self.dataset, self.native_size = dataset, self.files.native_size

    def prepare_data(self) -> None:
        self.files.ensure()

    def check(self) -> None:
        super().check()
        self.prepare_data()

    def load(self) -> Dataset:
        return self.files.load(pil_transform(self.image_size, self.native_size, self.fit, self.channels))


class ImageFolderDataModule(ImageDataModule):
    """Any folder of images (searched recursively), resized and center-cropped to `image_size`; unreadable files
    are found at set-up (`skip_unreadable`: train without them)."""

    def __init__(self, skip_unreadable: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_unreadable = skip_unreadable
        self._files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = image_files(self.root, self.skip_unreadable)
        return self._files

    def check(self) -> None:
        super().check()
        if self.fit != "resize":
            raise DataError("image_folder: files of any size are resized and center-cropped; set data.fit=resize")
        if self.channels not in (1, 3):
            raise DataError("image_folder supports data.channels=1 (greyscale) or 3 (RGB)")
        self.files()

    def load(self) -> Dataset:
        self.check()
        labels = class_folders(self.root, self.files()) if self.labels else None
        return ImageFiles(self.files(), pil_transform(self.image_size, None, "resize", self.channels),
                          "L" if self.channels == 1 else "RGB", labels)
