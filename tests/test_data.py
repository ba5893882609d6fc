"""Data modules: range [-1, 1], splits, flips, real loaders on files the tests write, and clear errors."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddpm.data import DataError, DigitsDataModule, ImageFolderDataModule, TorchvisionDataModule
from tests.conftest import compose

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _first_batch(dm, split="train"):
    dm.check()
    dm.setup("fit")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return next(iter(loader))


def test_digits_from_config_are_in_minus_one_one():
    dm = instantiate(compose(["data=digits"]).data)
    x = _first_batch(dm)
    assert x.shape == (128, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    # 17 grey levels 0..16 map exactly onto k/8 - 1
    levels = torch.unique(x)
    torch.testing.assert_close(levels, torch.arange(17) / 8.0 - 1)


def test_split_is_seeded_and_disjoint():
    a = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, val_fraction=0.1, split_seed=3)
    b = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, val_fraction=0.1, split_seed=3)
    a.setup(), b.setup()
    ia, ib = a.train_set.base.indices, b.train_set.base.indices
    assert ia == ib
    assert set(ia).isdisjoint(a.val_set.base.indices)
    assert len(ia) + len(a.val_set) == 1797 and len(a.val_set) == 180


def test_random_flip_mirrors_images():
    dm = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, random_flip=True)
    dm.setup()
    torch.manual_seed(0)
    raw = dm.train_set.base[0][0]
    seen = {bool(torch.equal(dm.train_set[0], raw.flip(-1))) for _ in range(50)}
    assert seen == {True, False}


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(folder: Path, n: int = 40, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, size=(count, 28, 28))
        images[0] = 0
        images[0, 0, 0] = 255
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, size=count), gz)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_torchvision_loader_reads_idx_files_from_a_source_dir(tmp_path, dataset):
    _fake_mnist(tmp_path / "src")
    cfg = compose([f"data={dataset}", f"paths.data_dir={tmp_path / 'data'}", f"data.source_dir={tmp_path / 'src'}",
                   "data.download=false", "data.num_workers=0", "data.batch_size=8", "data.pin_memory=false"])
    dm = instantiate(cfg.data)
    x = _first_batch(dm)
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    raw = tmp_path / "data" / ("MNIST" if dataset == "mnist" else "FashionMNIST") / "raw"
    assert (raw / "train-images-idx3-ubyte").exists()
    native = TorchvisionDataModule(dataset, root=str(tmp_path / "data"), image_size=28, channels=1, batch_size=4,
                                   download=False)
    native.setup()
    full = native.train_set.base.dataset
    img = full[0][0]
    assert img.shape == (1, 28, 28) and img[0, 0, 0] == 1.0 and img[0, 0, 1] == -1.0  # 255 -> 1, 0 -> -1


def test_missing_data_offline_names_folder_and_files(tmp_path):
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), image_size=32, channels=1, batch_size=4, download=False)
    with pytest.raises(DataError) as err:
        dm.check()
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg and "download" in msg


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(datasets.FashionMNIST, "download", offline)
    dm = TorchvisionDataModule("fashion_mnist", root=str(tmp_path), image_size=32, channels=1, batch_size=4,
                               download=True, source_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="the download failed .*Network is unreachable.*dataset-fashion-mnist"):
        dm.check()


def test_corrupt_idx_file_is_reported(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), image_size=28, channels=1, batch_size=4, download=False)
    with pytest.raises(DataError, match="corrupt"):
        dm.setup()


def test_cifar10_loader_on_written_batches(tmp_path, monkeypatch):
    import pickle

    from torchvision import datasets

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8), "labels": list(range(10))}
        pickle.dump(batch, open(folder / name, "wb"))
    pickle.dump({"label_names": [str(i) for i in range(10)]}, open(folder / "batches.meta", "wb"))
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # the md5s are those of the real files
    cfg = compose(["data=cifar10", f"paths.data_dir={tmp_path}", "data.download=false", "data.num_workers=0",
                   "data.batch_size=4", "data.val_fraction=0.1"])
    x = _first_batch(instantiate(cfg.data))
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_image_folder_resizes_and_crops(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i, size in enumerate([(40, 30), (30, 50), (64, 64)]):
        Image.new("RGB", size, (255, 0, i * 100)).save(tmp_path / "a" / f"img{i}.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "a" / "b" / "grey.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = compose(["data=image_folder", f"data.root={tmp_path}", "data.image_size=16", "data.num_workers=0",
                   "data.batch_size=2", "data.val_fraction=0.25", "data.pin_memory=false"])
    dm = instantiate(cfg.data)
    x = _first_batch(dm)
    assert x.shape == (2, 3, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    assert len(dm.train_set) + len(dm.val_set) == 4


def test_image_folder_errors(tmp_path):
    empty = ImageFolderDataModule(root=str(tmp_path), image_size=8, channels=3, batch_size=2)
    with pytest.raises(DataError, match="no images"):
        empty.check()
    missing = ImageFolderDataModule(root=str(tmp_path / "nope"), image_size=8, channels=3, batch_size=2)
    with pytest.raises(DataError, match="is not a folder"):
        missing.check()
    (tmp_path / "bad.png").write_bytes(b"not really a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, channels=3, batch_size=2, val_fraction=0.5)
    dm.setup()
    with pytest.raises(DataError, match="could not read image .*bad.png"):
        [dm.train_set[0], dm.val_set[0]]


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_debian_package(tmp_path):
    """The real torchvision FashionMNIST loader on the real files of Debian's dataset-fashion-mnist."""
    cfg = compose(["data=fashion_mnist", f"paths.data_dir={tmp_path}", "data.download=false", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    x = _first_batch(dm)
    assert x.shape == (128, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert len(dm.train_set) + len(dm.val_set) == 60_000
    assert abs(x.mean().item() - (2 * 0.286 - 1)) < 0.1  # Fashion-MNIST's pixel mean is 0.286


def _synthetic(on_device, random_flip=False, **extra):
    cfg = compose(["data=synthetic", "data.num_images=1100", "data.batch_size=100", "data.num_workers=0",
                   f"data.on_device={on_device}", f"data.random_flip={random_flip}",
                   *[f"data.{k}={v}" for k, v in extra.items()]])
    dm = instantiate(cfg.data)
    dm.setup()
    return dm


def _epochs(loader, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        out.append(torch.stack(list(loader)))
    return out


def test_on_device_loader_yields_the_dataloader_batches():
    """data.on_device: the same batches, in the same order, epoch after epoch, as the DataLoader path (here with
    the CPU as the device), and the same batches left after a resume mid-epoch (the sampler's skip)."""
    from ddpm.data import DeviceLoader

    plain, resident = _synthetic(False), _synthetic(True)
    fast = resident.train_dataloader()
    assert isinstance(fast, DeviceLoader) and len(fast) == len(plain.train_dataloader()) == 10
    for a, b in zip(_epochs(plain.train_dataloader()), _epochs(fast)):
        assert torch.equal(a, b)
    plain.load_state_dict({"batches_into_epoch": 3, "batch_size": 100})
    resident.load_state_dict({"batches_into_epoch": 3, "batch_size": 100})
    (a,), (b,) = _epochs(plain.train_dataloader(), [1]), _epochs(resident.train_dataloader(), [1])
    assert len(b) == 7 and torch.equal(a, b)


def test_on_device_flips_are_seeded_by_epoch_and_survive_a_resume():
    """Each image is itself or its mirror, about half mirrored (1000 draws of p = 0.5: 6 sigma = 0.095), other
    flips in another epoch; a resumed loader flips the rest of the epoch as the uninterrupted one did."""
    flipped, straight = _synthetic(True, random_flip=True), _synthetic(True)
    loader = straight.train_dataloader()
    mirrored_ids: list[dict[int, bool]] = []
    for f, s, epoch in zip(_epochs(flipped.train_dataloader()), _epochs(loader), (0, 1)):
        mirrored = torch.stack([(a == b.flip(-1)).flatten(1).all(1) for a, b in zip(f, s)]).flatten()
        same = torch.stack([(a == b).flatten(1).all(1) for a, b in zip(f, s)]).flatten()
        assert bool((mirrored | same).all()) and abs(mirrored.float().mean().item() - 0.5) < 0.095
        loader.sampler.set_epoch(epoch)
        mirrored_ids.append(dict(zip(list(loader.sampler), mirrored.tolist())))  # image index -> mirrored
    common = mirrored_ids[0].keys() & mirrored_ids[1].keys()
    assert len(common) > 900 and any(mirrored_ids[0][i] != mirrored_ids[1][i] for i in common)
    f1 = _epochs(flipped.train_dataloader(), [1])[0]
    flipped.load_state_dict({"batches_into_epoch": 4, "batch_size": 100})
    (rest,) = _epochs(flipped.train_dataloader(), [1])
    assert torch.equal(rest, f1[4:])


def test_on_device_auto_holds_the_split_on_a_gpu_within_the_budget():
    from types import SimpleNamespace

    def resident(on_device, device, gib):
        dm = _synthetic(on_device, on_device_max_gib=gib)  # 1045 training images of 3x32x32 floats = 12 MiB
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        return dm._resident_device()

    assert resident("auto", "cuda", 2.0) == torch.device("cuda")
    assert resident("auto", "cuda", 0.01) is None  # over the budget
    assert resident("auto", "cpu", 2.0) is None  # the CPU default stays the DataLoader path
    assert resident(True, "cpu", 0.0) == torch.device("cpu") and resident(False, "cuda", 2.0) is None
    with pytest.raises(Exception, match="on_device must be true, false or auto"):
        _synthetic("gpu")


def test_trainer_fit_draws_on_device_batches_and_advances_their_epoch():
    """Through Trainer.fit: the batches come from the DeviceLoader, and Lightning's set_epoch reaches its sampler
    (2 batches an epoch, 5 steps: the third epoch), so each epoch has its own order."""
    import lightning.pytorch as pl

    from ddpm.data import DeviceLoader
    from ddpm.train import build_module

    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "data=synthetic", "data.num_images=300",
                   "data.image_size=8", "data.channels=1", "data.batch_size=100", "data.on_device=true"])
    module, data = build_module(cfg), instantiate(cfg.data)
    seen = []
    module.on_train_batch_start = lambda batch, i: seen.append(batch.clone())
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    loader = trainer.train_dataloader
    assert isinstance(loader, DeviceLoader) and loader.sampler.epoch == 2 and len(seen) == 5
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        epochs.append(torch.stack(list(loader)))
    assert torch.equal(torch.stack(seen), torch.cat(epochs)[:5]) and not torch.equal(epochs[0], epochs[1])
