"""Samplers: turn an eps-prediction network into images.

Each is built from a `GaussianDiffusion` and called with the network, the batch shape and a generator; every
one runs on every checkpoint (training is the same). `AncestralSampler`: DDPM's T steps, or a respaced chain of
S steps; `DDIMSampler`: DDIM with eta; `DPMSolverSampler`: DPM-Solver++(2M), ODE or SDE;
`EDMSampler`: Karras et al.'s Heun sampler with churn, the model seen as a denoiser. Nothing here trains or logs.
"""

from ddpm.core.samplers.ancestral import AncestralSampler, respaced
from ddpm.core.samplers.base import SampleOutput, Sampler, StepCallback, chain_timesteps, pick_frames
from ddpm.core.samplers.ddim import DDIMSampler
from ddpm.core.samplers.dpm_solver import DPMSolverSampler
from ddpm.core.samplers.edm import EDMSampler
from ddpm.core.samplers.spacing import SPACINGS, spaced_timesteps

__all__ = ["AncestralSampler", "DDIMSampler", "DPMSolverSampler", "EDMSampler", "SPACINGS", "SampleOutput", "Sampler",
           "StepCallback", "chain_timesteps", "pick_frames", "respaced", "spaced_timesteps"]
