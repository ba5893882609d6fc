"""Feature networks for Fréchet distances, and the small classifier that needs no download.

`inception`: the standard 2048-d TF-Inception pool features (torch-fidelity weights, through
torchmetrics), downloaded when online or read from a local weights file.
`classifier`: a small CNN trained on the data set's own labels (`ClassifierFeatures`). Its
penultimate-layer features give a Fréchet distance that works offline; it is reported as
`fcd_<data set>` ("Fréchet classifier distance"), never as FID, since its numbers are not comparable
with Inception FIDs. Both take uint8 images (B, C, H, W), the quantised samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassifierFeatures(nn.Module):
    """A small all-convolutional classifier; `forward` returns its penultimate features (B, num_features)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, num_features: int = 128) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width, self.num_features = channels, num_classes, width, num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_features), nn.SiLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    @staticmethod
    def to_input(images: Tensor) -> Tensor:
        """uint8 [0, 255] -> float [-1, 1]; float input is taken as already in [-1, 1]."""
        return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.body(self.to_input(images)))

    def forward(self, images: Tensor) -> Tensor:
        return self.body(self.to_input(images))

    def config(self) -> dict:
        return {"channels": self.channels, "num_classes": self.num_classes, "width": self.width,
                "num_features": self.num_features}


def save_classifier(net: ClassifierFeatures, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": net.config(), "state_dict": net.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file


def load_classifier(path: Path) -> tuple[ClassifierFeatures, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = ClassifierFeatures(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False), blob["meta"]


class InceptionFeatures(nn.Module):
    """The standard FID network: torchmetrics' NoTrainInceptionV3 (torch-fidelity's TF-Inception port),
    2048-d pool features. Greyscale images are repeated to 3 channels; resizing to 299 happens inside."""

    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("Inception features need torch-fidelity: pip install -e '.[fid]'") from err
        if weights_path is not None and not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {weights_path}; download pt_inception-2015-12-05-6726825d.pth "
                "(torch-fidelity's release) there, or set fid.weights_path=null to download it when online"
            )
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=weights_path)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)


def quantize(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255], rounding as an 8-bit PNG would: FID sees what a viewer sees."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, steps: int, batch_size: int, lr: float,
                     seed: int, width: int = 32, num_features: int = 128) -> tuple[ClassifierFeatures, float]:
    """Fit the classifier on (uint8 images, labels) for a fixed number of steps (a budget that does not grow
    with the data set); returns it (eval mode) and its final training accuracy.

    Runs under fork_rng: the global streams (a training run's t, eps and dropout) are the same afterwards, so a
    run with an empty cache (which trains the classifier) draws what the same run with a warm cache draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights
        net = ClassifierFeatures(images.shape[1], num_classes, width, num_features)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    n = images.shape[0]
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(net.logits(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        acc = torch.cat([net.logits(images[i:i + 1024]).argmax(1) for i in range(0, n, 1024)]).eq(labels).float().mean()
    return net.requires_grad_(False), float(acc)
