"""The offline metric ranks known-good against known-bad the right way (benchmarks/QUALITY.md has the full tables).

Held-out digits (360 images) against the train reference, through the default `fid=classifier` config (the
network users get): every degradation of src/ddpm/degradations.py scores worse than the clean set and worse
with strength, and the coverage numbers move the way their definitions say. Digits hold 17 grey levels, 16
apart on the 0..255 scale, so noise is tested from sigma = 16 up (weaker noise is below the data's own steps).
"""

from __future__ import annotations

import pytest
import torch

from ddpm.metrics import SampleMetrics
from ddpm.metrics.coverage import precision_recall
from ddpm.metrics.degradations import SUITE, blur, collapse, drop_classes, imbalance, noise, shrink
from tests.test_metrics import digits

pytestmark = pytest.mark.slow  # end-to-end: a feature classifier trained, degradations scored

STRENGTHS = {**{name: strengths for name, (_, strengths) in SUITE.items()}, "noise": (16.0, 32.0, 64.0)}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    dm = digits()
    metrics = SampleMetrics(cache_dir=str(tmp_path_factory.mktemp("cache")))  # the default classifier config
    metrics.prepare(dm)
    images, labels = dm.labeled_images("val")

    def score(x: torch.Tensor) -> dict[str, float]:
        metrics.update(x.float() / 127.5 - 1)
        return metrics.compute(len(x))

    return images, labels, score, score(images)


@pytest.mark.parametrize("name", list(SUITE))
def test_every_degradation_scores_worse_with_strength(scored, name):
    images, labels, score, floor = scored
    fn = SUITE[name][0]
    values = [floor["fd_resnet"]] + [score(fn(images, labels, s, 0))["fd_resnet"] for s in STRENGTHS[name]]
    assert all(b > a for a, b in zip(values, values[1:])), f"{name}: {values}"


def test_coverage_numbers_move_as_defined(scored):
    images, labels, score, floor = scored
    dropped = score(drop_classes(images, labels, 4, 0))
    assert dropped["class_entropy"] < floor["class_entropy"] - 0.1 and dropped["class_tv"] > floor["class_tv"] + 0.2
    assert dropped["recall"] < floor["recall"] - 0.2  # four classes missing: their real samples are not covered
    assert score(collapse(images, labels, 0.5, 0))["class_entropy"] < floor["class_entropy"] - 0.1
    assert score(shrink(images, labels, 0.4, 0))["recall"] < floor["recall"] - 0.3
    assert score(blur(images, labels, 1.5, 0))["precision"] < floor["precision"] - 0.5
    assert score(noise(images, labels, 64.0, 0))["precision"] < floor["precision"] - 0.1
    assert floor["class_entropy"] > 0.98 and floor["precision"] > 0.7 and floor["recall"] > 0.8


def test_precision_recall_by_hand():
    """Real points on a line at 0, 1, 2, 3 (k = 1: every radius is 1); generated points at 0.5 and 10:
    one of two generated inside the real balls (precision 1/2); the generated radii are both 9.5, so every real
    point lies within 9.5 of the point at 0.5 (recall 1)."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    # identical sets: every point is in its own ball
    assert precision_recall(real, real, k=1) == (1.0, 1.0)
    # the radius is the k-th neighbour's distance: real 0, 1, 3 have k = 1 radii 1, 1, 2, so 5.5 (2.5 from 3) is
    # outside; with k = 2 (radii 3, 2, 3) it is inside
    spread, far = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[5.5], [0.0], [0.2]])
    assert precision_recall(spread, far, k=1)[0] == pytest.approx(2 / 3)
    assert precision_recall(spread, far, k=2)[0] == 1.0


def test_degradations_keep_the_count_and_the_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 8
    for name, (fn, strengths) in SUITE.items():
        out = fn(x, y, strengths[-1], 0)
        assert out.shape == x.shape and out.dtype == torch.uint8, name
        assert torch.equal(out, fn(x, y, strengths[-1], 0)), f"{name} is not deterministic"
    # images that carry their own index: which ones each class-level degradation drew
    index = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    dropped = y[drop_classes(index, y, 1, 0).flatten().long()]
    assert (dropped != 0).all() and len(dropped) == 40
    heavy = y[imbalance(index, y, 3.0, 0).flatten().long()]
    assert int((heavy == 0).sum()) == 12 and int((heavy == 1).sum()) == 4  # 3/10 of 40, the others 1/10 each
    with pytest.raises(ValueError, match="all 8 classes"):
        drop_classes(x, y, 8, 0)
