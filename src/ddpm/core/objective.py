"""What the training loss averages: which loss, and how t is drawn.

`loss`: "simple" is L_simple (with a learned variance, L_hybrid = L_simple + lambda L_vlb, the mean frozen in
L_vlb); "vlb" is L_vlb alone, T L_t per sample (its one-t estimate; every output, the mean too, trained by the
bound). L_vlb's terms differ by orders of magnitude over t (L_0 and the first KLs dominate), so uniform t makes
a noisy estimate of it; Nichol & Dhariwal (2021, sec. 3.3) draw t by importance instead:

    p_t  proportional to  sqrt(E[L_t^2])   (the last `history_per_term` losses of each t),
    mixed with `uniform_prob` of the uniform so that no t starves, and each loss weighted 1 / (T p_t),

so E_{t ~ p}[L_t / (T p_t)] = (1/T) sum_t L_t: the same objective as uniform t, with a smaller variance
(p_t proportional to |L_t| would make it zero). Until every t holds its full history, t stays uniform with
weight 1. Under DDP every rank updates with the losses of all ranks, so all draw from the same p.
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
from ddpm.core.weighting import LossWeighting
from ddpm.errors import ConfigError, NonFiniteLossError

LOSSES = ("simple", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "loss_aware")


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


def uniform_timesteps(num_timesteps: int, batch_size: int, device: torch.device,
                      generator: torch.Generator | None = None) -> Tensor:
    """t ~ U{0, ..., T-1}, one per sample: the one place uniform t is drawn (training and validation)."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)


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


class UniformTimesteps(nn.Module):
    """t ~ U{0, ..., T-1} (DDPM), weight 1. No state: a module only so that both samplers sit in the tree."""

    learns = False  # update() is a no-op: the training step need not gather losses

    def __init__(self, num_timesteps: int) -> None:
        super().__init__()
        self.num_timesteps = int(num_timesteps)

    def sample(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """t (B,) and the per-sample loss weights (B,), None for all ones."""
        return uniform_timesteps(self.num_timesteps, batch_size, device), None

    def update(self, t: Tensor, losses: Tensor) -> None:
        pass


class LossSecondMomentTimesteps(UniformTimesteps):
    """Importance sampling of t from each t's last `history_per_term` losses (module docstring). The history is
    a buffer: it is checkpointed, so a resumed run draws from the same p."""

    learns = True

    def __init__(self, num_timesteps: int, history_per_term: int, uniform_prob: float) -> None:
        super().__init__(num_timesteps)
        if int(history_per_term) < 1:
            raise ValueError(f"objective.loss_aware.history_per_term must be >= 1, got {history_per_term}")
        if not 0.0 < uniform_prob <= 1.0:
            raise ValueError(f"objective.loss_aware.uniform_prob must be in (0, 1], got {uniform_prob}")
        self.uniform_prob = float(uniform_prob)
        T, H = self.num_timesteps, int(history_per_term)
        self.register_buffer("loss_history", torch.zeros(T, H, dtype=torch.float64))  # ring buffer per t
        self.register_buffer("loss_count", torch.zeros(T, dtype=torch.long))  # entries held, <= H
        self.register_buffer("write_pos", torch.zeros(T, dtype=torch.long))  # next slot of each ring

    def probabilities(self) -> Tensor:
        """p_t (T,) float64: uniform until every t holds H losses, then sqrt(E[L_t^2]) mixed with uniform."""
        T, H = self.loss_history.shape
        p = self.loss_history.pow(2).mean(dim=1).sqrt()
        p = (1 - self.uniform_prob) * p / p.sum() + self.uniform_prob / T
        warm = (self.loss_count == H).all()
        return torch.where(warm, p, torch.full_like(p, 1.0 / T))  # no host sync: the branch stays on device

    def sample(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True)
        warm = (self.loss_count == self.loss_history.shape[1]).all()
        weights = torch.where(warm, 1.0 / (self.num_timesteps * p[t]), torch.ones_like(p[t]))
        return t.to(device), weights.float().to(device)

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each sample's loss to its t's history (in batch order; a t drawn more than H times in one
        batch keeps its last H), vectorised: no host sync per step."""
        T, H = self.loss_history.shape
        t = t.flatten().to(self.loss_count.device)
        losses = losses.detach().flatten().to(self.loss_history)
        order = torch.argsort(t, stable=True)
        t, losses = t[order], losses[order]
        counts = torch.bincount(t, minlength=T)  # (T,) draws of each t in this batch
        first = torch.cumsum(counts, 0) - counts  # where each t's run starts in the sorted batch
        rank = torch.arange(t.numel(), device=t.device) - first[t]  # 0, 1, ... within each t's run
        keep = rank >= counts[t] - H  # the last H of a run: distinct slots of the ring
        slot = (self.write_pos[t] + rank) % H
        self.loss_history[t[keep], slot[keep]] = losses[keep]
        self.write_pos.add_(counts).remainder_(H)
        self.loss_count.add_(counts).clamp_(max=H)


def build_timestep_sampler(name: str, num_timesteps: int, loss_aware: dict | None) -> UniformTimesteps:
    """The sampler `objective.timestep_sampler` names; loss_aware takes `objective.loss_aware`'s numbers."""
    if name == "uniform":
        return UniformTimesteps(num_timesteps)
    if not loss_aware:
        raise ValueError("objective.timestep_sampler=loss_aware needs objective.loss_aware "
                         "(history_per_term, uniform_prob: conf/objective/ddpm.yaml)")
    return LossSecondMomentTimesteps(num_timesteps, **loss_aware)


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
                                                       dict(c.loss_aware) if c.loss_aware else None)
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
