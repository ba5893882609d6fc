"""Classifier-free guidance (Ho & Salimans 2022): one class-conditional network, trained with its label replaced by
a null label with probability p_uncond, sampled with the guided prediction

    eps~(x, t, c) = (1 + w) eps(x, t, c) - w eps(x, t, null)

w = 0 is the plain conditional model; w > 0 trades diversity for fidelity to the class. In the convention
eps~ = eps(null) + s (eps(c) - eps(null)) (GLIDE, diffusers' `guidance_scale`) the same rule has s = 1 + w.
Guidance acts on the prediction channels only: it is affine with weights summing to 1, so guiding x_0- or
v-predictions is guiding eps (for fixed x_t and t the conversion is affine too). A learned variance's channels are
taken from the conditional pass, unguided (GLIDE's choice).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ddpm.core.diffusion import EpsModel


def drop_labels(labels: Tensor, null_label: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Each label replaced by `null_label` with probability p, independently (label dropout for training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"objective.cond_drop_prob must be in [0, 1], got {p}")
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def class_labels(indices: Tensor, classes: Sequence[int], per_row: int) -> Tensor:
    """The class of sample i (global index, over all ranks): classes[(i // per_row) % len(classes)], so a grid of
    `per_row` images per row has one row per class and a long run is balanced over the classes."""
    table = torch.as_tensor(list(classes), dtype=torch.long, device=indices.device)
    return table[(indices // per_row) % len(table)]


def conditional(net: nn.Module, labels: Tensor | None) -> EpsModel:
    """The network as f(x_t, t): with fixed labels (B,) for a conditional network, or as it is."""
    if labels is None:
        return net
    return lambda x, t: net(x, t, labels)


def check_guidance_scale(guidance_scale: float) -> float:
    """w >= 0 (0: the conditional model); the one place this rule lives."""
    from ddpm.errors import ConfigError

    w = float(guidance_scale)
    if not w >= 0:
        raise ConfigError(f"guidance_scale must be >= 0 (0: the conditional model), got {guidance_scale}")
    return w


def check_conditioning(num_classes: int | None, labels: object = None, guidance_scale: float = 0.0,
                       classes: Sequence[int] | None = None) -> list[int] | None:
    """The one check of what a sampling request asks of the model: labels, classes and guidance only for a
    class-conditional one, w >= 0, classes within 0..K-1. Returns the classes to draw (None: unconditional;
    default: all K in turn). ConfigError, one line each."""
    from ddpm.errors import ConfigError

    if num_classes is None:
        if labels is not None or classes or guidance_scale:
            raise ConfigError("labels / classes / guidance_scale need a class-conditional model (model.num_classes)")
        return None
    check_guidance_scale(guidance_scale)
    classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    if not classes or min(classes) < 0 or max(classes) >= num_classes:
        raise ConfigError(f"classes must be labels in 0..{num_classes - 1}, got {classes}")
    return classes


def check_labels(num_classes: int | None, datamodule: object) -> None:
    """At build time, the one check that data and model agree on labels: a conditional model's label embedding
    covers the data set's classes and its batches carry labels; an unconditional model gets no labels."""
    from ddpm.errors import ConfigError

    labelled = bool(getattr(datamodule, "labels", False))
    if num_classes is None:
        if labelled:
            raise ConfigError("data.labels=true with an unconditional model: set model.num_classes, or "
                              "data.labels=false")
        return
    if not labelled:
        raise ConfigError(f"model.num_classes={num_classes} needs labelled batches: set data.labels=true")
    found = datamodule.num_classes()  # type: ignore[attr-defined]
    if found != num_classes:
        raise ConfigError(f"model.num_classes={num_classes}, but {datamodule.name} has {found} classes "  # type: ignore[attr-defined]
                          f"(labels 0..{found - 1}): set model.num_classes={found}")


def guided(net: nn.Module, labels: Tensor, guidance_scale: float) -> EpsModel:
    """f(x_t, t) with guidance w = `guidance_scale`: one batched forward of 2B (conditional, then the network's own
    null label, `net.null_label`) per call; w = 0 is one forward of the conditional model. The prediction channels
    (the first C, C = x_t's channels) are guided, a learned variance's channels come from the conditional pass."""
    w = check_guidance_scale(guidance_scale)
    if w == 0:
        return conditional(net, labels)
    null = torch.full_like(labels, net.null_label)

    def model(x: Tensor, t: Tensor) -> Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2B, C or 2C, H, W)
        cond, uncond = out.chunk(2)
        c = x.shape[1]
        pred = (1 + w) * cond[:, :c] - w * uncond[:, :c]
        return torch.cat([pred, cond[:, c:]], dim=1)

    return model
