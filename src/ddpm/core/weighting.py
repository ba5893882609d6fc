"""How L_simple weighs the timesteps. DDPM's unweighted MSE on eps is one choice; Min-SNR-gamma (Hang et al. 2023)
caps the weight of the low-noise timesteps, whose easy targets otherwise dominate the gradient. Each weighting is
written once, in eps space (w_eps(t) on the eps MSE), and the parametrization says how that reads in the space the
network's target lives in (`Prediction.eps_mse_factor`): for Min-SNR that gives the paper's min(SNR, gamma) / SNR
for eps, min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v (tests/test_weighting.py). A new weighting is
a class here and a conf/objective/ file that names it under `weighting`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from ddpm.errors import ConfigError


class LossWeighting(ABC):
    name: ClassVar[str]

    @abstractmethod
    def eps_weight(self, snr: Tensor) -> Tensor:
        """w_eps at signal-to-noise ratio snr = abar_t / (1 - abar_t) (any shape, float64 recommended)."""


class MinSNR(LossWeighting):
    """w_eps = min(SNR, gamma) / SNR (Hang et al. 2023; gamma = 5 in the paper)."""

    name = "min_snr"

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ConfigError(f"objective.weighting.gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def eps_weight(self, snr: Tensor) -> Tensor:
        return snr.clamp(max=self.gamma) / snr
