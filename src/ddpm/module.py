"""The LightningModule: L_simple training, warm-up, EMA, and sampling from the EMA weights.

Its constructor takes plain configs (dicts with `_target_`), builds the network, schedule and sampler
from them, and saves exactly those dicts as hyperparameters. A checkpoint therefore holds only
tensors and plain values, reloads with `torch.load(..., weights_only=True)`, and
`DiffusionModule.load_from_checkpoint(path)` rebuilds the same network with no Hydra run around it.
"""

from __future__ import annotations

import logging
import math
import random
from functools import cached_property
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import ConfigError, UserError
from .diffusion import GaussianDiffusion
from .samplers import SampleOutput

log = logging.getLogger(__name__)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; raised before the step is applied or checkpointed."""


class EMA(AveragedModel):
    """torch's AveragedModel with get_ema_multi_avg_fn, updated without reading `n_averaged` on the host.

    AveragedModel.update_parameters tests `n_averaged == 0` on the device tensor, which waits for the GPU
    at every step. Here the caller passes the decay as a host float (0 on the first update: a copy, as in
    AveragedModel) and the lerp is the same foreach kernel; `n_averaged` still counts, on the device."""

    def update_parameters(self, model: torch.nn.Module, decay: float) -> None:  # type: ignore[override]
        update = get_ema_multi_avg_fn(decay)  # no_grad inside: the tensors need no detach
        for ema_tensors, model_tensors in self._tensor_lists(model):
            update(ema_tensors, model_tensors, None)
        self.n_averaged += 1

    def _tensor_lists(self, model: torch.nn.Module) -> list[tuple[list[Tensor], list[Tensor]]]:
        """(EMA tensors, model tensors) for the float and the other tensors, built once per model.

        Walking both module trees costs milliseconds of Python per step, more than the GPU needs for the lerp.
        The Parameter and buffer objects outlive .to() and load_state_dict (both change .data in place), so
        the lists stay valid; torch's update lerps float lists and blends the others, never a mix."""
        cached = self.__dict__.get("_lists")  # kept out of the module tree: no submodule, no state_dict entry
        if cached is None or cached[0] is not model:
            pairs = list(zip((*self.module.parameters(), *self.module.buffers()), (*model.parameters(), *model.buffers())))
            groups = [[(e, n) for e, n in pairs if e.is_floating_point() == floating] for floating in (True, False)]
            cached = (model, [([e for e, _ in g], [n for _, n in g]) for g in groups if g])
            self.__dict__["_lists"] = cached
        return cached[1]


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments, SGD's momentum) its parameter's strides.

    Fused multi-tensor kernels walk a parameter and its state as flat memory: an NCHW exp_avg next to an
    NHWC parameter would update each weight with another weight's moments, silently (torch 2.14, CPU and
    CUDA). This happens when a checkpoint saved from NCHW parameters resumes with channels_last on."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        scheduler: dict[str, Any],
        sampler: dict[str, Any],
        optimizer: dict[str, Any],
        image_shape: Sequence[int],
        variance_type: str = "fixedlarge",
        lr_warmup_steps: int = 0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        val_seed: int = 0,
        compile: bool | str = False,
        compile_mode: str = "default",
        channels_last: bool | str = False,
        fused_optimizer: bool | str = False,
        sample_precision: str = "32",
        check_every_n_steps: int = 1,
    ) -> None:
        """compile / channels_last / fused_optimizer: True, False or "auto" (on when training on a CUDA device).
        compile_mode: torch.compile's mode for the training network ("default", "reduce-overhead" = CUDA graphs,
        "max-autotune-no-cudagraphs", "max-autotune"); sampling always uses CUDA graphs ("reduce-overhead").
        sample_precision: "32", "bf16" or "auto" (bf16 autocast on CUDA). check_every_n_steps: how often the
        loss is checked for NaN and the per-quarter losses are logged (each check waits for the GPU)."""
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"module.compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if str(sample_precision) not in ("32", "bf16", "auto"):  # Hydra reads `sample_precision=32` as an int
            raise ValueError(f"module.sample_precision must be 32, bf16 or auto, got {sample_precision!r}")
        self.save_hyperparameters()
        self.net = instantiate(model)
        self.diffusion = GaussianDiffusion(instantiate(scheduler), variance_type=variance_type)
        # EMA from torch.optim.swa_utils: a foreach lerp per step; part of state_dict, so it is
        # checkpointed and restored with the model and used for every sample.
        self.ema = EMA(self.net, use_buffers=True)
        self.ema.requires_grad_(False)
        self.sampler = instantiate(sampler, diffusion=self.diffusion)
        self.image_shape = tuple(image_shape)
        self.checked_loss: float | None = None  # train/loss at the last NaN check, fetched from the GPU there
        # compiled views of net / ema.module, kept out of the module tree (no duplicate state_dict keys)
        self.__dict__["_compiled"] = {}

    # ----- speed (execution only: the math and the checkpoints are the same either way) -----------
    def _on_cuda(self) -> bool:
        """Training (or sampling) on a CUDA device: the Trainer's device once attached (configure_model runs
        before the module is moved there), else the module's own."""
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        return device.type == "cuda"

    def _enabled(self, option: bool | str) -> bool:
        return self._on_cuda() if option == "auto" else bool(option)

    def _memory_format(self) -> torch.memory_format:
        """The batch's layout: NHWC in eager channels_last mode. Compiled, the batch stays NCHW (the graph
        lays its activations out NHWC itself)."""
        eager_channels_last = self._enabled(self.hparams.channels_last) and not self._enabled(self.hparams.compile)
        return torch.channels_last if eager_channels_last else torch.contiguous_format

    def configure_model(self) -> None:
        """With channels_last, the parameters are NHWC in both modes: eager convolutions then need no layout
        transposes, and under compile the graph's NHWC weight gradients need no copy into NCHW .grad tensors
        (3-4 ms of host time per step on an H100). Done here, before DDP wraps the network and the optimizer
        is built, so DDP's gradient buckets are laid out like the parameters."""
        if self._enabled(self.hparams.channels_last):
            self.net.to(memory_format=torch.channels_last)
            self.ema.module.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        """Runs after Lightning has restored a checkpoint's optimizer state (on_fit_start runs before)."""
        for optimizer in self.trainer.optimizers:
            match_state_layout(optimizer)  # a resumed state may come from NCHW parameters

    def on_fit_start(self) -> None:
        if self._trainer is not None and self.trainer.world_size > 1 and not getattr(self, "_rng_restored", False):
            # seed_everything gives every rank the same seed, so each rank would draw the same t, eps and dropout
            # masks for its different images. DDP has already broadcast rank 0's weights: re-seeding changes
            # only those draws, and makes them independent across ranks.
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def _uses_cuda_graphs(self) -> bool:
        mode = self.hparams.get("compile_mode", "default")
        return self._on_cuda() and self._enabled(self.hparams.compile) and \
            bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))

    def _network(self, which: str):
        """The training net or the EMA net, compiled on first use when `compile` is on.

        channels_last with compile: Inductor keeps every activation NHWC inside the graph. Its own heuristic
        skips this U-Net (some convolutions halve the channels), and cuDNN then transposes around each conv;
        the batch stays NCHW outside the graph (the parameters are NHWC: configure_model)."""
        net = self.net if which == "train" else self.ema.module
        if not self._enabled(self.hparams.compile):
            return net
        if which not in self._compiled:
            # sampling runs the same shapes T times: CUDA graphs remove the launch overhead there
            mode = self.hparams.get("compile_mode", "default") if which == "train" else "reduce-overhead"
            options = dict(torch._inductor.list_mode_options(mode if self._on_cuda() else "default"))
            if self._enabled(self.hparams.channels_last):
                options["force_layout_optimization"] = True
            self._compiled[which] = torch.compile(net, options=options or None, dynamic=False)
        return self._compiled[which]

    # ----- training ----------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        batch = batch.contiguous(memory_format=self._memory_format())
        t = self.diffusion.sample_timesteps(batch.shape[0], batch.device)
        if self._uses_cuda_graphs():
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last step's graph outputs may be reused
        losses = self.diffusion.training_losses(self._network("train"), batch, t=t)  # (B,)
        loss = losses.mean()
        self._last_loss = loss.detach()
        if self.global_step % self.hparams.check_every_n_steps == 0:
            self.checked_loss = self._check_finite(loss)  # shown by the progress bar (LossProgressBar)
            self._log_loss_by_quarter(losses.detach(), t)
        # Not prog_bar=True: Lightning turns progress-bar tensors into floats at every step, a wait for the GPU
        # that showed as 8.5 ms of host time per step in Trainer.fit on an H100 (benchmarks/RESULTS.md).
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        return loss

    def _check_finite(self, loss: Tensor) -> float:
        """The loss as a float (this waits for the GPU); NonFiniteLossError if it is NaN or infinite."""
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at step {self.global_step}; the last checkpoint is kept. "
                "Lower optimizer.lr, keep gradient clipping on, use bf16-mixed rather than 16-mixed, "
                "and check that the data lies in [-1, 1]."
            )
        return value

    def _log_loss_by_quarter(self, losses: Tensor, t: Tensor) -> None:
        """train/loss_q0..q3: L_simple over each quarter of the t range (q0 = least noise)."""
        quarter = (t * 4) // self.diffusion.num_timesteps
        sums = torch.zeros(4, device=losses.device).index_add_(0, quarter, losses.float())
        counts = torch.bincount(quarter, minlength=4)
        for q, (s, c) in enumerate(zip(sums.tolist(), counts.tolist())):
            if c:
                self.log(f"train/loss_q{q}", s / c, on_step=True, on_epoch=False, batch_size=c)

    @cached_property
    def _net_parameters(self) -> list[torch.nn.Parameter]:
        """The network's parameters as a list, built once: walking the module tree costs host time per step
        (stored in the instance __dict__, so it is no submodule and no state_dict entry)."""
        return list(self.net.parameters())

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip (trainer.gradient_clip_val) and log train/grad_norm, the global L2 norm before clipping.

        Done here rather than by Lightning: one norm computation serves both, and fused optimizers work
        (Lightning refuses to clip for them, for the sake of fp16 loss scaling; configure_optimizers refuses
        that one combination). Lightning calls this after the gradients are unscaled."""
        params = self._net_parameters
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        elif gradient_clip_val:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then move the EMA towards the new weights (once per optimizer step, also with accumulation)."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema(self.global_step - 1)  # global_step already counts this step

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of the update after optimizer step `step` (0-based): 0 at step 0 (the EMA starts as a
        copy of the trained weights), then ema_decay. With ema_warmup, min(ema_decay, (1 + step) / (10 + step)),
        the warm-up of TF's ExponentialMovingAverage(num_updates) and diffusers' EMAModel: the random initial
        weights stop dominating early samples (with 0.999 and no warm-up they weigh 0.999^1000 = 37% at step 1000)."""
        if step <= 0:
            return 0.0
        decay = float(self.hparams.ema_decay)
        return min(decay, (1 + step) / (10 + step)) if self.hparams.get("ema_warmup") else decay

    def update_ema(self, step: int) -> None:
        self.ema.update_parameters(self.net, self.ema_decay_at(step))

    def configure_optimizers(self) -> dict[str, Any]:
        fused = {"fused": True} if self._enabled(self.hparams.get("fused_optimizer", False)) else {}
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"  # None: no Trainer
        if fused and precision == "16-mixed":
            raise ConfigError("module.fused_optimizer cannot be combined with trainer.precision=16-mixed (the fused "
                              "step unscales the gradients after clipping); use bf16-mixed or fused_optimizer=false")
        try:
            optimizer = instantiate(self.hparams.optimizer, params=self.net.parameters(), **fused)
        except InstantiationException as err:
            if not fused:
                raise
            raise ConfigError(f"optimizer {self.hparams.optimizer['_target_']} has no fused implementation "
                              f"({err.__cause__ or err}); set module.fused_optimizer=false") from err
        warmup = max(int(self.hparams.lr_warmup_steps), 0)
        # Linear warm-up from lr/warmup to lr over `warmup` steps, then constant (the DDPM recipe).
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----- exact resume ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The RNG streams that draw t, eps and dropout masks, so a resumed run draws what the original would.
        A non-finite last loss stops the save: no checkpoint with NaN weights replaces a good one."""
        if getattr(self, "_last_loss", None) is not None:
            self._check_finite(self._last_loss)
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                                    "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank's streams (this runs on all ranks)
            per_rank: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(per_rank, checkpoint["rng_states"])
            checkpoint["rng_states_per_rank"] = per_rank
        for logger in self.loggers:  # a resumed run continues the same W&B run
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        per_rank = checkpoint.get("rng_states_per_rank") or [states]
        if len(per_rank) == world:
            states = per_rank[self.global_rank]
            self._rng_restored = True
        else:  # another number of processes than the run that saved it: on_fit_start gives each rank its own seed
            log.warning("checkpoint saved by %d process(es), resumed on %d: training continues, but not with the "
                        "random draws of an uninterrupted run", len(per_rank), world)
        torch.set_rng_state(states["torch"])
        random.setstate((states["python_version"], tuple(states["python"]), states["python_gauss"]))
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])

    # ----- validation --------------------------------------------------------------------------
    def validation_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """L_simple of the EMA network on held-out images, with t and noise fixed by seed for comparable curves."""
        g = torch.Generator(device=batch.device).manual_seed(self.hparams.val_seed + batch_idx)
        t = self.diffusion.sample_timesteps(batch.shape[0], batch.device, generator=g)
        noise = torch.randn(batch.shape, device=batch.device, generator=g, dtype=batch.dtype)
        loss = self.diffusion.training_losses(self.ema.module, batch, t=t, noise=noise).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=batch.shape[0], sync_dist=True)
        return loss

    # ----- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, use_ema: bool = True, record_timesteps: Sequence[int] = ()) -> SampleOutput:
        """n samples (n, C, H, W) in [-1, 1] from the EMA network (dropout off), reproducible by seed."""
        base = self.ema.module if use_ema else self.net
        was_training = base.training
        base.eval()
        net = self._network("sample") if use_ema else base
        bf16 = self.hparams.sample_precision == "bf16" or (self.hparams.sample_precision == "auto" and self._on_cuda())
        try:
            g = torch.Generator(device=self.device).manual_seed(seed)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                return self.sampler.sample(net, (n, *self.image_shape), generator=g, record_timesteps=record_timesteps)
        finally:
            base.train(was_training)
