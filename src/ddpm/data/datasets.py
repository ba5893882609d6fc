"""Where images come from: scikit-learn's digits, torchvision's MNIST / Fashion-MNIST / CIFAR-10, folders of
image files, random tensors; and how an image of another size is fitted to the network's `image_size`.

Fitting (`data.fit`): `pad` zero-pads the image (background -1 after scaling) so that samples crop back to the
exact native size (FID against the original images, no blur); `resize` resamples (antialiased) and
center-crops. Every image ends as a float tensor (C, H, W) in [-1, 1].
"""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms as T

from ddpm.errors import UserError

log = logging.getLogger(__name__)

FITS = ("pad", "resize")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(UserError, RuntimeError):
    """A data set is missing, incomplete or unreadable; the message says what to do."""


def pad_amounts(native: int, size: int) -> tuple[int, int]:
    """(before, after) pixels of padding per side that centre a native image in size (the extra one after)."""
    total = size - native
    return total // 2, total - total // 2


def fit_tensor(x: Tensor, size: int, fit: str) -> Tensor:
    """(N, C, h, w) in [-1, 1] -> (N, C, size, size): padded with -1 (zeros before scaling) or resized."""
    native = x.shape[-1]
    if native == size:
        return x
    if fit == "pad":
        before, after = pad_amounts(native, size)
        return torch.nn.functional.pad(x, (before, after, before, after), value=-1.0)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def pil_transform(size: int, native: int | None, fit: str, channels: int) -> T.Compose:
    """PIL image -> tensor in [-1, 1] at `size` (native: the set's own size, None for images of any size)."""
    steps: list = []
    if native == size:
        pass
    elif fit == "pad" and native is not None:
        before, after = pad_amounts(native, size)
        steps.append(T.Pad((before, before, after, after), fill=0))  # left, top, right, bottom; 0 -> -1 below
    else:
        steps += [T.Resize(size, antialias=True), T.CenterCrop(size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)])


def crop_to_native(x: Tensor, native: int) -> Tensor:
    """Inverse of pad: the centre native x native pixels of (N, C, size, size)."""
    before, _ = pad_amounts(native, x.shape[-1])
    return x[..., before:before + native, before:before + native]


def digits(size: int, fit: str) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 17 grey levels 0..16 -> k/8 - 1), with labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0  # (N, 1, 8, 8)
    return TensorDataset(fit_tensor(x, size, fit), torch.as_tensor(data.target, dtype=torch.long))


