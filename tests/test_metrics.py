"""Sample-quality metrics: the offline classifier FID, its cache, and its behaviour on real vs bad images."""

import pytest
import torch

from ddpm.core.images import quantize
from ddpm.data import DigitsDataModule
from ddpm.metrics import SampleMetrics
from ddpm.metrics.features import ClassifierFeatures
from ddpm.metrics.inception import InceptionFeatures

FAST_CLASSIFIER = {"steps": 150, "batch_size": 128, "lr": 0.1, "width": 8, "num_features": 32, "seed": 0}


def digits(image_size=8):
    return DigitsDataModule(root=".", image_size=image_size, channels=1, batch_size=64, val_fraction=0.2, name="digits",
                            random_flip=False, num_workers=0, split_seed=0, pin_memory=False, shuffle_seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def prepared(cache):
    m = SampleMetrics(cache_dir=str(cache), classifier=FAST_CLASSIFIER)
    hit = m.prepare(digits())
    return m, hit


@pytest.mark.slow
def test_reference_statistics_are_cached_and_keyed(prepared, cache):
    m, hit = prepared
    assert not hit
    again = SampleMetrics(cache_dir=str(cache), classifier=FAST_CLASSIFIER)
    assert again.prepare(digits()) is True  # same data set, split, size, network: cache hit
    torch.testing.assert_close(again.fid.real_features_sum, m.fid.real_features_sum)
    assert int(again.fid.real_features_num_samples) == len(digits().split("train"))
    bigger = SampleMetrics(cache_dir=str(cache), classifier=FAST_CLASSIFIER)
    assert bigger.prepare(digits(image_size=16)) is False  # a changed image size misses
    other_split = SampleMetrics(cache_dir=str(cache), classifier=FAST_CLASSIFIER, reference_split="val")
    assert other_split.prepare(digits()) is False
    names = sorted(p.name for p in (cache / "fid_reference").iterdir())
    assert any("8px" in n and "_train_" in n for n in names) and any("16px" in n for n in names)


def test_classifier_is_accurate_and_cached(prepared, cache):
    m, _ = prepared
    path = m.classifier_path(digits())
    assert path.parent == cache / "classifiers" and path.name.startswith("digits_8px_1ch_")  # a non-default config
    default_name = "digits_8px_1ch_resnet-preact-v1.pt"
    assert SampleMetrics(cache_dir=str(cache)).classifier_path(digits()).name == default_name  # the default
    from omegaconf import OmegaConf  # as Hydra passes it: a DictConfig; conf/fid's values are the default ones

    from tests.conftest import ROOT
    hydra_default = OmegaConf.load(ROOT / "conf" / "fid" / "classifier.yaml").classifier
    assert SampleMetrics(cache_dir=str(cache), classifier=hydra_default).classifier_path(digits()).name == default_name
    assert SampleMetrics(cache_dir=str(cache), classifier=OmegaConf.create(FAST_CLASSIFIER)).classifier_path(
        digits()) == path
    blob = torch.load(path, weights_only=True)
    assert blob["meta"]["val_accuracy"] > 0.85
    assert isinstance(m.net, ClassifierFeatures) and not m.net.training
    assert not any(p.requires_grad for p in m.net.parameters())


def test_held_out_real_images_score_near_zero_and_noise_scores_high(prepared):
    m, _ = prepared
    dm = digits()
    val, _ = dm.labeled_images("val")
    m.update(val.float() / 127.5 - 1)
    real = m.compute(len(val))
    m.update(torch.rand(len(val), 1, 8, 8) * 2 - 1)
    noise = m.compute(len(val))
    blurred = torch.nn.functional.avg_pool2d(val.float() / 127.5 - 1, 3, stride=1, padding=1)
    m.update(blurred)
    blur = m.compute(len(val))
    assert real["fd_resnet_n"] == len(val)
    assert real["fd_resnet"] < 0.1 * noise["fd_resnet"]
    assert real["fd_resnet"] < blur["fd_resnet"] < noise["fd_resnet"]


def test_samples_are_quantised_like_a_png():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7])
    assert quantize(x).tolist() == [0, 0, 128, 191, 255, 255]
    assert quantize(x).dtype == torch.uint8


def test_classifier_metric_cannot_be_called_fid():
    with pytest.raises(ValueError, match="reserved for the Inception network"):
        SampleMetrics(feature="classifier", name="fid")
    with pytest.raises(ValueError, match="needs feature=inception"):
        SampleMetrics(feature="classifier", inception_score=True)
    assert SampleMetrics(feature="inception").fid_name == "fid"


def test_missing_inception_weights_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        InceptionFeatures(weights_path=str(tmp_path / "missing.pth"))


def test_image_folder_without_labels_asks_for_inception(tmp_path):
    from PIL import Image

    from ddpm.data import ImageFolderDataModule

    for i in range(4):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, channels=1, batch_size=2, val_fraction=0.25,
                               random_flip=False, num_workers=0, split_seed=0, pin_memory=False, name="f",
                               shuffle_seed=0)
    m = SampleMetrics(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="fid.feature=inception"):
        m.prepare(dm)
