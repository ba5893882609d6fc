"""diffusers interop, the schedule: a DDPMScheduler config as our scheduler config, reverse-process variance,
prediction target and sampler clipping, and back. What our diffusion does not have (another beta schedule family,
thresholding, a variance type of another sampler) is refused with one line naming the field."""

from __future__ import annotations

from typing import Any

from ddpm.core.parametrization import EpsPrediction, FixedLarge, FixedSmall, LearnedRange, VPrediction, X0Prediction
from ddpm.errors import ConfigError

SCHEDULES = {  # diffusers beta_schedule -> our scheduler config (their linspace is float32, ours float64)
    "linear": "ddpm.core.schedules.linear_betas", "scaled_linear": "ddpm.core.schedules.quadratic_betas",
    "squaredcos_cap_v2": "ddpm.core.schedules.cosine_betas",
}
# diffusers' names (theirs, spelled as diffusers spells them) -> ours (the parametrization's own names)
VARIANCES = {"fixed_large": FixedLarge.name, "fixed_small": FixedSmall.name, "learned_range": LearnedRange.name}
PREDICTIONS = {"epsilon": EpsPrediction.name, "sample": X0Prediction.name, "v_prediction": VPrediction.name}
SAMPLER = {"_target_": "ddpm.core.samplers.ancestral.AncestralSampler", "num_steps": None, "spacing": "trailing",
           "progress": True}


def scheduler_from_diffusers(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Our scheduler config, variance, prediction and sampler clipping for a DDPMScheduler config."""
    def refuse(field: str, value: Any) -> ConfigError:
        return ConfigError(f"{where}: DDPMScheduler {field}={value!r} has no counterpart in this framework")

    for field, want in (("thresholding", False), ("rescale_betas_zero_snr", False), ("clip_sample_range", 1.0)):
        if cfg.get(field, want) != want:
            raise refuse(field, cfg[field])
    for field, table in (("variance_type", VARIANCES), ("prediction_type", PREDICTIONS)):
        if cfg.get(field, "fixed_small" if field == "variance_type" else "epsilon") not in table:
            raise refuse(field, cfg[field])
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        scheduler = {"_target_": "ddpm.core.schedules.custom_betas", "betas": [float(b) for b in cfg["trained_betas"]]}
    else:
        name = cfg.get("beta_schedule", "linear")
        if name not in SCHEDULES:
            raise refuse("beta_schedule", name)
        scheduler = {"_target_": SCHEDULES[name], "num_timesteps": T}
        if name == "squaredcos_cap_v2":
            scheduler.update(s=0.008, max_beta=0.999)
        else:
            scheduler.update(beta_start=float(cfg.get("beta_start", 1e-4)), beta_end=float(cfg.get("beta_end", 0.02)),
                             scale_to_num_timesteps=False)
    return {"scheduler": scheduler, "variance_type": VARIANCES[cfg.get("variance_type", "fixed_small")],
            "prediction": PREDICTIONS[cfg.get("prediction_type", "epsilon")],
            "sampler": {**SAMPLER, "clip_denoised": bool(cfg.get("clip_sample", True))}}


def scheduler_to_diffusers(hp: dict[str, Any]) -> dict[str, Any]:
    """The DDPMScheduler config that reproduces a checkpoint's schedule, variance, prediction and clipping."""
    scheduler, target = dict(hp["scheduler"]), hp["scheduler"]["_target_"]
    names = {v: k for k, v in SCHEDULES.items()}
    if hp["prediction"] not in PREDICTIONS.values():
        raise ConfigError(f"module.prediction={hp['prediction']}: a diffusers DDPMScheduler reads eps, x0 or v "
                          "predictions only (EDM's preconditioned network has no UNet2DModel equivalent); sample it "
                          "with eval.py")
    out: dict[str, Any] = {"variance_type": {v: k for k, v in VARIANCES.items()}[hp["variance_type"]],
                           "prediction_type": {v: k for k, v in PREDICTIONS.items()}[hp["prediction"]],
                           "clip_sample": bool(hp["sampler"].get("clip_denoised", True)),
                           "timestep_spacing": "trailing"}
    exact = (target in names and not scheduler.get("scale_to_num_timesteps")
             and (target != "ddpm.core.schedules.cosine_betas" or (scheduler.get("s"), scheduler.get("max_beta"))
                  == (0.008, 0.999)))
    if exact:
        out.update(num_train_timesteps=int(scheduler["num_timesteps"]), beta_schedule=names[target])
        if target != "ddpm.core.schedules.cosine_betas":
            out.update(beta_start=float(scheduler["beta_start"]), beta_end=float(scheduler["beta_end"]))
        return out
    from ddpm.io.compat import instantiate  # any other schedule: its betas, written out

    betas = instantiate(scheduler)
    return {**out, "num_train_timesteps": len(betas), "trained_betas": betas.tolist()}
