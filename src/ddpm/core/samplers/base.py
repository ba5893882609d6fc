"""What every sampler shares: the output type, the one sampling loop, chain frames and progress reporting.

The contract (k-diffusion's: a sampler is its update rule; the loop, the chain frames and the callback are shared):
a sampler visits `timesteps` (descending) and defines `step`, the update from the state before step k to the state
after it, calling the network as often as its method needs (once by default, through `advance`; twice for Heun).
A sampler that works in another variable than x_t (EDM's x / sqrt(abar)) also defines `start` and `model_scale`.
Its `name` is the conf/sampler/ file that configures it, and its `nfe` the network calls per sample. A new
sampler is its module and its YAML file (tests/test_sampler_contract.py runs every YAML file).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor

from ddpm.core.diffusion import EpsModel, GaussianDiffusion, ModelOutput
from ddpm.core.progress import progress
from ddpm.core.samplers.spacing import spaced_timesteps

log = logging.getLogger(__name__)
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


class Sampler(ABC):
    """A sampler draws x_T ~ N(0, I) and maps it to x_0 in `len(timesteps)` steps at the timesteps `self.timesteps`
    (descending, original indices of the training schedule), `nfe` network calls per sample."""

    name: ClassVar[str]  # the conf/sampler/<name>.yaml that configures it

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
        """Network function evaluations per sample (one per step unless `step` makes more)."""
        return len(self.timesteps)

    def describe(self) -> str:
        """The name with the settings that matter, e.g. "ddim(S=50, eta=0, trailing)"."""
        return f"{self.name}({self.settings()})"

    @abstractmethod
    def settings(self) -> str:
        """The settings that matter, for `describe`: "S=50, eta=0, trailing"."""

    # ----- the update rule ---------------------------------------------------------------------
    def start(self, x_T: Tensor) -> Tensor:
        """The state the loop starts from: x_T itself for a sampler that works on x_t."""
        return x_T

    def model_scale(self, x: Tensor, k: int) -> Tensor:
        """The state before step k (k = len(timesteps): the result) as x_t, the variable the network sees: the
        chain frames and the callback show this. x itself for a sampler that works on x_t."""
        return x

    def step(self, model: EpsModel, k: int, x: Tensor, generator: torch.Generator | None, state: dict,
             need_denoised: bool = False) -> tuple[Tensor, Tensor | None]:
        """The state after step k and, if `need_denoised`, the step's estimate of x_0 (else None). state: kept
        across the steps of one run. The default calls the network once at timesteps[k] and hands its output,
        read as eps (and a learned variance's fraction), to `advance` with the state."""
        t = torch.full((x.shape[0],), self.timesteps[k], device=x.device, dtype=torch.long)
        x_t = self.model_scale(x, k)
        read = self.diffusion.split_output(model(x_t, t), x_t, t)
        x_next = self.advance(k, t, read, x, generator, state)
        return x_next, (self.diffusion.predict_x0_from_eps(x_t, t, read.eps) if need_denoised else None)

    def advance(self, k: int, t: Tensor, out: ModelOutput, x: Tensor, generator: torch.Generator | None,
                state: dict) -> Tensor:
        """The state after step k, for a sampler whose step is one network call: x at the next visited timestep
        (x_0 after the last), in the sampler's variable. t: (B,) the visited timestep; out: the network's output
        there, read as eps."""
        raise NotImplementedError(f"{type(self).__name__} defines neither step nor advance")

    # ----- the loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: EpsModel, shape: Sequence[int], generator: torch.Generator | None = None,
               record_timesteps: Sequence[int] = (), noise: Tensor | None = None,
               callback: StepCallback | None = None) -> SampleOutput:
        """Draw `shape[0]` samples from x_T = `noise` (else N(0, I) from `generator`); record x_t (the network's
        scale) before each visited t in `record_timesteps`, then x_0; `callback` after every step (k-diffusion's
        convention: {"i", "t", "x": the new state as x_t, "denoised": the step's x_0 estimate})."""
        record = set(record_timesteps)
        x_T = noise if noise is not None else torch.randn(*shape, device=self.diffusion.betas.device,
                                                          generator=generator)
        x, state = self.start(x_T), {}
        out = SampleOutput(images=x_T)
        steps = progress(enumerate(self.timesteps), len(self.timesteps), f"sampling ({self.describe()})",
                         self.progress)
        for k, t_int in steps:
            if t_int in record and t_int not in out.chain_timesteps:
                out.chain.append(self.model_scale(x, k).clone())
                out.chain_timesteps.append(t_int)
            x, denoised = self.step(model, k, x, generator, state, need_denoised=callback is not None)
            if callback is not None:
                callback({"i": k, "t": t_int, "x": self.model_scale(x, k + 1), "denoised": denoised})
        out.images = self.model_scale(x, len(self.timesteps))
        if record:
            out.chain.append(out.images.clone())
            out.chain_timesteps.append(-1)  # the final sample x_0
        return out
