"""LightningDataModules that yield image batches (B, C, H, W) scaled to [-1, 1].

Every data set goes through `ImageDataModule`: a full data set, a seeded train/val split, optional
random horizontal flips on the training part, and loaders. Subclasses only say how to load the images.
`check()` runs before any training so a missing or corrupt data set fails with one message that says
what to do, instead of a traceback from deep inside a worker.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, random_split
from torchvision import transforms as T

from .config import UserError


class DataError(UserError, RuntimeError):
    """A data set is missing, incomplete or unreadable; the message says what to do."""


class _Flip(Dataset):
    """Random horizontal flip applied on top of a data set that yields tensors (or (tensor, label))."""

    def __init__(self, base: Dataset, p: float) -> None:
        self.base, self.p = base, p

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tensor:
        x = image_of(self.base[i])
        return x.flip(-1) if torch.rand(()) < self.p else x


def image_of(item) -> Tensor:
    """Data sets yield an image or (image, label); the diffusion only needs the image."""
    return item[0] if isinstance(item, (tuple, list)) else item


class _Images(Dataset):
    """Drops labels so every batch is a plain image tensor."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tensor:
        return image_of(self.base[i])


def to_minus_one_one(image_size: int, native_size: int, channels: int) -> T.Compose:
    """PIL image -> tensor in [-1, 1]; resized only when `image_size` differs from the native size."""
    steps: list = [T.Resize(image_size, antialias=True), T.CenterCrop(image_size)] if image_size != native_size else []
    steps += [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)]
    return T.Compose(steps)


