"""Samplers: turn an eps-prediction network into images.

A sampler is built from a `GaussianDiffusion` and is called with the network, the batch shape and a
generator. New samplers (DDIM, respaced chains) implement `Sampler.sample` and reuse the diffusion's
closed forms; nothing here trains or logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .diffusion import EpsModel, GaussianDiffusion


@dataclass
class SampleOutput:
    """Final samples x_0 (B, C, H, W) and, if asked for, the chain x_t at chosen timesteps."""

    images: Tensor
    chain: list[Tensor] = field(default_factory=list)  # each (B, C, H, W): the input x_t at each recorded t
    chain_timesteps: list[int] = field(default_factory=list)  # recorded t, descending; -1 marks the final x_0


def chain_timesteps(num_timesteps: int, num_frames: int) -> list[int]:
    """About `num_frames` timesteps evenly spaced from T-1 down to 0, for a denoising-chain figure."""
    if num_frames < 2:
        raise ValueError("a denoising chain needs at least 2 frames")
    ts = torch.linspace(num_timesteps - 1, 0, num_frames).round().long().tolist()
    return sorted(set(ts), reverse=True)


class Sampler(ABC):
    """Interface every sampler implements."""

    def __init__(self, diffusion: GaussianDiffusion, progress: bool = True) -> None:
        self.diffusion = diffusion
        self.progress = progress

    @abstractmethod
    def sample(
        self,
        model: EpsModel,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        record_timesteps: Sequence[int] = (),
    ) -> SampleOutput:
        """Draw `shape[0]` samples; record the input x_t at each t in `record_timesteps`, then x_0."""


class AncestralSampler(Sampler):
    """DDPM Algorithm 2: x_T ~ N(0, I); for t = T-1..0, x_{t-1} ~ p(x_{t-1} | x_t); T network calls."""

    def __init__(self, diffusion: GaussianDiffusion, clip_denoised: bool = True, progress: bool = True) -> None:
        super().__init__(diffusion, progress)
        self.clip_denoised = clip_denoised

    @torch.no_grad()
    def sample(
        self,
        model: EpsModel,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        record_timesteps: Sequence[int] = (),
        noise: Tensor | None = None,
    ) -> SampleOutput:
        device = self.diffusion.betas.device
        x = noise if noise is not None else torch.randn(*shape, device=device, generator=generator)
        record = set(record_timesteps)
        out = SampleOutput(images=x)
        steps = range(self.diffusion.num_timesteps - 1, -1, -1)
        for t_int in tqdm(steps, desc="sampling", disable=None if self.progress else True, leave=False):
            if t_int in record:
                out.chain.append(x.clone())
                out.chain_timesteps.append(t_int)
            t = torch.full((x.shape[0],), t_int, device=device, dtype=torch.long)
            step = self.diffusion.p_mean_variance(model(x, t), x, t, clip_denoised=self.clip_denoised)
            z = torch.randn(x.shape, device=device, generator=generator) if t_int > 0 else torch.zeros_like(x)
            x = self.diffusion.p_sample_step(step, t, z)
        if record:
            out.chain.append(x.clone())
            out.chain_timesteps.append(-1)  # the final sample x_0
        out.images = x
        return out
