"""The optimizer with the DDPM recipe's linear warm-up, and gradient clipping that also reports the norm."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor

from ddpm.errors import ConfigError


def build_optimizer(cfg: dict[str, Any], params: Iterable[torch.nn.Parameter], fused: bool,
                    warmup_steps: int) -> dict[str, Any]:
    """`cfg` (any torch.optim class by `_target_`) with a linear warm-up from lr/warmup to lr over `warmup_steps`
    optimizer steps, then constant; Lightning's configure_optimizers format."""
    extra = {"fused": True} if fused else {}
    try:
        optimizer = instantiate(cfg, params=params, **extra)
    except InstantiationException as err:
        if not fused:
            raise
        raise ConfigError(f"optimizer {cfg['_target_']} has no fused implementation ({err.__cause__ or err}); "
                          "set perf.fused_optimizer=false") from err
    warmup = max(int(warmup_steps), 0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def clip_gradients(params: list[torch.nn.Parameter], clip_val: float | None, algorithm: str | None) -> Tensor | None:
    """Clip by global L2 norm ("norm", the default) or by value; returns the norm before clipping (None without
    gradients). One norm computation serves the clipping and the log."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    if clip_val and algorithm in (None, "norm"):
        torch.nn.utils.clip_grads_with_norm_(params, clip_val, norm)
    elif clip_val:
        torch.nn.utils.clip_grad_value_(params, clip_val)
    return norm
