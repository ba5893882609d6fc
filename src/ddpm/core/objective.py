"""What the training loss averages: which loss, how t is drawn (`timesteps.py`), and how it is weighted.

`loss`: "simple" is L_simple (with a learned variance, L_hybrid = L_simple + lambda L_vlb, the mean frozen in
L_vlb); "vlb" is L_vlb alone, T L_t per sample (its one-t estimate; every output, the mean too, trained by the
bound). L_simple is the MSE in the space of the network's target (the parametrization's: eps, x_0, v, or EDM's
preconditioned F), times the loss weighting's w(t) if one is configured (`weighting.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ddpm.core.guidance import conditional, drop_labels
from ddpm.core.likelihood import EpsModel, vlb_terms_bpd
from ddpm.core.parametrization import Parametrization
from ddpm.core.timesteps import (  # noqa: F401  (re-exported: the objective's parts, by their old import path)
    TIMESTEP_SAMPLERS,
    LogNormalTimesteps,
    LossSecondMomentTimesteps,
    UniformTimesteps,
    build_timestep_sampler,
    uniform_timesteps,
)
from ddpm.core.weighting import LossWeighting
from ddpm.errors import ConfigError, NonFiniteLossError

LOSSES = ("simple", "vlb")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The `objective` config group, handed whole to `Objective`: which loss (simple: L_simple, with a learned
    variance L_hybrid = L_simple + vlb_weight T L_t; vlb: L_vlb alone), how t is drawn (uniform | loss_aware, with
    `loss_aware`'s history_per_term and uniform_prob), and the label dropout of classifier-free guidance. The
    defaults are DDPM's, and those of checkpoints saved before these settings existed (`io/compat.py`)."""

    loss: str = "simple"
    vlb_weight: float = 0.001
    timestep_sampler: str = "uniform"
    loss_aware: Mapping[str, Any] | None = None
    log_normal: Mapping[str, Any] | None = None  # p_mean, p_std of timestep_sampler=log_normal (EDM)
    cond_drop_prob: float = 0.0
    weighting: Mapping[str, Any] | None = None  # a LossWeighting's config (`_target_`), built by the caller

    @classmethod
    def of(cls, config: ObjectiveConfig | Mapping[str, Any] | None) -> ObjectiveConfig:
        """From the config group's plain dict (unknown keys are an error naming them)."""
        if isinstance(config, cls):
            return config
        config = dict(config or {})
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"objective: unknown key(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**config)


def check_objective(parametrization: Parametrization, loss: str, vlb_weight: float, timestep_sampler: str,
                    num_classes: int | None, cond_drop_prob: float) -> None:
    """ValueError for settings that would train nothing or silently ignore a part."""
    if loss not in LOSSES:
        raise ValueError(f"objective.loss must be one of {LOSSES}, got {loss!r}")
    if timestep_sampler not in TIMESTEP_SAMPLERS:
        raise ValueError(f"objective.timestep_sampler must be one of {TIMESTEP_SAMPLERS}, got {timestep_sampler!r}")
    if parametrization.variance.learned and loss == "simple" and not vlb_weight > 0:
        raise ValueError(f"module.variance_type={parametrization.variance.name} trains the variance through L_vlb "
                         "only: set objective.vlb_weight > 0 (Improved DDPM: 0.001), or objective.loss=vlb")
    if cond_drop_prob and num_classes is None:
        raise ValueError("objective.cond_drop_prob needs a class-conditional model: set model.num_classes")
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"objective.cond_drop_prob must be in [0, 1], got {cond_drop_prob}")


def training_terms(diffusion, model: EpsModel, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                   vlb_weight: float = 0.0, loss: str = "simple",
                   weighting: LossWeighting | None = None) -> dict[str, Tensor]:
    """Per-sample losses (B,): `mse` (L_simple, in the prediction's space), `vlb` (L_t, bits/dim), `loss`:
    "simple": mse (times the weighting's w(t) in the target's space, if any), with a learned variance + vlb_weight
    T vlb, the mean frozen in vlb (L_hybrid; 0.001 gives improved-diffusion's T / 1000, once); "vlb": T vlb,
    nothing frozen (improved-diffusion's rescaled KL)."""
    if loss not in LOSSES:
        raise ValueError(f"objective.loss must be one of {LOSSES}, got {loss!r}")
    d, param = diffusion, diffusion.parametrization
    t = uniform_timesteps(d.num_timesteps, x0.shape[0], x0.device) if t is None else t
    noise = torch.randn_like(x0) if noise is None else noise
    x_t = d.q_sample(x0, t, noise)
    out, c = model(x_t, t), x0.shape[1]
    param.check_output(out, x_t)
    pred = param.prediction_channels(out, c).float()
    mse = (pred - param.prediction.target(d, x0.float(), t, noise.float())).pow(2).flatten(1).mean(dim=1)
    weighted = mse
    if weighting is not None:  # written in eps space; the parametrization says how it reads in the target's
        abar = d.alphas_cumprod[t]  # float64
        snr = abar / (1 - abar)
        weighted = mse * (weighting.eps_weight(snr) * param.prediction.eps_mse_factor(snr)).float()
    terms = {"mse": mse, "loss": weighted}
    if loss == "vlb":
        full = d.split_output(out.float(), x_t.float(), t)
        terms["vlb"] = vlb_terms_bpd(d, full.eps, x0, x_t, t, clip_denoised=False, var_frac=full.var_frac).float()
        terms["loss"] = d.num_timesteps * terms["vlb"]
    elif param.variance.learned:
        # stop-gradient on the mean: L_t trains only the variance channels (Nichol & Dhariwal 2021, sec. 3.1)
        frozen = d.split_output(torch.cat([out[:, :c].detach(), out[:, c:]], 1).float(), x_t.float(), t)
        terms["vlb"] = vlb_terms_bpd(d, frozen.eps, x0, x_t, t, False, var_frac=frozen.var_frac).float()
        terms["loss"] = weighted + vlb_weight * d.num_timesteps * terms["vlb"]
    return terms


