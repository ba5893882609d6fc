"""The exponential moving average of the weights, used for every sample (Ho et al. 2020: decay 0.9999), and
EDM2's power-function averages (Karras et al. 2024), several of which a run can track to choose the EMA length
after training.

torch.optim.swa_utils does the averaging; this module adds a host-side decay (no device read per step), the
optional warm-up of TF's ExponentialMovingAverage(num_updates), and the power-function decay: after optimizer step
t (1-based) beta_t = (1 - 1/t)^(gamma + 1), which makes the average weigh the weights of step s by
s^(gamma+1) - (s-1)^(gamma+1), the power function t^gamma integrated over the step. Its length is the relative
standard deviation sigma_rel of that profile over the run (EDM2's eq. 3):

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)),

so a profile is as long, relative to the run, at every step: the choice survives a change of training length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay of the update after optimizer step `step` (0-based).

    0 at step 0: the EMA starts as a copy of the trained weights (as AveragedModel does). With warm-up,
    min(decay, (1 + step) / (10 + step)) (TF's num_updates, diffusers' EMAModel): the random initial
    weights stop dominating early samples (decay 0.999 without warm-up still weighs them 37% at step 1000)."""
    if step <= 0:
        return 0.0
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def power_function_gamma(sigma_rel: float) -> float:
    """gamma of the power-function profile whose relative standard deviation is sigma_rel (EDM2's eq. 3 solved for
    gamma >= 0, by bisection: sigma_rel decreases in gamma). sigma_rel must lie in (0, sqrt(1/12)): gamma = 0 is
    the uniform average over the run, sqrt(1/12) long; a longer profile (gamma < 0) would weigh the first, random
    weights most, and is refused.)"""
    limit = math.sqrt(1 / 12)
    if not 0 < sigma_rel < limit:
        raise ValueError(f"module.ema_profiles: sigma_rel must be in (0, {limit:.4f}) (EDM2 used 0.05 to 0.2), got "
                         f"{sigma_rel}")

    def rel(gamma: float) -> float:
        return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))

    lo, hi = 0.0, 1.0
    while rel(hi) > sigma_rel:  # rel decreases in gamma
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rel(mid) > sigma_rel else (lo, mid)
    return (lo + hi) / 2


def power_ema_decay_at(step: int, gamma: float) -> float:
    """beta after optimizer step `step` (0-based): (1 - 1 / (step + 1))^(gamma + 1); 0 at step 0 (a copy)."""
    return 0.0 if step <= 0 else (1 - 1 / (step + 1)) ** (gamma + 1)


class EMA(AveragedModel):
    """AveragedModel with get_ema_multi_avg_fn, updated without reading `n_averaged` on the host.

    AveragedModel.update_parameters tests `n_averaged == 0` on the device tensor, a wait for the GPU at
    every step. Here the caller passes the decay as a host float (0 on the first update: a copy) and the
    lerp is the same foreach kernel; `n_averaged` still counts, on the device."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool) -> None:
        """decay: the EMA decay (DDPM: 0.9999); warmup: ramp it as `ema_decay_at` says. Buffers are averaged too."""
        super().__init__(model, use_buffers=True)
        self.decay, self.warmup = float(decay), bool(warmup)

    def step(self, model: torch.nn.Module, step: int) -> None:
        """Move towards `model` after optimizer step `step` (0-based): the first update copies it."""
        self.update_parameters(model, ema_decay_at(step, self.decay, self.warmup))

    def update_parameters(self, model: torch.nn.Module, decay: float) -> None:  # type: ignore[override]
        update = get_ema_multi_avg_fn(decay)  # no_grad inside: the tensors need no detach
        for ema_tensors, model_tensors in self._tensor_lists(model):
            update(ema_tensors, model_tensors, None)
        self.n_averaged += 1

    def _tensor_lists(self, model: torch.nn.Module) -> list[tuple[list[Tensor], list[Tensor]]]:
        """(EMA tensors, model tensors) for the float and the other tensors, built once per model.

        Walking both module trees costs milliseconds of Python per step, more than the GPU needs for the
        lerp. Parameter and buffer objects outlive .to() and load_state_dict (both change .data in place), so
        the lists stay valid; torch's update lerps float lists and blends the others, never a mix."""
        cached = self.__dict__.get("_lists")  # kept out of the module tree: no submodule, no state_dict entry
        if cached is None or cached[0] is not model:
            pairs = list(zip((*self.module.parameters(), *self.module.buffers()),
                             (*model.parameters(), *model.buffers())))
            groups = [[(e, n) for e, n in pairs if e.is_floating_point() == floating] for floating in (True, False)]
            cached = (model, [([e for e, _ in g], [n for _, n in g]) for g in groups if g])
            self.__dict__["_lists"] = cached
        return cached[1]


class PowerEMA(EMA):
    """EDM2's power-function EMA of relative length `sigma_rel` (module docstring): no decay or warm-up to tune."""

    def __init__(self, model: torch.nn.Module, sigma_rel: float) -> None:
        super().__init__(model, decay=0.0, warmup=False)
        self.sigma_rel, self.gamma = float(sigma_rel), power_function_gamma(float(sigma_rel))

    def step(self, model: torch.nn.Module, step: int) -> None:
        self.update_parameters(model, power_ema_decay_at(step, self.gamma))
