"""What every sampler shares: the output type, the interface, chain frames and progress reporting."""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from ..diffusion import EpsModel, GaussianDiffusion, ModelOutput
from .spacing import spaced_timesteps

log = logging.getLogger(__name__)
Item = TypeVar("Item")
# called after every step with {"i": step index, "t": the visited t, "x": the new state, "denoised": x_0's estimate}
StepCallback = Callable[[dict], None]


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


def pick_frames(visited: Sequence[int], num_frames: int) -> list[int]:
    """About `num_frames` of the timesteps a sampler visits (descending), evenly spread, first and last kept."""
    if num_frames < 2:
        raise ValueError("a denoising chain needs at least 2 frames")
    idx = torch.linspace(0, len(visited) - 1, num_frames).round().long().tolist()
    return sorted({visited[i] for i in idx}, reverse=True)


def progress(steps: Iterable[Item], total: int, desc: str, enabled: bool) -> Iterator[Item]:
    """A progress bar on a terminal; elsewhere (log files, CI) a log line every ~10%, so a long sampling run
    never looks frozen."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(steps, total=total, desc=desc, leave=False)
        return
    every = max(total // 10, 1)
    for i, item in enumerate(steps):
        if enabled and total >= 100 and i % every == 0 and i:
            log.info("%s: step %d of %d", desc, i, total)
        yield item


class Sampler(ABC):
    """A sampler draws x_T ~ N(0, I) and maps it to x_0 with `num_steps` network calls (NFE) at the timesteps
    `self.timesteps` (descending, original indices of the training schedule)."""

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int | None = None, spacing: str = "trailing",
                 progress: bool = True, cap_at_num_timesteps: bool = False) -> None:
        """cap_at_num_timesteps: num_steps > T runs T steps, said in the log (training-time evaluation of a short
        schedule with a configured DDIM-50); otherwise num_steps > T is an error."""
        self.diffusion = diffusion
        self.num_steps = int(num_steps) if num_steps is not None else diffusion.num_timesteps
        if cap_at_num_timesteps and self.num_steps > diffusion.num_timesteps:
            log.warning("sampler.num_steps=%d > T=%d: sampling with %d steps", self.num_steps,
                        diffusion.num_timesteps, diffusion.num_timesteps)
            self.num_steps = diffusion.num_timesteps
        self.spacing = spacing
        self.progress = progress
        self.timesteps = spaced_timesteps(diffusion.num_timesteps, self.num_steps, spacing,
                                          diffusion.alphas_cumprod.detach().cpu().tolist())

    @property
    def nfe(self) -> int:
        """Network function evaluations per sample."""
        return len(self.timesteps)

    @abstractmethod
    def describe(self) -> str:
        """A short name with the settings that matter, e.g. "ddim(S=50, eta=0, trailing)"."""

    @abstractmethod
    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        """The state after the k-th network call: x at the next visited timestep (x_0 after the last).
        t: (B,) the visited timestep; out: the network's output there, read as eps (and a learned variance's
        fraction); state: kept across the calls of one run."""

    @torch.no_grad()
    def sample(self, model: EpsModel, shape: Sequence[int], generator: torch.Generator | None = None,
               record_timesteps: Sequence[int] = (), noise: Tensor | None = None,
               callback: StepCallback | None = None) -> SampleOutput:
        """Draw `shape[0]` samples from x_T = `noise` (else N(0, I) from `generator`); record the input x_t at each
        visited t in `record_timesteps`, then x_0; `callback` after every step (k-diffusion's convention)."""
        record = set(record_timesteps)
        x = noise if noise is not None else torch.randn(*shape, device=self.diffusion.betas.device, generator=generator)
        out, state = SampleOutput(images=x), {}
        steps = progress(enumerate(self.timesteps), self.nfe, f"sampling ({self.describe()})", self.progress)
        for k, t_int in steps:
            if t_int in record:
                out.chain.append(x.clone())
                out.chain_timesteps.append(t_int)
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
            read = self.diffusion.split_output(model(x, t), x, t)
            x_next = self.advance(k, t, read, x, generator, state)
            if callback is not None:
                denoised = self.diffusion.predict_x0_from_eps(x, t, read.eps)
                callback({"i": k, "t": t_int, "x": x_next, "denoised": denoised})
            x = x_next
        if record:
            out.chain.append(x.clone())
            out.chain_timesteps.append(-1)  # the final sample x_0
        out.images = x
        return out
