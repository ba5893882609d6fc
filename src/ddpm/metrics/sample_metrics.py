"""Sample-quality metrics: a Fréchet distance (torchmetrics' FID machinery, float64 statistics) in the features of
the offline classifier (`fd_resnet`) or of TF-Inception (`fid`), KID, the Inception Score, and beside the distance
the numbers it folds together: improved precision / recall and the class mix (`coverage.py`).

`SampleMetrics.prepare(datamodule)` builds the feature network (training the offline classifier if it is not
cached yet) and loads, or computes once and caches, the reference statistics of the configured split: the FID
sums, a fixed random subset of real features for precision / recall, and the real predicted-class histogram. The
cache key names the data set, split, image size, channels and feature network (for the classifier: a hash of its
weights), so a changed image size or a retrained classifier misses.

Each generated batch goes through the feature network once (`FeatureTap` hands FID's pass on to the others).
Multi-GPU: every rank feeds its own share of samples; torchmetrics sums (or gathers) the states across ranks at
`compute()`. Only rank 0 holds the FID reference statistics (the others hold zeros) so the sum counts them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ddpm.core.images import quantize
from ddpm.metrics.coverage import ClassBalance, FeatureStore, precision_recall
from ddpm.metrics.features import ARCH, accuracy, load_classifier, save_classifier, train_classifier
from ddpm.metrics.inception import InceptionFeatures
from ddpm.metrics.reference import feature_pass, fid_states, published_statistics, reference_subset

log = logging.getLogger(__name__)

REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


@dataclass
class ClassifierTraining:
    """How the offline feature classifier is trained (once per data set and image size; then cached)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 0.1
    width: int = 16
    num_features: int = 128
    seed: int = 0


