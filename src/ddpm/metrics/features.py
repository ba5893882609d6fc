"""The offline feature network: a small ResNet trained once on the data set's own labels, and cached.

Its Fréchet distance (`fd_resnet`) works with no download (CI, air-gapped clusters) and is never called FID:
its numbers are not comparable with Inception FIDs. What makes it a usable yardstick (benchmarks/QUALITY.md):
- BatchNorm ResNet blocks down to a quarter of the image size, so pixel noise, blur and texture reach the
  features instead of being averaged away after a few convolutions;
- the features are the *pre-activation* output of the penultimate layer (before its ReLU): a ReLU'd feature is
  zero on half its range, which hides a shift of the distribution, and a Gaussian fit describes it badly;
- trained to the data set's usual accuracy (a fixed step budget, `fid.classifier.steps`), eval mode only.

Images enter as uint8 (the quantised samples, as a saved PNG would hold them) or as floats in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCH = "resnet-preact-v1"  # part of the cache key: a changed architecture never reuses an old cached network


class Block(nn.Module):
    """ResNet basic block (conv-BN-ReLU-conv-BN + shortcut, then ReLU); stride 2 halves the size."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ClassifierFeatures(nn.Module):
    """ResNet (3 stages of 2 blocks, widths w, 2w, 4w, the last two at stride 2) -> global average pool ->
    Linear to `num_features` (the features, pre-activation) -> ReLU -> Linear to the classes."""

    def __init__(self, channels: int, num_classes: int, width: int = 16, num_features: int = 128) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width, self.num_features = channels, num_classes, width, num_features
        w = width
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.stages = nn.Sequential(Block(w, w, 1), Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 2 * w, 1),
                                    Block(2 * w, 4 * w, 2), Block(4 * w, 4 * w, 1))
        self.embed = nn.Linear(4 * w, num_features)
        self.head = nn.Linear(num_features, num_classes)

    @staticmethod
    def to_input(images: Tensor) -> Tensor:
        """uint8 [0, 255] -> float [-1, 1]; float input is taken as already in [-1, 1]."""
        return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()

    def forward(self, images: Tensor) -> Tensor:
        """The features: pre-activation output of the penultimate layer, (B, num_features)."""
        h = self.stages(self.stem(self.to_input(images)))
        return self.embed(h.mean(dim=(2, 3)))

    def classify(self, features: Tensor) -> Tensor:
        """Class logits from `forward`'s features (one network pass gives both)."""
        return self.head(F.relu(features))

    def logits(self, images: Tensor) -> Tensor:
        return self.classify(self(images))

    def config(self) -> dict:
        return {"channels": self.channels, "num_classes": self.num_classes, "width": self.width,
                "num_features": self.num_features}


def save_classifier(net: ClassifierFeatures, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"arch": ARCH, "config": net.config(), "state_dict": net.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file


def load_classifier(path: Path) -> tuple[ClassifierFeatures, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("arch") != ARCH:
        raise ValueError(f"{path} holds a feature network of another architecture ({blob.get('arch', 'unknown')}, "
                         f"expected {ARCH}): delete it and it is retrained")
    net = ClassifierFeatures(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False), blob["meta"]


@torch.no_grad()
def accuracy(net: ClassifierFeatures, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    hits = sum(int(net.logits(images[i:i + batch_size]).argmax(1).eq(labels[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / max(len(images), 1)


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, steps: int, batch_size: int, lr: float,
                     seed: int, width: int = 16, num_features: int = 128,
                     weight_decay: float = 5e-4) -> tuple[ClassifierFeatures, float]:
    """Fit the classifier on (uint8 images, labels) for a fixed number of steps (a budget that does not grow
    with the data set): SGD with Nesterov momentum and a one-cycle LR, the usual recipe for BatchNorm ResNets.
    Returns it (eval mode, frozen) and its final training accuracy.

    Runs under fork_rng: the global streams (a training run's t, eps and dropout) are the same afterwards, so a
    run with an empty cache (which trains the classifier) draws what the same run with a warm cache draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights
        net = ClassifierFeatures(images.shape[1], num_classes, width, num_features).to(images.device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    n = images.shape[0]
    perm, pos = torch.randperm(n, generator=g), 0
    net.train()
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + batch_size].to(images.device)
        pos += batch_size
        loss = F.cross_entropy(net.logits(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval().requires_grad_(False)
    return net, accuracy(net, images, labels)
