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
COMMON = dict(val_fraction=0.1, random_flip=False, num_workers=0, split_seed=0, pin_memory=False, name="test",
              shuffle_seed=0)


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
    a = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, **{**COMMON, "split_seed": 3})
    b = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, **{**COMMON, "split_seed": 3})
    a.setup(), b.setup()
    ia, ib = a.train_set.indices, b.train_set.indices
    assert ia == ib
    assert set(ia).isdisjoint(a.val_set.indices)
    assert len(ia) + len(a.val_set) == 1797 and len(a.val_set) == 180


def test_random_flip_mirrors_images_as_the_sampler_decides():
    """Training items are (index, flip) pairs from the EpochSampler: about half mirrored (p = 0.5; 1617 images,
    6 sigma = 0.075), each image exactly itself or its mirror."""
    from ddpm.data.order import Flipped

    dm = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, val_fraction=0.1, random_flip=True,
                          num_workers=0, split_seed=0, pin_memory=False, name="digits", shuffle_seed=0)
    dm.setup()
    raw = dm.split("train")[0][0]
    train = Flipped(dm.split("train"))
    assert torch.equal(train[(0, True)], raw.flip(-1))
    assert torch.equal(train[(0, False)], raw) and torch.equal(train[0], raw)
    items = list(dm.train_dataloader().sampler)
    assert abs(sum(flip for _, flip in items) / len(items) - 0.5) < 0.075


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


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                             ("kmnist", "KMNIST")])
def test_torchvision_loader_reads_idx_files_from_a_source_dir(tmp_path, dataset, folder):
    """Each idx data set, KMNIST through data=torchvision alone as conf/data/torchvision.yaml says."""
    _fake_mnist(tmp_path / "src")
    option = [f"data={dataset}"] if dataset != "kmnist" else ["data=torchvision", "data.name=kmnist",
                                                               "data.dataset=kmnist", "data.channels=1"]
    cfg = compose([*option, f"paths.data_dir={tmp_path / 'data'}", f"data.source_dir={tmp_path / 'src'}",
                   "data.download=false", "data.num_workers=0", "data.batch_size=8", "data.pin_memory=false"])
    dm = instantiate(cfg.data)
    x = _first_batch(dm)
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    raw = tmp_path / "data" / folder / "raw"
    assert (raw / "train-images-idx3-ubyte").exists()
    native = TorchvisionDataModule(dataset, root=str(tmp_path / "data"), image_size=28, channels=1, batch_size=4,
                                   download=False, **COMMON)
    native.setup()
    full = native.train_set.dataset
    img = full[0][0]
    assert img.shape == (1, 28, 28) and img[0, 0, 0] == 1.0 and img[0, 0, 1] == -1.0  # 255 -> 1, 0 -> -1


def test_missing_data_offline_names_folder_and_files(tmp_path):
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), image_size=32, channels=1, batch_size=4, download=False,
                               **COMMON)
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
                               download=True, source_dir=str(tmp_path / "nowhere"), **COMMON)
    with pytest.raises(DataError, match="the download failed .*Network is unreachable.*dataset-fashion-mnist"):
        dm.check()


def test_corrupt_idx_file_is_reported(tmp_path):
    _fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), image_size=28, channels=1, batch_size=4, download=False,
                               **COMMON)
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


def _folder(root, **kw):
    return ImageFolderDataModule(root=str(root), image_size=8, channels=3, batch_size=2, **{**COMMON, **kw})


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        _folder(tmp_path).check()
    with pytest.raises(DataError, match="is not a folder"):
        _folder(tmp_path / "nope").check()
    with pytest.raises(DataError, match="data.fit=resize"):
        _folder(tmp_path, fit="pad").check()


def test_unreadable_images_are_named_at_setup_or_skipped(tmp_path, caplog):
    """Found before training (not when their batch comes up): a file that is no image, and a truncated JPEG
    (which Image.verify() lets pass); with skip_unreadable, training goes on without them, counted in the log."""
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / f"good{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not really a png")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:300])
    with pytest.raises(DataError, match=r"2 unreadable image\(s\): .*bad.png.*cut.jpg.*skip_unreadable=true"):
        _folder(tmp_path).check()
    dm = _folder(tmp_path, skip_unreadable=True, val_fraction=0.34)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert len(dm.split("train")) + len(dm.split("val")) == 3 and "skipping 2 unreadable image(s) of 5" in caplog.text


def test_pad_is_exact_and_crops_back():
    """data.fit=pad: every native pixel unchanged at its place, a border of exactly -1 (zero before scaling)
    around it; to_eval crops it back to the native size. resize: a blurred (bilinear) image instead."""
    native = DigitsDataModule(root=".", image_size=8, channels=1, batch_size=32, **COMMON)
    padded = DigitsDataModule(root=".", image_size=13, channels=1, batch_size=32, fit="pad", **COMMON)
    x8 = torch.stack([native.split("train")[i][0] for i in range(20)])
    x13 = torch.stack([padded.split("train")[i][0] for i in range(20)])
    assert x13.shape == (20, 1, 13, 13) and padded.eval_size == 8 and padded.padded
    assert torch.equal(x13[..., 2:10, 2:10], x8)  # 5 extra pixels: 2 before, 3 after
    border = torch.ones(13, 13, dtype=torch.bool)
    border[2:10, 2:10] = False
    assert bool((x13[..., border] == -1).all())
    assert torch.equal(padded.to_eval(x13), x8)
    resized = DigitsDataModule(root=".", image_size=16, channels=1, batch_size=32, fit="resize", **COMMON)
    assert resized.eval_size == 16 and torch.equal(resized.to_eval(x13), x13)
    with pytest.raises(DataError, match="fit=pad needs"):
        DigitsDataModule(root=".", image_size=4, channels=1, batch_size=32, fit="pad", **COMMON).check()