class FeatureTap(nn.Module):
    """The feature network as torchmetrics' FID sees it, keeping its last output so that precision / recall and
    the class histogram reuse FID's pass instead of running the network again."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.num_features = net, net.num_features
        self.last: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        self.last = self.net(images)
        return self.last


@dataclass
class SampleMetrics:
    feature: str = "classifier"  # "classifier" (offline) or "inception" (standard FID)
    name: str = ""  # the logged key; default "fid" for inception, "fd_resnet" for the classifier
    cache_dir: str = "cache"
    reference_split: str = "train"
    reference_size: int | None = None  # None: the whole split; N: a fixed seeded subset of N images
    reference_stats: str | None = None  # an .npz with mu and sigma (a paper's published reference), used as is
    weights_path: str | None = None  # local TF-Inception weights (torch-fidelity's .pth or a TorchScript detector)
    kid: bool = False
    inception_score: bool = False
    kid_subset_size: int = 1000
    precision_recall: bool = True  # improved precision / recall (k-NN manifolds) beside the distance
    pr_k: int = 3
    pr_max_samples: int = 10000  # generated and real features compared (both sides the same count)
    classifier: ClassifierTraining | dict = field(default_factory=ClassifierTraining)

    def __post_init__(self) -> None:
        if self.feature not in ("classifier", "inception"):
            raise ValueError(f"fid feature must be 'classifier' or 'inception', got {self.feature!r}")
        if self.inception_score and self.feature != "inception":
            raise ValueError("the Inception Score needs feature=inception (it is defined on Inception's classes)")
        if not self.name:
            self.name = "fid" if self.feature == "inception" else "fd_resnet"
        if self.feature != "inception" and self.name in ("fid", "kid", "inception_score"):
            raise ValueError(f"fid.name={self.name!r} is reserved for the Inception network; "
                             "name the classifier metric differently (e.g. fd_resnet)")
        if not isinstance(self.classifier, ClassifierTraining):  # a dict, or Hydra's DictConfig
            self.classifier = ClassifierTraining(**dict(self.classifier))
        self.fid = self.kid_metric = self.is_metric = self.accuracy = self.balance = self.fake_store = None
        self._labelled = False  # class accuracy is reported once samples with labels were fed
        self.net: nn.Module | None = None
        self.tap: FeatureTap | None = None
        self.real_pr: Tensor | None = None
        self.feature_id = ""
        self.reference_n = 0  # reference images behind the statistics (0: unknown, a published reference)

    # ----- names -------------------------------------------------------------------------------
    @property
    def fid_name(self) -> str:
        """'fid' only for the standard Inception network; 'fd_resnet' otherwise, so nobody mistakes it."""
        return self.name

    # ----- set-up ------------------------------------------------------------------------------
    def classifier_path(self, datamodule) -> Path:
        """Keyed by the data and, unless it is the default, the classifier's training config: a changed
        fid.classifier.* trains a new classifier instead of silently reusing the cached one."""
        key = "" if self.classifier == ClassifierTraining() else "_" + hashlib.sha256(
            json.dumps(asdict(self.classifier), sort_keys=True).encode()).hexdigest()[:8]
        return Path(self.cache_dir) / "classifiers" / f"{_data_key(datamodule)}_{ARCH}{key}.pt"

    def feature_network(self, datamodule) -> nn.Module:
        """The feature network; the classifier is trained here on first use and cached."""
        if self.feature == "inception":
            net = InceptionFeatures(self.weights_path)
            log.info("Inception weights: %s", net.source)
            self.feature_id = "inception2048"
            return net
        path = self.classifier_path(datamodule)
        if not path.is_file():
            images, labels = datamodule.labeled_images("train")
            if labels is None:
                raise ValueError(f"{datamodule.name} has no labels to train the feature classifier on: "
                                 "use fid.feature=inception (with fid.weights_path offline)")
            c = self.classifier
            log.info("Training the feature classifier for %s (%d images, %d steps, once); cached at %s",
                     datamodule.name, len(images), c.steps, path)
            net, acc = train_classifier(images, labels, int(labels.max()) + 1, c.steps, c.batch_size, c.lr, c.seed,
                                        c.width, c.num_features)
            val_acc = accuracy(net, *datamodule.labeled_images("val"))
            save_classifier(net, path, {"train_accuracy": acc, "val_accuracy": val_acc, "data": _data_key(datamodule)})
            log.info("Feature classifier: train accuracy %.3f, val accuracy %.3f", acc, val_acc)
        net, _ = load_classifier(path)
        self.feature_id = "classifier-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return net

    def reference_path(self, datamodule) -> Path:
        subset = "" if self.reference_size is None else f"_n{self.reference_size}"
        name = f"{_data_key(datamodule)}_{self.reference_split}{subset}_{self.feature_id}.pt"
        return Path(self.cache_dir) / "fid_reference" / name

    def prepare(self, datamodule, device: torch.device | str = "cpu", holds_reference: bool = True) -> bool:
        """Build the metrics and fill in the reference statistics. Returns True on a cache hit."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.net = self.feature_network(datamodule).to(device)
        self.tap = FeatureTap(self.net)
        self.fid = FrechetInceptionDistance(feature=self.tap, reset_real_features=False).to(device)
        if self.feature == "classifier":  # class-conditional samples: does the classifier see the asked-for class?
            from torchmetrics.classification import MulticlassAccuracy

            self.accuracy = MulticlassAccuracy(num_classes=self.net.num_classes, average="micro").to(device)
        if self.kid:
            from torchmetrics.image.kid import KernelInceptionDistance

            self.kid_metric = KernelInceptionDistance(feature=self.net, reset_real_features=False,
                                                      subset_size=self.kid_subset_size).to(device)
        if self.inception_score:
            from torchmetrics.image.inception import InceptionScore

            self.is_metric = InceptionScore(feature_extractor_weights_path=self.weights_path).to(device)
        if self.reference_stats is not None:
            return self._prepare_published(device, holds_reference)
        path = self.reference_path(datamodule)
        hit = path.is_file()
        ref = torch.load(path, map_location="cpu", weights_only=True) if hit else None
        if ref is None or "pr_features" not in ref or (self.kid and "features" not in ref):  # older caches lack them
            images, _ = datamodule.labeled_images(self.reference_split)
            images = reference_subset(images, self.reference_size)
            ref = self._reference_from(images, device, f"{self.fid_name} reference ({datamodule.name})")
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ref, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
            log.info("Reference statistics of %s/%s (%d images) cached at %s", datamodule.name,
                     self.reference_split, len(images), path)
        self.reference_n = int(ref["real_features_num_samples"])
        if holds_reference:
            for name in REAL_STATES:
                setattr(self.fid, name, ref[name].to(device))
            if self.kid_metric is not None:
                self.kid_metric.real_features = [ref["features"].to(device)]
        if self.precision_recall:
            self.real_pr = ref["pr_features"].to(device)
            self.fake_store = FeatureStore(self.pr_max_samples).to(device)
        if self.feature == "classifier":
            self.balance = ClassBalance(self.net.num_classes, ref["class_counts"]).to(device)
        return hit

    def prepare_on_ranks(self, datamodule, device: torch.device | str, is_zero: bool, barrier) -> None:
        """Rank 0 trains the classifier / computes the reference once (and caches it); the others wait,
        then load from the cache and hold no reference statistics (so summing over ranks counts them once)."""
        if is_zero:
            self.prepare(datamodule, device)
        barrier()
        if not is_zero:
            self.prepare(datamodule, device, holds_reference=False)

    def _prepare_published(self, device: torch.device | str, holds_reference: bool) -> bool:
        """The reference of an .npz (mu, sigma) as it is: no real features, so no precision / recall, KID or class
        balance beside it."""
        if self.kid or self.precision_recall:
            log.info("fid.reference_stats holds no features: precision / recall and KID are not computed")
        self.kid_metric, self.precision_recall, self.balance = None, False, None
        mu, sigma = published_statistics(self.reference_stats, self.net.num_features)
        if holds_reference:
            for name, value in fid_states(mu, sigma).items():
                setattr(self.fid, name, value.to(device))
        self.reference_n = 0  # unknown: the publisher's
        return True

    @torch.no_grad()
    def _reference_from(self, images: Tensor, device: torch.device | str, desc: str) -> dict[str, Tensor]:
        def update(batch: Tensor) -> Tensor:
            self.fid.update(batch, real=True)
            return self.tap.last.float()

        features = feature_pass(images, update, device, desc)
        ref = {name: getattr(self.fid, name).cpu() for name in REAL_STATES}
        # a fixed random subset for precision / recall, so a prefix of it is a random sample of any size
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:self.pr_max_samples]
        ref["pr_features"] = features[order.to(features.device)].cpu()
        if self.kid:
            ref["features"] = features.cpu()
        if self.feature == "classifier":
            predicted = self.net.classify(features).argmax(1)
            ref["class_counts"] = torch.bincount(predicted, minlength=self.net.num_classes).double().cpu()
        self.fid.reset()
        return ref

    # ----- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, images: Tensor, labels: Tensor | None = None) -> None:
        """Add generated images in [-1, 1]; they are quantised to uint8 first, as a saved PNG would be. labels:
        the classes they were drawn as (class accuracy under the feature classifier)."""
        x = quantize(images)
        self.fid.update(x, real=False)
        features = self.tap.last
        if self.fake_store is not None:
            self.fake_store.update(features)
        if self.balance is not None:
            logits = self.net.classify(features)
            self.balance.update(logits)
            if labels is not None:
                self.accuracy.update(logits.argmax(1), labels.to(x.device))
                self._labelled = True
        if self.kid_metric is not None:
            self.kid_metric.update(x, real=False)
        if self.is_metric is not None:
            self.is_metric.update(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    def compute(self, n_total: int) -> dict[str, float]:
        """The metrics over the `n_total` samples fed on all ranks since the last reset (synced), then reset."""
        out = {self.fid_name: float(self.fid.compute())}
        if self.kid_metric is not None:
            self.kid_metric.subset_size = min(self.kid_subset_size, n_total)
            kid_mean, kid_std = self.kid_metric.compute()
            out[f"kid{'' if self.feature == 'inception' else '_classifier'}"] = float(kid_mean)
        if self.is_metric is not None:
            out["inception_score"] = float(self.is_metric.compute()[0])
        if self._labelled:
            out["class_accuracy"] = float(self.accuracy.compute())
        if self.balance is not None:
            out.update(self.balance.compute())
        if self.fake_store is not None:
            fake = self.fake_store.compute()
            m = min(len(fake), len(self.real_pr))
            if m > self.pr_k:
                out["precision"], out["recall"] = precision_recall(self.real_pr[:m], fake[:m], self.pr_k)
        self.reset()
        out[f"{self.fid_name}_n"] = n_total
        if self.reference_n:
            out[f"{self.fid_name}_reference_n"] = self.reference_n
        return out

    def reset(self) -> None:
        for m in (self.fid, self.kid_metric, self.is_metric, self.accuracy, self.balance, self.fake_store):
            if m is not None:
                m.reset()
        self._labelled = False


def _data_key(datamodule) -> str:
    """Data set, the size samples are judged at (padded sets: their native size), channels."""
    size = getattr(datamodule, "eval_size", datamodule.image_size)
    return f"{datamodule.name}_{size}px_{datamodule.channels}ch"
