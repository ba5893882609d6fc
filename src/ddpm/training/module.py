"""The LightningModule: glue between Lightning and the owners of each concept.

The math is `diffusion.py`'s, what the network's output means `parametrization.py`'s, the loss and the choice of
t `objective.py`'s, sampling `pipeline.py`'s, the averaging `ema.py`'s, execution choices `perf.py`'s, exact
resume `resume.py`'s, old checkpoints `compat.py`'s. The constructor takes plain configs (dicts with `_target_`)
and saves exactly those as hyperparameters, so a checkpoint loads with `torch.load(..., weights_only=True)` and
`DiffusionModule.load_from_checkpoint(path)` rebuilds the network with no Hydra run around it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from ddpm.core.guidance import conditional
from ddpm.core.objective import Objective, finite_loss, training_losses, uniform_timesteps
from ddpm.data.order import unpack_batch
from ddpm.io.compat import MODULE_DEFAULTS as OLD
from ddpm.io.compat import instantiate, legacy_objective, legacy_perf
from ddpm.nn.ema import EMA, PowerEMA
from ddpm.pipeline import SamplingPipeline, build_network
from ddpm.runtime.perf import ExecutionPlan, resolve_plan
from ddpm.training.optim import build_optimizer, clip_gradients
from ddpm.training.resume import ExactResume


class DiffusionModule(pl.LightningModule):
    def __init__(self, model: dict[str, Any], scheduler: dict[str, Any], sampler: dict[str, Any],
                 optimizer: dict[str, Any], image_shape: Sequence[int], variance_type: str, lr_warmup_steps: int,
                 ema_decay: float, ema_warmup: bool, val_seed: int, check_every_n_steps: int,
                 perf: dict[str, Any] | None = None, prediction: str = OLD["prediction"],
                 objective: dict[str, Any] | None = None, sigma_data: float | None = None,
                 ema_profiles: Sequence[float] = (), **legacy: Any) -> None:
        """perf: the `perf` config group (None: eager fp32). check_every_n_steps: how often the loss is checked
        for NaN and the per-quarter losses are logged (each check waits for the GPU); 0 never. prediction: eps | x0
        | v | edm (sigma_data: EDM's preconditioning, the data's standard deviation); objective: the `objective`
        config group (`core/objective.py`); ema_profiles: the sigma_rel of each power-function EMA tracked
        beside `ema` (EDM2; eval.py ema=<sigma_rel> or ema=all). The defaults are the values of
        checkpoints saved before these keys existed; older checkpoints' module-level keys are read by
        `io/compat.py`."""
        super().__init__()
        perf = perf if perf is not None else legacy_perf(legacy)  # checkpoints saved before the perf group
        objective = objective if objective is not None else legacy_objective(legacy)  # ... before its group
        if legacy:
            raise TypeError(f"DiffusionModule got unexpected arguments {sorted(legacy)}")
        self.save_hyperparameters()
        self.hparams["perf"], self.hparams["objective"] = perf, objective
        self.diffusion, self.net, self.hparams["model"] = build_network(model, scheduler, image_shape, variance_type,
                                                                        prediction, sigma_data)
        weighting = (objective or {}).get("weighting")
        self.objective = Objective(self.diffusion, objective, self.num_classes, getattr(self.net, "null_label", None),
                                   instantiate(weighting) if weighting else None)
        self.timestep_sampler = self.objective.timestep_sampler  # a submodule: its history is checkpointed
        # part of state_dict: checkpointed and restored with the network, used for every sample
        self.ema = EMA(self.net, ema_decay, ema_warmup).requires_grad_(False)
        self.ema_profiles = torch.nn.ModuleList(PowerEMA(self.net, s).requires_grad_(False) for s in ema_profiles)
        self.sampler = instantiate(sampler, diffusion=self.diffusion)
        self.image_shape = tuple(image_shape)
        self.checked_loss: float | None = None  # train/loss at the last NaN check (shown by LossProgressBar)
        self._plan: ExecutionPlan | None = None
        self._plan_fixed = False  # resolved for a Trainer's device (setup), until teardown
        self.resume = ExactResume()
        self.__dict__["_compiled"] = {}  # compiled views of net / ema.module: no duplicate state_dict keys

    @property
    def num_classes(self) -> int | None:
        """K for a class-conditional network (labels 0..K-1, K = null), None for an unconditional one."""
        return getattr(self.net, "num_classes", None)

    # ----- the execution plan ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The plan, resolved once for the Trainer's device and handed to the data module. (The data is checked
        against the model's classes once, before the Trainer is built: `tasks/train.py`.)"""
        self._plan = resolve_plan(self.hparams.perf, self.trainer.strategy.root_device, str(self.trainer.precision))
        self._plan_fixed = True
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            datamodule.plan = self._plan

    def teardown(self, stage: str) -> None:
        self._plan_fixed = False

    def set_perf(self, perf: dict[str, Any] | None) -> None:
        """Another execution plan (e.g. eval.py perf=auto); execution only: weights and math are unchanged."""
        self.hparams["perf"] = perf
        self._plan, self._plan_fixed = None, False
        self._compiled.clear()

    @property
    def plan(self) -> ExecutionPlan:
        """Resolved once for the Trainer's device (setup); without a Trainer, for the device the module is on."""
        if self._plan is None or (not self._plan_fixed and self._plan.device.type != self.device.type):
            self._plan = resolve_plan(self.hparams.perf, self.device)
            self._compiled.clear()
        return self._plan

    def configure_model(self) -> None:
        """channels_last: NHWC parameters (no transposes eager, no NHWC-to-NCHW .grad copies compiled; the host
        time this saves: benchmarks/RESULTS.md), set before DDP wraps the network and the optimizer is built."""
        if self.plan.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.ema.module.to(memory_format=torch.channels_last)
            for profile in self.ema_profiles:
                profile.module.to(memory_format=torch.channels_last)

    def network(self, which: str) -> torch.nn.Module:
        """The training net ("train") or the EMA net ("sample"), compiled on first use as the plan says."""
        if which not in self._compiled:
            net = self.net if which == "train" else self.ema.module
            self._compiled[which] = self.plan.compile_network(net, sampling=which != "train")
        return self._compiled[which]

    # ----- training ----------------------------------------------------------------------------
    def training_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        images, labels = unpack_batch(batch)
        images = images.contiguous(memory_format=self.plan.batch_memory_format)
        if self.plan.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last step's graph outputs may be reused
        out = self.objective(self.network("train"), images, labels, gather=self.all_gather)
        self._last_loss = out.loss.detach()
        every = self.hparams.check_every_n_steps
        if every and self.global_step % every == 0:
            self.checked_loss = finite_loss(out.loss, self.global_step)
            for q, (mean, count) in out.by_quarter(self.diffusion.num_timesteps).items():  # train/loss_q0: least noise
                self.log(f"train/loss_q{q}", mean, on_step=True, on_epoch=False, batch_size=count)
            for name, value in out.parts.items():  # L_hybrid's parts (vlb: L_t in bits/dim)
                self.log(f"train/{name}", value.detach().mean(), on_step=True, on_epoch=False)
        # Not prog_bar=True: Lightning turns progress-bar tensors into floats at every step, a wait for the GPU.
        self.log("train/loss", out.loss, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return out.loss

    @cached_property
    def _net_parameters(self) -> list[torch.nn.Parameter]:
        """The network's parameters, listed once (a module walk costs host time per step)."""
        return list(self.net.parameters())

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip (trainer.gradient_clip_val) and log train/grad_norm, the norm before clipping. Done here, not by
        Lightning, so fused optimizers clip too. Lightning calls this after the gradients are unscaled."""
        norm = clip_gradients(self._net_parameters, gradient_clip_val, gradient_clip_algorithm)
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then move the EMA towards the new weights (once per optimizer step, also with accumulation)."""
        super().optimizer_step(*args, **kwargs)
        self.ema.step(self.net, self.global_step - 1)  # global_step already counts this step
        for profile in self.ema_profiles:
            profile.step(self.net, self.global_step - 1)

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.hparams.optimizer, self.net.parameters(), self.plan.fused_optimizer,
                               self.hparams.lr_warmup_steps)

    # ----- exact resume (resume.py) ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        last = getattr(self, "_last_loss", None)
        self.resume.save(self.trainer, checkpoint, lambda: last is not None and finite_loss(last, self.global_step))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resume.load(checkpoint)

    def on_train_start(self) -> None:
        self.resume.start(self.trainer)

    # ----- validation and sampling -------------------------------------------------------------
    def validation_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        """The training loss of the EMA network on held-out images (true labels), with t and noise fixed by seed
        for comparable curves."""
        images, labels = unpack_batch(batch)
        g = torch.Generator(device=images.device).manual_seed(self.hparams.val_seed + batch_idx)
        t = uniform_timesteps(self.diffusion.num_timesteps, images.shape[0], images.device, generator=g)
        noise = torch.randn(images.shape, device=images.device, generator=g, dtype=images.dtype)
        loss = training_losses(self.diffusion, conditional(self.ema.module, labels), images, t=t, noise=noise,
                               vlb_weight=self.objective.vlb_weight, loss=self.objective.loss,
                               weighting=self.objective.weighting).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        return loss

    def pipeline(self, use_ema: bool = True) -> SamplingPipeline:
        """The EMA network (compiled as the plan says; use_ema=False: the trained one, eager) with the diffusion
        and the module's sampler: what every sample of this module is drawn by."""
        if not use_ema:
            return SamplingPipeline(self.net, self.diffusion, self.sampler, self.image_shape)
        return SamplingPipeline(self.ema.module, self.diffusion, self.sampler, self.image_shape,
                                self.plan.sample_bf16, forward=self.network("sample"))
