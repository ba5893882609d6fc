"""What the network's output means, decided in one place (improved-diffusion's ModelMeanType / ModelVarType).

A `Parametrization` is a prediction (what the first C output channels regress onto: eps, x_0 or v) and a
variance (fixed, or learned from C more channels). It says how many channels the network returns, what L_simple
regresses onto, and how an output reads as `ModelOutput(eps, var_frac)` -- the one form every sampler, the bits/dim
bound and guidance take, so raw output is never mistaken for eps. `GaussianDiffusion` holds one and takes the
reverse-process variance from it; nothing else branches on the names. Formulas: docs/math.md (§2-§4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:  # the diffusion supplies the schedule's coefficients; it imports this module, not the reverse
    from ddpm.core.diffusion import GaussianDiffusion


@dataclass
class ModelOutput:
    """The network's output as eps (B, C, H, W) and learned_range's frac in [0, 1] (B, C, H, W), else None."""

    eps: Tensor
    var_frac: Tensor | None = None


# ----- predictions ------------------------------------------------------------------------------
class Prediction:
    name = ""

    def target(self, d: GaussianDiffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the network regresses onto in L_simple (MSE in the target's own space)."""
        raise NotImplementedError

    def to_eps(self, d: GaussianDiffusion, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        """The prediction as eps, for the x_t it was made from."""
        raise NotImplementedError

    def eps_mse_factor(self, snr: Tensor) -> Tensor:
        """MSE in eps space / MSE in this target's space, at signal-to-noise ratio snr = abar / (1 - abar): a
        weighting written in eps space weighs this target's MSE by its eps weight times this factor."""
        raise NotImplementedError

    def to_eps_at(self, x_t: Tensor, pred: Tensor, alpha: float, sigma: float) -> Tensor:
        """The prediction as eps for x_t = alpha x_0 + sigma eps at any noise level, a fractional t included
        (EDM's sampler between the trained timesteps): alpha = sqrt(abar), sigma = sqrt(1 - abar)."""
        raise NotImplementedError

    def wrap(self, net: nn.Module, d: GaussianDiffusion) -> nn.Module:
        """The network as this prediction calls it: itself, unless its input is conditioned too (EDM)."""
        return net


class EpsPrediction(Prediction):
    """DDPM: the network predicts the noise."""

    name = "eps"

    def target(self, d: GaussianDiffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return eps

    def eps_mse_factor(self, snr: Tensor) -> Tensor:
        return snr.new_ones(snr.shape)

    def to_eps(self, d: GaussianDiffusion, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        return pred

    def to_eps_at(self, x_t: Tensor, pred: Tensor, alpha: float, sigma: float) -> Tensor:
        return pred


class X0Prediction(Prediction):
    """The network predicts the clean image."""

    name = "x0"

    def target(self, d: GaussianDiffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return x0

    def eps_mse_factor(self, snr: Tensor) -> Tensor:  # x0 error = eps error / sqrt(snr)
        return snr

    def to_eps(self, d: GaussianDiffusion, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        return d.predict_eps_from_x0(x_t, t, pred)

    def to_eps_at(self, x_t: Tensor, pred: Tensor, alpha: float, sigma: float) -> Tensor:
        return (x_t - alpha * pred) / sigma


class VPrediction(Prediction):
    """Salimans & Ho (2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""

    name = "v"

    def target(self, d: GaussianDiffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return d.v_target(x0, t, eps)

    def eps_mse_factor(self, snr: Tensor) -> Tensor:  # v error = eps error / sqrt(abar), abar = snr / (1 + snr)
        return snr / (1 + snr)

    def to_eps(self, d: GaussianDiffusion, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        return d.predict_eps_from_v(x_t, t, pred)

    def to_eps_at(self, x_t: Tensor, pred: Tensor, alpha: float, sigma: float) -> Tensor:
        return sigma * x_t + alpha * pred  # v = alpha eps - sigma x_0 and x_t = alpha x_0 + sigma eps


class EDMPrediction(Prediction):
    """EDM's preconditioning (Karras et al. 2022, Table 1) on the schedule's noise levels. In EDM's variable
    x = x_t / sqrt(abar_t) = x_0 + sigma eps, sigma = sqrt((1 - abar_t) / abar_t), the denoiser is

        D(x; sigma) = c_skip x + c_out F(c_in x; c_noise),   c_skip = sd^2 / (sigma^2 + sd^2),
        c_out = sigma sd / sqrt(sigma^2 + sd^2),   c_in = 1 / sqrt(sigma^2 + sd^2),

    sd = sigma_data, the data's standard deviation. The network's input side (c_in x and c_noise, here the
    timestep t(sigma) as EDM's VP preconditioning uses: the U-Net's time embedding is built for that scale) is
    `EDMPreconditioned` (`wrap`); its output F is read here as eps = (x - D) / sigma. L_simple in F's space,
    unweighted, is EDM's loss: lambda(sigma) ||D - x_0||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2 equals
    ||F - F_target||^2 (lambda c_out^2 = 1). With sd = 1, F_target = -v."""

    name = "edm"

    def __init__(self, sigma_data: float) -> None:
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"module.sigma_data must be a number > 0 (the data's standard deviation in [-1, 1]: "
                             f"data.sigma_data), got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def target(self, d: GaussianDiffusion, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """F_target = (x_0 - c_skip x) / c_out = (sigma x_0 - sd^2 eps) / (sd sqrt(sigma^2 + sd^2))."""
        sigma, sd = d.at(d.sqrt_recipm1_alphas_cumprod, t, x0), self.sigma_data
        return (sigma * x0 - sd**2 * eps) / (sd * (sigma**2 + sd**2).sqrt())

    def _eps(self, x: Tensor, pred: Tensor, sigma: Tensor | float) -> Tensor:
        """eps = (x - D) / sigma = x sigma / (sigma^2 + sd^2) - sd F / sqrt(sigma^2 + sd^2), x in EDM's variable."""
        sd2 = self.sigma_data**2
        return x * (sigma / (sigma**2 + sd2)) - pred * (self.sigma_data / (sigma**2 + sd2) ** 0.5)

    def to_eps(self, d: GaussianDiffusion, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        x = d.at(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        return self._eps(x, pred, d.at(d.sqrt_recipm1_alphas_cumprod, t, x_t))

    def to_eps_at(self, x_t: Tensor, pred: Tensor, alpha: float, sigma: float) -> Tensor:
        return self._eps(x_t / alpha, pred, sigma / alpha)

    def eps_mse_factor(self, snr: Tensor) -> Tensor:  # eps error = -sd / sqrt(sigma^2 + sd^2) F error, sigma^2 = 1/snr
        sd2 = self.sigma_data**2
        return sd2 * snr / (1 + sd2 * snr)

    def wrap(self, net: nn.Module, d: GaussianDiffusion) -> nn.Module:
        from ddpm.core.preconditioning import EDMPreconditioned

        return EDMPreconditioned(net, self.sigma_data, d.alphas_cumprod)


# ----- variances --------------------------------------------------------------------------------
class Variance:
    """sigma_t^2 of p(x_{t-1} | x_t). Fixed ones are a table over t; `learned` ones read C extra channels."""

    name = ""
    learned = False

    def log_variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        raise NotImplementedError

    def variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        return self.log_variance(d, t, like, frac).exp()


class FixedLarge(Variance):
    """sigma_t^2 = beta_t (DDPM's CIFAR-10 choice), beta_tilde_1 at t = 0 for the decoder's likelihood."""

    name = "fixedlarge"

    def log_variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        return d.at(d.large_log_variance, t, like)

    def variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        return d.at(d.large_variance, t, like)


class FixedSmall(Variance):
    """sigma_t^2 = beta_tilde_t (DDPM's 256x256 models); log uses beta_tilde_1 at t = 0 (improved-diffusion)."""

    name = "fixedsmall"

    def log_variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        return d.at(d.posterior_log_variance_clipped, t, like)

    def variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        return d.at(d.posterior_variance, t, like)


class LearnedRange(Variance):
    """Improved DDPM: log sigma^2 = frac log beta_t + (1 - frac) log beta_tilde_t (clipped), frac = (v + 1) / 2
    per element from the network's C extra channels (beta_0 itself at t = 0, as improved-diffusion)."""

    name = "learned_range"
    learned = True

    def log_variance(self, d: GaussianDiffusion, t: Tensor, like: Tensor, frac: Tensor | None) -> Tensor:
        if frac is None:
            raise ValueError("variance_type=learned_range needs the network's variance channels (var_frac)")
        return frac * d.at(d.log_betas, t, like) + (1 - frac) * d.at(d.posterior_log_variance_clipped, t, like)


PREDICTIONS: dict[str, type[Prediction]] = {p.name: p for p in (EpsPrediction, X0Prediction, VPrediction,
                                                                 EDMPrediction)}
VARIANCES: dict[str, type[Variance]] = {v.name: v for v in (FixedLarge, FixedSmall, LearnedRange)}


@dataclass(frozen=True)
class Parametrization:
    prediction: Prediction
    variance: Variance

    @classmethod
    def of(cls, prediction: str = "eps", variance_type: str = "fixedlarge",
           sigma_data: float | None = None) -> Parametrization:
        """From the config's names (`module.prediction`, `module.variance_type`; `module.sigma_data` for edm)."""
        if variance_type not in VARIANCES:
            raise ValueError(f"module.variance_type must be one of {tuple(VARIANCES)}, got {variance_type!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"module.prediction must be one of {tuple(PREDICTIONS)}, got {prediction!r}")
        if prediction == EDMPrediction.name:
            return cls(EDMPrediction(sigma_data), VARIANCES[variance_type]())  # type: ignore[arg-type]
        if sigma_data is not None:
            raise ValueError(f"module.sigma_data is EDM's preconditioning (module.prediction=edm); prediction="
                             f"{prediction} does not read it: drop module.sigma_data or use objective=edm")
        return cls(PREDICTIONS[prediction](), VARIANCES[variance_type]())

    @property
    def sigma_data(self) -> float | None:
        """EDM's sigma_data for a preconditioned network, else None (what a checkpoint records)."""
        return getattr(self.prediction, "sigma_data", None)

    def wrap(self, net: nn.Module, d: GaussianDiffusion) -> nn.Module:
        """The network with the input side of its prediction's conditioning (EDM's c_in and c_noise), or itself."""
        return self.prediction.wrap(net, d)

    def out_channels(self, channels: int) -> int:
        """Channels the network returns for images of `channels` channels: 2C with a learned variance."""
        return 2 * channels if self.variance.learned else channels

    def check_output(self, out: Tensor, x_t: Tensor) -> None:
        c = x_t.shape[1]
        if out.shape[1] != self.out_channels(c) or out.shape[0] != x_t.shape[0] or out.shape[2:] != x_t.shape[2:]:
            need = f"2 x data.channels ({self.variance.name})" if self.variance.learned else "data.channels"
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}; its "
                             f"out_channels must be {need} = {self.out_channels(c)}")

    def network_config(self, model: dict[str, Any], channels: int) -> dict[str, Any]:
        """The network config with the output channels this parametrization reads (2C for a learned variance):
        decided here, not in the model YAMLs. A config or an old checkpoint that names another number is refused."""
        need, given = self.out_channels(channels), model.get("out_channels")
        if given is not None and int(given) != need:
            raise ValueError(f"model.out_channels={given}, but module.variance_type={self.variance.name} reads {need} "
                             "output channels for this data: drop model.out_channels")
        return {**model, "out_channels": need}

    def prediction_channels(self, out: Tensor, channels: int) -> Tensor:
        """The channels L_simple regresses and guidance mixes: the first C (the rest is the variance's)."""
        return out[:, :channels]

    def eps_at(self, out: Tensor, x_t: Tensor, alpha: float, sigma: float) -> Tensor:
        """The network's output at noise level (alpha, sigma) as eps; a learned variance's channels are not read
        (samplers that fix their own noise, EDM's)."""
        self.check_output(out, x_t)
        return self.prediction.to_eps_at(x_t, out[:, : x_t.shape[1]].to(x_t.dtype), alpha, sigma)

    def read(self, d: GaussianDiffusion, out: Tensor, x_t: Tensor, t: Tensor) -> ModelOutput:
        """The network's output (B, C or 2C, H, W) as eps and, for a learned variance, frac = (v + 1) / 2."""
        self.check_output(out, x_t)
        c = x_t.shape[1]
        pred = out[:, :c].to(x_t.dtype)
        frac = (out[:, c:].to(x_t.dtype) + 1) / 2 if self.variance.learned else None
        return ModelOutput(eps=self.prediction.to_eps(d, x_t, t, pred), var_frac=frac)
