"""Callbacks: sample evaluation (grid, denoising chain, FID, bits/dim), a last.ckpt that is never stale, the
progress bar, throughput."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch import Tensor
from torchvision.utils import save_image

from ddpm.core.images import frames_grid, to_grid
from ddpm.core.samplers import Sampler, chain_timesteps, pick_frames
from ddpm.data import image_of
from ddpm.errors import ConfigError
from ddpm.metrics import SampleMetrics
from ddpm.pipeline import SampleRequest
from ddpm.pipeline.evaluation import BitsPerDimRequest, evaluate_request
from ddpm.runtime import stop
from ddpm.training.compute import TrainingClock, append_evaluation, images_seen
from ddpm.training.loggers import log_image, report

log = logging.getLogger(__name__)


class SampleEvaluation(pl.Callback):
    """At every `every_n_validations`-th validation and at the end of training, draws samples from the
    EMA weights with fixed seeds (the module's `SamplingPipeline`, spread over all ranks) and, from that one set:
      - writes `out_dir/step_XXXXXXX.png` (and `final.png`), a grid of the first `n_grid`;
      - writes a denoising chain (x_T ... x_0 at `chain_frames` timesteps for `chain_samples` images);
      - computes FID (or its offline classifier variant), KID, IS on `fid_samples` samples;
      - computes bits/dim on the first `bpd_images` validation images (T network calls each).
    At the start of training it also writes a figure of the forward process on real images. Padded data is
    judged at its native size (the data module's `to_eval`). A stop signal skips the evaluation.
    """

    def __init__(self, out_dir: str, n_grid: int, nrow: int, seed: int, upscale: int, every_n_validations: int,
                 batch_size: int, chain_frames: int, chain_samples: int, fid: dict[str, Any] | None, fid_samples: int,
                 bpd_images: int, bpd_clip_denoised: bool, sampler: Callable[..., Sampler] | None = None,
                 guidance_scale: float = 0.0, classes: list[int] | None = None,
                 check_against_chain: bool = False) -> None:
        """sampler: a sampler without its diffusion (a partial), completed with the module's; None: the module's
        own sampler (the config's `sampler`). guidance_scale, classes: for class-conditional models, the
        classifier-free guidance w and the classes drawn (None: all), one grid row per class.
        check_against_chain: at the end of training, the FID once more with the run's own sampler."""
        self.out_dir = Path(out_dir)
        self.n_grid, self.nrow, self.seed, self.upscale = n_grid, nrow, seed, upscale
        self.every_n_validations, self.batch_size = every_n_validations, batch_size
        self.chain_frames, self.chain_samples = chain_frames, chain_samples
        self.metrics = SampleMetrics(**fid) if fid and fid_samples > 0 else None
        self.fid_samples, self.bpd_images, self.bpd_clip_denoised = fid_samples, bpd_images, bpd_clip_denoised
        self.make_sampler, self.sampler = sampler, None
        self.guidance_scale, self.classes = float(guidance_scale), classes
        self.check_against_chain = check_against_chain
        self._validations = 0
        self._last_grid: Path | None = None
        self._last_step = -1
        self.clock = TrainingClock()  # training seconds, evaluations left out

    # ----- hooks -------------------------------------------------------------------------------
    def bind(self, pl_module: pl.LightningModule) -> None:
        """Build the evaluation sampler on the module's diffusion: train.py calls this before the Trainer starts,
        so a bad `callbacks.sample_eval.sampler` option is one line before anything runs."""
        try:
            self.sampler = self._evaluation_sampler(pl_module.diffusion) if self.make_sampler else pl_module.sampler
        except ConfigError as err:  # the sampler says "sampler.<option>": here it is the evaluation sampler's
            raise ConfigError(f"callbacks.sample_eval.{err}") from err

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.start()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sampler is None or self.sampler.diffusion is not pl_module.diffusion:
            self.bind(pl_module)
        log.info("Evaluation sampler: %s, %d network calls per sample", self.sampler.describe(), self.sampler.nfe)
        if self.metrics is not None:  # on the device: Inception reference statistics are heavy
            self.metrics.prepare_on_ranks(trainer.datamodule, pl_module.device, trainer.is_global_zero,
                                          trainer.strategy.barrier)
        if trainer.is_global_zero and self.chain_frames > 1:
            self._forward_process_figure(trainer, pl_module)

    def _evaluation_sampler(self, diffusion) -> Sampler:
        """The configured sampler; with fewer timesteps T than its num_steps, T steps (said in the log and named in
        every caption and in val/<metric>_nfe)."""
        return self.make_sampler(diffusion=diffusion, cap_at_num_timesteps=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0:
            self.evaluate(trainer, pl_module, f"step_{trainer.global_step:07d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stop.requested() is not None:
            return
        if self._last_step != trainer.global_step:
            self.evaluate(trainer, pl_module, f"step_{trainer.global_step:07d}")
        if self.check_against_chain:
            self.compare_with_chain(trainer, pl_module)
        if trainer.is_global_zero and self._last_grid is not None:
            final = self.out_dir / "final.png"
            shutil.copyfile(self._last_grid, final)
            print(f"Samples: {final.resolve()}")

    # ----- work --------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> dict[str, float]:
        """One evaluation (module docstring), its figures logged beside the compute that reached them."""
        compute = {"val/train_seconds": self.clock.seconds(),
                   "val/images_seen": images_seen(trainer.global_step, trainer.datamodule.batch_size,
                                                  trainer.world_size, trainer.accumulate_grad_batches)}
        with self.clock.paused():
            results = self._evaluate(trainer, pl_module, name)
        if results:
            report(trainer, compute)
            if trainer.is_global_zero:
                append_evaluation(self.out_dir.parent, {"step": trainer.global_step, **compute, **results})
        return results

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> dict[str, float]:
        dm = trainer.datamodule
        sampler = self.sampler or pl_module.sampler
        chain = pick_frames(sampler.timesteps, self.chain_frames) if self.chain_frames > 1 else ()
        request = SampleRequest(n=max(self.fid_samples if self.metrics else 0, self.n_grid), batch_size=self.batch_size,
                                seed=self.seed, keep=self.n_grid, chain_timesteps=chain,
                                chain_samples=self.chain_samples, **self._conditioning(pl_module))
        bpd = (BitsPerDimRequest(dm.split("val"), self.bpd_images, self.seed, self.batch_size, self.bpd_clip_denoised)
               if self.bpd_images > 0 else None)
        evaluation = evaluate_request(pl_module.pipeline().with_sampler(sampler), request, trainer.global_rank,
                                      trainer.world_size, dm.to_eval, self.metrics, bpd, self._reduce_sum(trainer))
        samples = evaluation.samples
        if samples.aborted:
            return {}
        results = {f"val/{k}": v for k, v in evaluation.results.items()}
        if self.metrics is not None:
            results[f"val/{self.metrics.fid_name}_nfe"] = sampler.nfe  # network calls per sample
            if pl_module.num_classes is not None:
                results[f"val/{self.metrics.fid_name}_guidance_scale"] = self.guidance_scale
        if results:
            report(trainer, results)
        if trainer.is_global_zero:
            how = sampler.describe()
            if pl_module.num_classes is not None:
                how += f", one row per class, guidance w={self.guidance_scale:g}"
            self._write_figures(trainer, name, samples.images, samples.chain, how)
        self._last_step = trainer.global_step
        return results

    def compare_with_chain(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """The FID of the same request drawn by the run's own sampler (its full chain), logged beside the fast
        evaluator's last figure: val/<metric>_chain and val/<metric>_chain_nfe."""
        chain = pl_module.sampler
        if self.metrics is None or self.sampler is None or chain.describe() == self.sampler.describe():
            return {}
        request = SampleRequest(n=self.fid_samples, batch_size=self.batch_size, seed=self.seed,
                                **self._conditioning(pl_module))
        evaluation = evaluate_request(pl_module.pipeline(), request, trainer.global_rank, trainer.world_size,
                                      trainer.datamodule.to_eval, self.metrics)
        if evaluation.samples.aborted:
            return {}
        name = self.metrics.fid_name
        value = evaluation.results[name]
        results = {f"val/{name}_chain": value, f"val/{name}_chain_nfe": chain.nfe}
        report(trainer, results)
        fast = trainer.callback_metrics.get(f"val/{name}")
        log.info("%s of the evaluation sampler %s (%d NFE): %s; of the run's sampler %s (%d NFE): %.4g",
                 name, self.sampler.describe(), self.sampler.nfe, "n/a" if fast is None else f"{float(fast):.4g}",
                 chain.describe(), chain.nfe, value)
        return results

    @staticmethod
    def _reduce_sum(trainer: pl.Trainer) -> Callable[[Tensor], Tensor]:
        return lambda x: trainer.strategy.reduce(x, reduce_op="sum")

    def _conditioning(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        if pl_module.num_classes is None:
            return {}
        return {"classes": self.classes, "per_row": self.nrow, "guidance_scale": self.guidance_scale}

    def _write_figures(self, trainer: pl.Trainer, name: str, images: Tensor, chain: list[Tensor], how: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        grid = to_grid(images, self.nrow, self.upscale)
        self._last_grid = self.out_dir / f"{name}.png"
        save_image(grid, self._last_grid)
        log_image(trainer.loggers, "samples", self._last_grid, grid, f"EMA samples, step {trainer.global_step}, {how}",
                  trainer.global_step)
        if chain:
            path = self.out_dir / f"{name}_chain.png"
            cgrid = frames_grid(chain, self.upscale)
            save_image(cgrid, path)
            caption = f"x_T (left) ... x_0 (right), EMA weights, {how}"
            log_image(trainer.loggers, "denoising_chain", path, cgrid, caption, trainer.global_step)

    def _forward_process_figure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        val = dm.split("val")
        x0 = torch.stack([image_of(val[i]) for i in range(min(self.chain_samples, len(val)))]).to(pl_module.device)
        ts = chain_timesteps(pl_module.diffusion.num_timesteps, self.chain_frames)[::-1]  # 0 ... T-1
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        q = pl_module.diffusion.q_sample
        frames = [x0] + [q(x0, torch.full((len(x0),), t, device=x0.device), noise) for t in ts]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "forward_process.png"
        grid = frames_grid([dm.to_eval(f) for f in frames], self.upscale)
        save_image(grid, path)
        log_image(trainer.loggers, "forward_process", path, grid, f"x_0 (left), then q(x_t | x_0) at t = {ts}",
                  trainer.global_step)


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the final step, saved where periodic checkpoints are (at the
    end of a training batch, mid-epoch), so resuming it continues exactly, also after a stop signal.

    Lightning may keep last.ckpt at the last periodic save (every_n_train_steps=1000, max_steps=1500 would lose
    500 steps), and a save at the end of training records the epoch as finished (a resumed run would start the
    next epoch's order). Public API only: every save at the current step is seen through on_save_checkpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_at_step = -1

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.saved_at_step = trainer.global_step
        return super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        last_step = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        if trainer.should_stop or last_step:  # should_stop: preemption.GracefulStop, which runs before this
            self._save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_last(trainer)  # not Lightning's: it would overwrite the mid-epoch last.ckpt with an end-of-epoch one

    def _save_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and self.saved_at_step != trainer.global_step and self.dirpath is not None:
            path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
            trainer.save_checkpoint(path)
            self.last_model_path = path


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing train/loss as of the module's last NaN check (every
    module.check_every_n_steps): a float the check has already fetched, so the bar never waits for the GPU."""

    def get_metrics(self, trainer: pl.Trainer,
                    pl_module: pl.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        if getattr(pl_module, "checked_loss", None) is not None:
            metrics["train/loss"] = pl_module.checked_loss
        return metrics