def test_mnist_pads_28_to_32_and_judges_at_28(tmp_path):
    _fake_mnist(tmp_path / "src")
    cfg = compose(["data=fashion_mnist", f"paths.data_dir={tmp_path / 'data'}", f"data.source_dir={tmp_path / 'src'}",
                   "data.download=false", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    dm.check()
    x = dm.split("train")[0][0]
    assert cfg.data.fit == "pad" and x.shape == (1, 32, 32) and dm.eval_size == 28
    assert bool((x[:, :2] == -1).all() and (x[:, -2:] == -1).all() and (x[..., :2] == -1).all())
    images, labels = dm.labeled_images("val")
    assert images.shape[-2:] == (28, 28) and images.dtype == torch.uint8 and labels is not None


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_debian_package(tmp_path):
    """The real torchvision FashionMNIST loader on the real files of Debian's dataset-fashion-mnist."""
    cfg = compose(["data=fashion_mnist", f"paths.data_dir={tmp_path}", "data.download=false", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    x = _first_batch(dm)
    assert x.shape == (128, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert len(dm.train_set) + len(dm.val_set) == 60_000
    assert abs(dm.to_eval(x).mean().item() - (2 * 0.286 - 1)) < 0.1  # Fashion-MNIST's pixel mean is 0.286


def _synthetic(on_device, random_flip=False, max_gib=2.0, num_workers=0, device="cpu"):
    from ddpm.runtime.perf import resolve_plan
    from ddpm.tasks.config import to_plain

    cfg = compose(["data=synthetic", "data.num_images=1100", "data.batch_size=100", f"data.num_workers={num_workers}",
                   f"perf.data_on_device={on_device}", f"perf.data_on_device_max_gib={max_gib}",
                   f"data.random_flip={random_flip}", "data.pin_memory=false"])
    dm = instantiate(cfg.data)
    dm.plan = resolve_plan(to_plain(cfg.perf), torch.device(device))
    dm.setup()
    return dm


def _epochs(loader, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        out.append(torch.stack(list(loader)))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_device_loader_yields_the_dataloader_batches_flips_included(workers):
    """The GPU-resident path (simulated with the CPU as the device) and the DataLoader path (with or without
    worker processes) yield the same batches, flips included, epoch after epoch and after a mid-epoch resume:
    both take order and flips from the one EpochSampler."""
    from ddpm.data import DeviceLoader

    plain, resident = _synthetic(False, True, num_workers=workers), _synthetic(True, True)
    fast = resident.train_dataloader()
    assert isinstance(fast, DeviceLoader) and len(fast) == len(plain.train_dataloader()) == 10
    for a, b in zip(_epochs(plain.train_dataloader()), _epochs(fast)):
        assert torch.equal(a, b)
    unflipped = _epochs(_synthetic(True).train_dataloader())
    assert not torch.equal(_epochs(fast)[0], unflipped[0])  # flips happened
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


def test_data_on_device_auto_holds_the_split_on_a_gpu_within_the_budget():
    from ddpm.errors import ConfigError
    from ddpm.runtime.perf import resolve_plan

    nbytes = 1045 * 3 * 32 * 32 * 4  # 1045 training images of 3x32x32 floats = 12 MiB

    def holds(on_device, device, gib):
        perf = {**dict(compose([]).perf), "data_on_device": on_device, "data_on_device_max_gib": gib}
        return resolve_plan(perf, torch.device(device)).holds_data(nbytes)

    assert holds("auto", "cuda", 2.0) and not holds("auto", "cuda", 0.01)  # over the budget
    assert not holds("auto", "cpu", 2.0)  # the CPU default stays the DataLoader path
    assert holds(True, "cpu", 0.0) and not holds(False, "cuda", 2.0)
    with pytest.raises(ConfigError, match="data_on_device must be true, false or auto"):
        holds("gpu", "cpu", 2.0)


def test_trainer_fit_draws_on_device_batches_and_advances_their_epoch():
    """Through Trainer.fit: the batches come from the DeviceLoader, and Lightning's set_epoch reaches its sampler
    (2 batches an epoch, 5 steps: the third epoch), so each epoch has its own order."""
    import lightning.pytorch as pl

    from ddpm.data import DeviceLoader
    from ddpm.tasks.train import build_module

    cfg = compose(["model=unet_tiny", "scheduler.num_timesteps=20", "data=synthetic", "data.num_images=300",
                   "data.image_size=8", "data.channels=1", "data.batch_size=100", "perf.data_on_device=true"])
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