def synthetic(n: int, channels: int, size: int, seed: int) -> Dataset:
    """Uniform random images in [-1, 1], for throughput runs."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, channels, size, size, generator=g) * 2 - 1)


class TorchvisionFiles:
    """The files torchvision's MNIST, FashionMNIST, KMNIST and CIFAR10 read, where they are, and how to get them.

    `download=True` fetches them when online; offline, files under `root` are used as they are, and
    `source_dir` may hold the raw idx files (e.g. Debian's dataset-fashion-mnist), copied into torchvision's
    layout."""

    DATASETS = {"mnist": ("MNIST", 28), "fashion_mnist": ("FashionMNIST", 28), "kmnist": ("KMNIST", 28),
                "cifar10": ("CIFAR10", 32)}  # torchvision class, native size

    def __init__(self, dataset: str, root: Path, download: bool, source_dir: str | None) -> None:
        if dataset not in self.DATASETS:
            raise ValueError(f"unknown torchvision data set {dataset!r}; choose one of {sorted(self.DATASETS)}")
        self.dataset, self.root, self.download, self.source_dir = dataset, root, download, source_dir
        self.native_size = self.DATASETS[dataset][1]

    @property
    def cls(self):
        import torchvision.datasets as tvd

        return getattr(tvd, self.DATASETS[self.dataset][0])

    def expected(self) -> tuple[Path, list[str]]:
        """The folder torchvision reads and the files it needs there."""
        cls = self.cls
        if self.dataset == "cifar10":
            return self.root / cls.base_folder, [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return self.root / cls.__name__ / "raw", [name.removesuffix(".gz") for name, _ in cls.resources]

    def import_source(self) -> None:
        """Copy (and gunzip) raw idx files from `source_dir` into torchvision's raw folder."""
        if not self.source_dir or self.dataset == "cifar10":
            return
        folder, files = self.expected()
        for name in files:
            if (folder / name).exists():
                continue
            for candidate in (Path(self.source_dir) / name, Path(self.source_dir) / f"{name}.gz"):
                if candidate.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    opener = gzip.open if candidate.suffix == ".gz" else open
                    with opener(candidate, "rb") as fin, open(folder / name, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    break

    def ensure(self) -> None:
        """The files are present afterwards, or DataError says which are missing and how to get them."""
        self.import_source()
        folder, files = self.expected()
        if all((folder / f).exists() for f in files):
            return
        if not self.download:
            raise self.missing(folder, files, "data.download=false")
        try:
            self.cls(str(self.root), train=True, download=True)
            self.cls(str(self.root), train=False, download=True)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors
            raise self.missing(folder, files, f"the download failed ({type(err).__name__}: {err})") from err

    def missing(self, folder: Path, files: Sequence[str], why: str) -> DataError:
        absent = [f for f in files if not (folder / f).exists()]
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if self.dataset == "fashion_mnist" else ""
        return DataError(f"{self.dataset}: files missing in {folder.resolve()}: {', '.join(absent)}; {why}. Put the "
                         f"files there, or set data.source_dir to a folder holding them{hint}, or run once online "
                         "with data.download=true.")

    def load(self, transform: T.Compose) -> Dataset:
        try:
            return self.cls(str(self.root), train=True, download=False, transform=transform)
        except Exception as err:
            raise DataError(f"{self.dataset}: could not read the files in {self.expected()[0].resolve()} "
                            f"({type(err).__name__}: {err}). They may be truncated or corrupt: delete them and "
                            "download again.") from err


class ImageFiles(Dataset):
    """Image files (greyscale "L" or "RGB"), each through `transform`; with `labels`, items are (image, label)."""

    def __init__(self, files: list[Path], transform: T.Compose, mode: str, labels: list[int] | None = None) -> None:
        self.files, self.transform, self.mode = files, transform, mode
        self.targets = labels  # read by the data module without decoding images

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            x = self.transform(img.convert(self.mode))
        return x if self.targets is None else (x, self.targets[i])


def class_folders(root: Path, files: list[Path]) -> list[int]:
    """torchvision ImageFolder's convention: the class of a file is its first sub-folder under root, classes
    numbered in sorted order. Files directly under root have no class: one DataError names them."""
    parts = [p.relative_to(root).parts for p in files]
    loose = [str(f) for f, pt in zip(files, parts) if len(pt) < 2]
    if loose:
        raise DataError(f"image_folder: data.labels=true needs one sub-folder per class under {root.resolve()}, but "
                        f"{len(loose)} file(s) lie directly in it (e.g. {loose[0]}); move them into class folders")
    names = sorted({pt[0] for pt in parts})
    index = {name: k for k, name in enumerate(names)}
    log.info("image_folder: %d classes: %s", len(names), ", ".join(names[:20]))
    return [index[pt[0]] for pt in parts]


def image_files(root: Path, skip_unreadable: bool) -> list[Path]:
    """Every image file under `root` (recursively) that decodes. Unreadable ones are named in one DataError,
    or skipped with a count in the log when `skip_unreadable`; found at set-up, not mid-training."""
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"image_folder: {root.resolve()} is not a folder; set data.root to a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root.resolve()}; "
                        "set data.root")
    bad = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()  # a full decode: a truncated JPEG passes Image.verify()
        except Exception:  # PIL raises several types for broken files
            bad.append(path)
    if bad and not skip_unreadable:
        raise DataError(f"image_folder: {len(bad)} unreadable image(s): {', '.join(map(str, bad))}; remove or "
                        "replace them, or set data.skip_unreadable=true to train without them")
    if bad:
        log.warning("image_folder: skipping %d unreadable image(s) of %d under %s", len(bad), len(files), root)
    skipped = set(bad)
    return [p for p in files if p not in skipped]
