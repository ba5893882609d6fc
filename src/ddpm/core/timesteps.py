"""How a training step draws its timesteps: uniformly (DDPM), by importance from each t's recent losses (Improved
DDPM's loss-aware sampler, for L_vlb), or log-normal in the noise level sigma (EDM).

A timestep sampler returns t (B,) and per-sample loss weights (None: all ones). Each is an `nn.Module` so that the
loss-aware history is checkpointed with the network; the others hold no persistent state (their checkpoints keep
the keys of runs saved before they existed).

L_vlb's terms differ by orders of magnitude over t (L_0 and the first KLs dominate), so uniform t makes a noisy
estimate of it; Nichol & Dhariwal (2021, sec. 3.3) draw t by importance instead:

    p_t  proportional to  sqrt(E[L_t^2])   (the last `history_per_term` losses of each t),
    mixed with `uniform_prob` of the uniform so that no t starves, and each loss weighted 1 / (T p_t),

so E_{t ~ p}[L_t / (T p_t)] = (1/T) sum_t L_t: the same objective as uniform t, with a smaller variance
(p_t proportional to |L_t| would make it zero). Until every t holds its full history, t stays uniform with
weight 1. Under DDP every rank updates with the losses of all ranks, so all draw from the same p.

EDM (Karras et al. 2022) draws ln sigma ~ N(P_mean, P_std^2) for its continuous sigma. Here the network is trained
at the schedule's T noise levels sigma_t = sqrt((1 - abar_t) / abar_t) (every sampler of this framework queries
those, or EDM's sampler log-sigma interpolations between them), so `LogNormalTimesteps` draws t with the
log-normal's mass on t's cell of ln sigma: the cell between the midpoints of ln sigma_t and its neighbours, the
tails folded into t = 0 and t = T - 1. With T = 1000 the cells are about 0.01 wide in ln sigma
(tests/test_timesteps.py checks the moments of ln sigma_t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddpm.errors import ConfigError

TIMESTEP_SAMPLERS = ("uniform", "loss_aware", "log_normal")


def uniform_timesteps(num_timesteps: int, batch_size: int, device: torch.device,
                      generator: torch.Generator | None = None) -> Tensor:
    """t ~ U{0, ..., T-1}, one per sample: the one place uniform t is drawn (training and validation)."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)


def inverse_cdf_timesteps(cdf: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """t (B,) with P(t <= i) proportional to cdf[i] (cdf (T,) non-decreasing, cdf[-1] the total mass), by the
    inverse CDF: t = the number of cdf values <= u, u ~ U[0, cdf[-1]). Not torch.multinomial, which checks its
    probabilities on the host: a wait for the GPU at every training step."""
    cdf = cdf.to(device)
    u = torch.rand(batch_size, device=device, dtype=cdf.dtype) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)  # u * cdf[-1] may round up to it


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
        t = inverse_cdf_timesteps(torch.cumsum(p, 0), batch_size, p.device)
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


class LogNormalTimesteps(UniformTimesteps):
    """EDM's log-normal noise levels on the schedule's grid (module docstring): P(t) is the mass of
    N(p_mean, p_std^2) on t's cell of ln sigma. Weight 1: EDM's loss weight is the parametrization's."""

    def __init__(self, num_timesteps: int, alphas_cumprod: Tensor, p_mean: float, p_std: float) -> None:
        super().__init__(num_timesteps)
        if not p_std > 0:
            raise ConfigError(f"objective.log_normal.p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        if abar.shape != (self.num_timesteps,):
            raise ValueError(f"alphas_cumprod has shape {tuple(abar.shape)}, expected ({self.num_timesteps},)")
        log_sigma = 0.5 * torch.log((1 - abar) / abar)  # increasing in t
        edges = (log_sigma[1:] + log_sigma[:-1]) / 2
        cdf = 0.5 * (1 + torch.erf((edges - self.p_mean) / (self.p_std * math.sqrt(2.0))))
        # P(t <= i): the log-normal's CDF at each cell's upper edge, the last cell's edge at +infinity
        self.register_buffer("cdf", torch.cat([cdf, cdf.new_ones(1)]), persistent=False)

    def probabilities(self) -> Tensor:
        """P(t) (T,) float64."""
        return torch.diff(self.cdf, prepend=self.cdf.new_zeros(1)).clamp(min=0)

    def sample(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        return inverse_cdf_timesteps(self.cdf, batch_size, device), None


def build_timestep_sampler(name: str, num_timesteps: int, loss_aware: dict | None,
                           log_normal: dict | None = None, alphas_cumprod: Tensor | None = None) -> UniformTimesteps:
    """The sampler `objective.timestep_sampler` names; loss_aware takes `objective.loss_aware`'s numbers,
    log_normal `objective.log_normal`'s (p_mean, p_std) and the schedule's alphas_cumprod."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"objective.timestep_sampler must be one of {TIMESTEP_SAMPLERS}, got {name!r}")
    if name == "uniform":
        return UniformTimesteps(num_timesteps)
    if name == "log_normal":
        if not log_normal or alphas_cumprod is None:
            raise ValueError("objective.timestep_sampler=log_normal needs objective.log_normal (p_mean, p_std: "
                             "conf/objective/edm.yaml) and the schedule")
        return LogNormalTimesteps(num_timesteps, alphas_cumprod, **log_normal)
    if not loss_aware:
        raise ValueError("objective.timestep_sampler=loss_aware needs objective.loss_aware "
                         "(history_per_term, uniform_prob: conf/objective/ddpm.yaml)")
    return LossSecondMomentTimesteps(num_timesteps, **loss_aware)