def training_losses(diffusion, model: EpsModel, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                    vlb_weight: float = 0.0, loss: str = "simple", weighting: LossWeighting | None = None) -> Tensor:
    """The per-sample loss (B,) of `training_terms`."""
    return training_terms(diffusion, model, x0, t, noise, vlb_weight, loss, weighting)["loss"]


@dataclass
class TrainingLoss:
    """One step's objective: the scalar to minimise, the per-sample losses (B,) and their t, and L_hybrid's parts."""

    loss: Tensor
    losses: Tensor
    t: Tensor
    parts: dict[str, Tensor]

    def by_quarter(self, num_timesteps: int) -> dict[int, tuple[float, int]]:
        """Mean loss and count per quarter of the t range (0 = least noise); waits for the device."""
        quarter = (self.t * 4) // num_timesteps
        sums = torch.zeros(4, device=self.losses.device).index_add_(0, quarter, self.losses.detach().float())
        counts = torch.bincount(quarter, minlength=4).tolist()
        return {q: (s / c, c) for q, (s, c) in enumerate(zip(sums.tolist(), counts)) if c}


class Objective:
    """What a training step minimises, in one place: t drawn by the timestep sampler (uniform or loss-aware, with its
    weights 1 / (T p_t)), the label dropout of classifier-free guidance, L_simple / L_hybrid / L_vlb from the
    `training_terms`, and the loss-aware history's update with every rank's losses. Its settings are
    checked here, once, before anything is built. The LightningModule registers `timestep_sampler` as its submodule
    (its history is checkpointed there); this object is plain and only holds references."""

    def __init__(self, diffusion, config: ObjectiveConfig | Mapping[str, Any] | None, num_classes: int | None,
                 null_label: int | None, weighting: LossWeighting | None = None) -> None:
        """weighting: the LossWeighting that `config.weighting` configures (built by the caller from its
        `_target_`)."""
        c = self.config = ObjectiveConfig.of(config)
        if (weighting is None) != (not c.weighting):
            raise ValueError("objective.weighting is configured but no LossWeighting was given, or the reverse")
        if weighting is not None and c.loss == "vlb":
            raise ConfigError("objective.weighting weighs L_simple; objective.loss=vlb is weighted by the bound "
                              "itself: drop one")
        self.weighting = weighting
        check_objective(diffusion.parametrization, c.loss, float(c.vlb_weight), c.timestep_sampler, num_classes,
                        float(c.cond_drop_prob))
        self.diffusion = diffusion
        self.timestep_sampler = build_timestep_sampler(c.timestep_sampler, diffusion.num_timesteps,
                                                       dict(c.loss_aware) if c.loss_aware else None,
                                                       dict(c.log_normal) if c.log_normal else None,
                                                       diffusion.alphas_cumprod)
        self.loss, self.vlb_weight, self.cond_drop_prob = c.loss, float(c.vlb_weight), float(c.cond_drop_prob)
        self.null_label = null_label

    def __call__(self, net: nn.Module, images: Tensor, labels: Tensor | None,
                 gather: Callable[[Tensor], Tensor] = lambda x: x) -> TrainingLoss:
        """gather: all ranks' values of a tensor (DDP's all_gather; identity on one process)."""
        t, weights = self.timestep_sampler.sample(images.shape[0], images.device)
        if labels is not None:  # classifier-free guidance: the null label with probability cond_drop_prob
            labels = drop_labels(labels, self.null_label, self.cond_drop_prob)
        terms = training_terms(self.diffusion, conditional(net, labels), images, t=t, vlb_weight=self.vlb_weight,
                               loss=self.loss, weighting=self.weighting)
        losses = terms["loss"]  # (B,)
        if self.timestep_sampler.learns:  # every rank's losses, so that all ranks draw from the same p
            self.timestep_sampler.update(gather(t), gather(losses.detach()))
        loss = (losses if weights is None else losses * weights).mean()
        parts = {k: terms[k] for k in ("mse", "vlb")} if "vlb" in terms else {}
        return TrainingLoss(loss=loss, losses=losses, t=t, parts=parts)


def finite_loss(loss: Tensor, step: int) -> float:
    """The loss as a float (this waits for the device), or NonFiniteLossError naming the step and what to change:
    a NaN or infinite loss stops the run before it is applied or checkpointed, so the last checkpoint stays good."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"training loss is {value} at step {step}; the last checkpoint is kept. Lower optimizer.lr, keep gradient "
            "clipping on, use bf16-mixed rather than 16-mixed, and check that the data lies in [-1, 1].")
    return value