class EpochSampler(DistributedSampler):
    """A random order that depends on (seed, epoch) alone, so a resumed run sees exactly the batches the
    uninterrupted run would have; `skip` drops this rank's first indices once (resuming mid-epoch).

    With several processes, rank r takes every world-th index of the shared order (the tail that does not
    divide evenly is dropped, as with drop_last). A DistributedSampler only so that Lightning does not wrap
    it in another one (which would index past a shortened resumed epoch); it calls `set_epoch` at every epoch
    start. `__len__` stays the full per-rank length, so Lightning's restored count of the epoch's batches matches.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:  # no super(): no dataset
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        mine = order[self.rank:len(self) * self.world_size:self.world_size]
        skip, self.skip = self.skip, 0
        return iter(mine[skip:])

    def __len__(self) -> int:
        return self.n // self.world_size


class DeviceLoader:
    """Training batches indexed out of the whole training split, held on the training device.

    For data sets that fit in GPU memory: no workers, no collate, no host-to-device copy per step. The
    epoch's order (the EpochSampler's, resume skip included: the same batches as the DataLoader path) and
    the flips go to the device once per epoch, in one non-blocking copy; each batch is then an index_select
    on the device, which never makes the host wait for the GPU. Flips are drawn per (seed, epoch, image)
    on the host, so a resumed run flips what the uninterrupted one would. Lightning finds `sampler` and
    calls its set_epoch, as for a DataLoader."""

    def __init__(self, images: Tensor, sampler: EpochSampler, batch_size: int, flip_p: float, flip_seed: int) -> None:
        self.images = images  # (N, C, H, W) on the device, already in [-1, 1]
        self.sampler, self.batch_size, self.flip_p, self.flip_seed = sampler, batch_size, flip_p, flip_seed

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _to_device(self, x: Tensor) -> Tensor:
        if self.images.device.type != "cuda":
            return x.to(self.images.device)
        # non-blocking from pinned memory; torch's pinned-memory cache keeps the block until the copy is done
        return x.pin_memory().to(self.images.device, non_blocking=True)

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)  # this rank's indices, skip applied
        n_batches = len(order) // self.batch_size  # drop_last: fixed batches per epoch, exact resume
        batches = self._to_device(order[: n_batches * self.batch_size].view(n_batches, self.batch_size))
        flips = None
        if self.flip_p > 0:
            g = torch.Generator().manual_seed(self.flip_seed + 1_000_003 * self.sampler.epoch)
            flips = self._to_device(torch.rand(len(self.images), generator=g) < self.flip_p)  # (N,): per image
        for idx in batches:  # (B,) rows of the device tensor: views, no sync
            x = self.images.index_select(0, idx)
            if flips is not None:
                x = torch.where(flips.index_select(0, idx)[:, None, None, None], x.flip(-1), x)
            yield x


class ImageDataModule(pl.LightningDataModule):
    """Base class: subclasses implement `load()` (the full data set) and may override `check()`."""

    native_size: int = 0

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int,
        batch_size: int,
        val_fraction: float = 0.05,
        random_flip: bool = False,
        num_workers: int = 0,
        split_seed: int = 0,
        pin_memory: bool = False,
        name: str = "",
        shuffle_seed: int = 0,
        on_device: bool | str = False,
        on_device_max_gib: float = 0.0,
    ) -> None:
        """on_device: hold the training split on the training device (DeviceLoader): True, False, or "auto" =
        when training on a GPU and the split's float32 images take at most on_device_max_gib."""
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if on_device not in (True, False, "auto"):
            raise ValueError(f"data.on_device must be true, false or auto, got {on_device!r}")
        self.on_device, self.on_device_max_gib = on_device, on_device_max_gib
        self.root = Path(root)
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.val_fraction, self.random_flip, self.num_workers = val_fraction, random_flip, num_workers
        self.split_seed, self.pin_memory, self.name = split_seed, pin_memory, name
        self.shuffle_seed = int(shuffle_seed if shuffle_seed is not None else torch.randint(2**31, ()).item())
        self._resume_batches = 0  # batches of the current epoch already trained on (set when resuming)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def load(self) -> Dataset:
        raise NotImplementedError

    def check(self) -> None:
        """Raise `DataError` if the data can't be loaded; called before training starts."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self.load()
        n_val = max(1, round(len(full) * self.val_fraction))  # type: ignore[arg-type]
        split = torch.Generator().manual_seed(self.split_seed)
        train, val = random_split(full, [len(full) - n_val, n_val], generator=split)  # type: ignore[arg-type]
        self.train_set = _Flip(train, 0.5) if self.random_flip else _Images(train)
        self.val_set = _Images(val)

    def split(self, name: str) -> Dataset:
        """The un-augmented train or val split, items as the data set yields them (with labels if any)."""
        self.setup()
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        wrapped = self.train_set if name == "train" else self.val_set
        return wrapped.base  # type: ignore[union-attr]

    def labeled_images(self, name: str, batch_size: int = 512) -> tuple[Tensor, Tensor | None]:
        """All images of a split as uint8 (N, C, H, W), as 8-bit files would hold them, and labels (N,) or None."""
        images, labels = [], []
        for batch in DataLoader(self.split(name), batch_size=batch_size, num_workers=self.num_workers):
            x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
            images.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
            labels.append(y)
        has_labels = all(y is not None for y in labels)
        return torch.cat(images), (torch.cat(labels).long() if has_labels else None)

    def _loader(self, ds: Dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # worker seeds come from this generator, not the global RNG: a resumed run's RNG stream then
            # matches the uninterrupted run's however often loaders are (re)created
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        n = len(self.train_set)  # type: ignore[arg-type]
        rank, world = self._rank_and_world()
        if n // world < self.batch_size:
            raise DataError(f"{self.name}: {n} training images, over {world} process(es) fewer than "
                            f"data.batch_size={self.batch_size} each")
        sampler = EpochSampler(n, self.shuffle_seed, rank, world)
        sampler.skip, self._resume_batches = self._resume_batches * self.batch_size, 0
        device = self._resident_device()
        if device is not None:
            return DeviceLoader(self._images_on(device), sampler, self.batch_size,
                                flip_p=0.5 if self.random_flip else 0.0, flip_seed=self.shuffle_seed)
        return self._loader(self.train_set, sampler, drop_last=True)  # fixed batches per epoch: exact resume

    def _resident_device(self) -> torch.device | None:
        """The device to hold the training split on, or None for the DataLoader path (see on_device)."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.on_device != "auto":
            return device if self.on_device else None
        gib = len(self.train_set) * self.channels * self.image_size ** 2 * 4 / 2**30  # type: ignore[arg-type]
        return device if device.type == "cuda" and gib <= self.on_device_max_gib else None

    def _images_on(self, device: torch.device) -> Tensor:
        """The un-augmented training split as one float tensor (N, C, H, W) on `device` (decoded once)."""
        # its own generator: iterating a DataLoader draws a seed, and a draw from the global RNG here would
        # shift a resumed run's t and eps away from the uninterrupted run's
        images = DataLoader(_Images(self.split("train")), batch_size=1024, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(0))
        return torch.cat([x.float() for x in images]).to(device)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return self._loader(self.val_set, None, drop_last=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: where in the epoch training stands (batches = optimizer steps x accumulation)."""
        trainer = self.trainer
        if trainer is None or self.train_set is None:
            return {}
        per_epoch = len(self.train_set) // trainer.world_size // self.batch_size  # type: ignore[arg-type]
        done = trainer.global_step * trainer.accumulate_grad_batches
        return {"batches_into_epoch": done % per_epoch, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("batch_size") == self.batch_size:
            self._resume_batches = int(state["batches_into_epoch"])


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels 0..16); no download."""

    native_size = 8

    def load(self) -> Dataset:
        from sklearn.datasets import load_digits

        if self.channels != 1:
            raise DataError("digits is greyscale: set data.channels=1")
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None]  # (N, 1, 8, 8) in [0, 16]
        x = images / 16.0 * 2.0 - 1.0
        if self.image_size != self.native_size:
            x = torch.nn.functional.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return torch.utils.data.TensorDataset(x, torch.as_tensor(digits.target, dtype=torch.long))


