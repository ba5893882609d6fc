"""The reference side of FID: a fixed seeded subset (its own cache entry, its size logged), published statistics
(an .npz with mu and sigma) giving the same distance as the features they came from, and the long-pass warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.metrics import SampleMetrics
from ddpm.metrics import reference as reference_module
from ddpm.metrics.reference import reference_subset
from tests.test_metrics import FAST_CLASSIFIER, digits


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def metrics(cache, **kw) -> SampleMetrics:
    return SampleMetrics(cache_dir=str(cache), classifier=FAST_CLASSIFIER, **kw)


def fakes() -> torch.Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_a_subset_is_fixed_ordered_and_the_whole_split_by_default():
    images = torch.arange(100.0).reshape(100, 1, 1, 1)
    a, b = reference_subset(images, 10), reference_subset(images, 10)
    assert torch.equal(a, b) and len(a) == 10 and torch.all(a.flatten()[1:] > a.flatten()[:-1])
    assert reference_subset(images, None) is images and reference_subset(images, 500) is images
    with pytest.raises(ConfigError, match="fid.reference_size must be at least 2"):
        reference_subset(images, 1)


def test_reference_size_is_its_own_cache_entry_and_is_reported(cache):
    whole, part = metrics(cache), metrics(cache, reference_size=300)
    whole.prepare(digits())
    assert part.prepare(digits()) is False  # not the whole split's statistics
    assert whole.reference_path(digits()) != part.reference_path(digits())
    assert int(part.fid.real_features_num_samples) == 300
    part.update(fakes())
    out = part.compute(64)
    assert out["fd_resnet_reference_n"] == 300 and out["fd_resnet_n"] == 64
    assert metrics(cache, reference_size=300).prepare(digits()) is True  # the same subset, cached


def test_published_statistics_give_the_distance_of_the_features_they_came_from(cache, tmp_path):
    """mu and sigma written from the computed reference (float64), read back through `fid.reference_stats`:
    the same FID on the same samples, to float rounding."""
    computed = metrics(cache)
    computed.prepare(digits())
    n = computed.fid.real_features_num_samples.double()
    mu = computed.fid.real_features_sum.double() / n
    sigma = (computed.fid.real_features_cov_sum.double() - n * torch.outer(mu, mu)) / (n - 1)
    np.savez(tmp_path / "stats.npz", mu=mu.numpy(), sigma=sigma.numpy())
    published = metrics(cache, reference_stats=str(tmp_path / "stats.npz"))
    published.prepare(digits())
    for m in (computed, published):
        m.update(fakes())
    a, b = computed.compute(64)["fd_resnet"], published.compute(64)
    assert b["fd_resnet"] == pytest.approx(a, rel=1e-6) and "precision" not in b and "fd_resnet_reference_n" not in b


def test_bad_published_statistics_are_one_line(cache, tmp_path):
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(5), sigma=np.eye(5))
    (tmp_path / "text.npz").write_text("not an npz\n")
    for path, message in ((tmp_path / "missing.npz", "does not exist"), (tmp_path / "text.npz", "not an .npz"),
                          (tmp_path / "wrong.npz", r"holds mu \(5,\)")):
        with pytest.raises(ConfigError, match=message):
            metrics(cache, reference_stats=str(path)).prepare(digits())


def test_a_long_reference_pass_on_a_cpu_warns_how_to_cut_it(cache, monkeypatch, caplog):
    monkeypatch.setattr(reference_module, "SLOW_S", 0.0)
    monkeypatch.setattr(reference_module, "SUGGESTED_SIZE", 5)
    with caplog.at_level(logging.WARNING, logger="ddpm.metrics.reference"):
        reference_module.feature_pass(torch.zeros(10, 1, 8, 8), lambda b: b.flatten(1), "cpu", "fid reference",
                                      batch_size=4)
        reference_module.feature_pass(torch.zeros(4, 1, 8, 8), lambda b: b.flatten(1), "cpu", "fid reference",
                                      batch_size=2)  # already no more than the suggested size: the estimate only
    first, second = (r.getMessage() for r in caplog.records)
    assert "fid.reference_size=5" in first and "reference_size" not in second and "cached" in second