class SyntheticDataModule(ImageDataModule):
    """Random images in [-1, 1] of any shape, for throughput runs where no data set is present."""

    def __init__(self, num_images: int = 4096, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_images, self.seed = num_images, seed

    def load(self) -> Dataset:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(self.num_images, self.channels, self.image_size, self.image_size, generator=g) * 2 - 1
        return torch.utils.data.TensorDataset(x)


class TorchvisionDataModule(ImageDataModule):
    """MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own loaders.

    `download=True` fetches the files when online. Offline, files present under `root` are used as
    they are; `source_dir` may point at a local copy of the raw files (e.g. Debian's
    dataset-fashion-mnist in /usr/share/datasets/fashion-mnist), which is copied into torchvision's layout.
    """

    DATASETS = {"mnist": ("MNIST", 28), "fashion_mnist": ("FashionMNIST", 28), "cifar10": ("CIFAR10", 32)}

    def __init__(self, dataset: str, download: bool = True, source_dir: str | None = None, **kwargs) -> None:
        if dataset not in self.DATASETS:
            raise ValueError(f"unknown torchvision data set {dataset!r}; choose one of {sorted(self.DATASETS)}")
        super().__init__(**kwargs)
        self.dataset, self.download, self.source_dir = dataset, download, source_dir
        self.native_size = self.DATASETS[dataset][1]

    @property
    def _cls(self):
        import torchvision.datasets as tvd

        return getattr(tvd, self.DATASETS[self.dataset][0])

    def _expected(self) -> tuple[Path, list[str]]:
        """The folder torchvision reads and the files it needs there."""
        cls = self._cls
        if self.dataset == "cifar10":
            return self.root / cls.base_folder, [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return self.root / cls.__name__ / "raw", [name.removesuffix(".gz") for name, _ in cls.resources]

    def _import_source(self) -> None:
        """Copy (and gunzip) raw idx files from `source_dir` into torchvision's raw folder."""
        if not self.source_dir or self.dataset == "cifar10":
            return
        folder, files = self._expected()
        src = Path(self.source_dir)
        for name in files:
            if (folder / name).exists():
                continue
            for candidate in (src / name, src / f"{name}.gz"):
                if candidate.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    opener = gzip.open if candidate.suffix == ".gz" else open
                    with opener(candidate, "rb") as fin, open(folder / name, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    break

    def prepare_data(self) -> None:
        self._import_source()
        folder, files = self._expected()
        if all((folder / f).exists() for f in files):
            return
        if not self.download:
            raise self._missing(folder, files, "data.download=false")
        try:
            self._cls(str(self.root), train=True, download=True)
            self._cls(str(self.root), train=False, download=True)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors
            raise self._missing(folder, files, f"the download failed ({type(err).__name__}: {err})") from err

    def _missing(self, folder: Path, files: Sequence[str], why: str) -> DataError:
        absent = [f for f in files if not (folder / f).exists()]
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if self.dataset == "fashion_mnist" else ""
        return DataError(
            f"{self.dataset}: files missing in {folder.resolve()}: {', '.join(absent)}; {why}. "
            f"Put the files there, or set data.source_dir to a folder holding them{hint}, or run once online "
            f"with data.download=true."
        )

    def check(self) -> None:
        self.prepare_data()

    def load(self) -> Dataset:
        tf = to_minus_one_one(self.image_size, self.native_size, self.channels)
        try:
            train = self._cls(str(self.root), train=True, download=False, transform=tf)
        except Exception as err:
            folder, _ = self._expected()
            raise DataError(
                f"{self.dataset}: could not read the files in {folder.resolve()} ({type(err).__name__}: {err}). "
                "They may be truncated or corrupt: delete them and download again."
            ) from err
        return train


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class _ImageFiles(Dataset):
    def __init__(self, files: list[Path], transform: T.Compose, mode: str) -> None:
        self.files, self.transform, self.mode = files, transform, mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as img:
                return self.transform(img.convert(self.mode))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"could not read image {self.files[i]}: {err}; remove or replace the file") from err


class ImageFolderDataModule(ImageDataModule):
    """Any folder of images (searched recursively), resized and center-cropped to `image_size`."""

    def _files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(f"image_folder: {self.root.resolve()} is not a folder; set data.root to a folder of images")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(
                f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root.resolve()}; set data.root"
            )
        return files

    def check(self) -> None:
        self._files()

    def load(self) -> Dataset:
        if self.channels not in (1, 3):
            raise DataError("image_folder supports data.channels=1 (greyscale) or 3 (RGB)")
        tf = T.Compose([T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size), T.ToTensor(),
                        T.Normalize([0.5] * self.channels, [0.5] * self.channels)])
        return _ImageFiles(self._files(), tf, "L" if self.channels == 1 else "RGB")
