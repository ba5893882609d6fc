"""The sampling pipeline: a network, the diffusion that reads its output, and a sampler -- outside Lightning.

One object draws samples for everyone: the LightningModule (`DiffusionModule.pipeline()`), the training-time
evaluation callback, eval.py, the notebooks and the benchmarks. `SamplingPipeline.from_checkpoint(path)` builds it
from a checkpoint with no Trainer and no Hydra run (EMA weights by default); `draw(request)` runs a whole
`SampleRequest` sharded over ranks:

rank r draws ceil(n / world) samples in batches seeded derive_seed(seed, r, batch), feeds them to the metrics
(torchmetrics sums the statistics over ranks) and keeps the first `keep` as uint8. A class-conditional model
draws sample i (global index) of class classes[(i // per_row) % len(classes)]: a grid of `per_row` images per
row has one row per class. Bits/dim takes every world-th held-out image and sums over ranks. Samples of padded
data are cropped back to the native size (`to_eval`) before anything sees them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ddpm.core import likelihood
from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.guidance import check_conditioning, class_labels, guided
from ddpm.core.images import quantize
from ddpm.core.samplers import SampleOutput, Sampler, StepCallback
from ddpm.io.compat import instantiate
from ddpm.runtime import stop
from ddpm.runtime.rng import derive_seed

ReduceSum = Callable[[Tensor], Tensor]  # sums a tensor over ranks (identity on one process)


@dataclass(frozen=True)
class SampleRequest:
    """What one evaluation asks for: n samples over all ranks in batches of `batch_size` from `seed`, the first
    `keep` kept as uint8; for a class-conditional model the classes drawn (None: all, in turn, `per_row` per grid
    row) and the guidance w; `null_label`: draw every sample with the network's null label (the unconditional
    model classifier-free guidance trains alongside) while the metrics still see the class layout asked for;
    the denoising chain of the first batch at `chain_timesteps` for `chain_samples` images."""

    n: int
    batch_size: int = 256
    seed: int = 0
    keep: int = 0
    classes: Sequence[int] | None = None
    per_row: int = 8
    guidance_scale: float = 0.0
    null_label: bool = False
    chain_timesteps: Sequence[int] = ()
    chain_samples: int = 0


@dataclass
class Samples:
    """What one request drew: the kept samples (uint8, (K, C, H, W), CPU), the denoising chain of the first
    batch (frames (B, C, H, W) in [-1, 1]), and how many were drawn over all ranks; aborted on a stop signal."""

    images: Tensor
    chain: list[Tensor] = field(default_factory=list)
    n_total: int = 0
    aborted: bool = False


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Dropout off for the duration, the previous mode restored afterwards, also on an exception."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def build_network(model: dict[str, Any], scheduler: dict[str, Any], image_shape: Sequence[int],
                  variance_type: str = "fixedlarge", prediction: str = "eps",
                  sigma_data: float | None = None) -> tuple[GaussianDiffusion, nn.Module, dict[str, Any]]:
    """The diffusion of `scheduler` and the network of `model` with as many output channels as the
    parametrization needs (decided here, for training and for every checkpoint loaded), wrapped in its input
    conditioning if it has one (EDM's), and that network config."""
    diffusion = GaussianDiffusion(instantiate(scheduler), variance_type=variance_type, prediction=prediction,
                                  sigma_data=sigma_data)
    model = diffusion.parametrization.network_config(model, int(image_shape[0]))
    return diffusion, diffusion.parametrization.wrap(instantiate(model), diffusion), model


class SamplingPipeline:
    """`net` (the EMA network) + `diffusion` (whose parametrization reads the output as eps) + `sampler`, for
    images of `image_shape`. forward: the view of `net` that sampling calls (compiled for CUDA graphs by the
    execution plan; default `net`); bits/dim calls `net` itself (its last chunk has another shape).
    sample_bf16: the network runs under bf16 autocast (the chain's arithmetic stays fp32)."""

    def __init__(self, net: nn.Module, diffusion: GaussianDiffusion, sampler: Sampler, image_shape: Sequence[int],
                 sample_bf16: bool = False, forward: nn.Module | None = None) -> None:
        self.net, self.diffusion, self.sampler = net, diffusion, sampler
        self.forward = forward if forward is not None else net
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sample_bf16 = sample_bf16

    @property
    def num_classes(self) -> int | None:
        """K for a class-conditional network (labels 0..K-1, K = null), None for an unconditional one."""
        return getattr(self.net, "num_classes", None)

    @property
    def device(self) -> torch.device:
        return self.diffusion.betas.device

    def with_sampler(self, sampler: Sampler | None) -> SamplingPipeline:
        """The same network and diffusion with another sampler (None: this one)."""
        if sampler is None:
            return self
        return SamplingPipeline(self.net, self.diffusion, sampler, self.image_shape, self.sample_bf16, self.forward)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                        sampler: dict[str, Any] | None = None, perf: dict[str, Any] | None = None,
                        scheduler: dict[str, Any] | None = None,
                        contents: dict[str, Any] | None = None, weights: str | None = None) -> SamplingPipeline:
        """The checkpoint's EMA network (use_ema=False: the trained one) on `device`, its diffusion and sampler
        (`sampler`: another sampler config, its diffusion filled in) and its execution plan (`perf`: another).
        Every checkpoint this framework wrote loads, old ones through `compat.upgrade_hparams`; so does a diffusers
        DDPM folder or hf:<id> (`checkpoint.read_checkpoint`; scheduler: the schedule of a bare UNet folder).
        contents: the checkpoint as already read (a caller that read it to check it need not read or convert it
        again). weights: "ema", "net" or a tracked power-function EMA's sigma_rel ("0.05"); None: as use_ema says."""
        from ddpm.io.checkpoint import network_weights, read_checkpoint
        from ddpm.io.compat import upgrade_hparams
        from ddpm.runtime.perf import resolve_plan

        ckpt = contents if contents is not None else read_checkpoint(path, scheduler)
        hp = upgrade_hparams(dict(ckpt["hyper_parameters"]))
        diffusion, net, _ = build_network(hp["model"], hp["scheduler"], hp["image_shape"], hp["variance_type"],
                                          hp["prediction"], hp.get("sigma_data"))
        net.load_state_dict(network_weights(ckpt, weights or ("ema" if use_ema else "net")))
        device = torch.device(device)
        net, diffusion = net.to(device).requires_grad_(False).eval(), diffusion.to(device)
        plan = resolve_plan(perf if perf is not None else hp["perf"], device)
        chosen = instantiate(sampler if sampler is not None else hp["sampler"], diffusion=diffusion)
        forward = plan.compile_network(net, sampling=True)
        return cls(net, diffusion, chosen, hp["image_shape"], plan.sample_bf16, forward)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, guidance_scale: float = 0.0,
               record_timesteps: Sequence[int] = (), callback: StepCallback | None = None) -> SampleOutput:
        """n samples (n, C, H, W) in [-1, 1], dropout off, by seed. A conditional model samples `labels` (n,)
        (default: classes 0..K-1 in turn) with classifier-free guidance w = guidance_scale (0: the conditional
        model). callback: called after every sampler step (`samplers.StepCallback`)."""
        check_conditioning(self.num_classes, labels, guidance_scale)
        with eval_mode(self.net):
            net: Any = self.forward
            if self.num_classes is not None:
                labels = labels if labels is not None else torch.arange(n) % self.num_classes
                net = guided(net, labels.to(self.device), guidance_scale)
            g = torch.Generator(device=self.device).manual_seed(seed)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.sample_bf16):
                return self.sampler.sample(net, (n, *self.image_shape), generator=g,
                                           record_timesteps=record_timesteps, callback=callback)

    @torch.no_grad()
    def draw(self, request: SampleRequest, rank: int = 0, world: int = 1,
             to_eval: Callable[[Tensor], Tensor] = lambda x: x, metrics: Any = None) -> Samples:
        """This rank's share of the request; every sample fed to `metrics` (with the labels asked for, for class
        accuracy), `request.keep` of them kept."""
        k, r = self.num_classes, request
        classes = check_conditioning(k, classes=r.classes, guidance_scale=r.guidance_scale)
        per_rank = math.ceil(r.n / world)
        kept: list[Tensor] = []
        out = Samples(images=torch.empty(0, dtype=torch.uint8), n_total=per_rank * world)
        for i, start in enumerate(range(0, per_rank, r.batch_size)):
            if stop.requested() is not None:
                out.aborted = True
                return out
            record = r.chain_timesteps if i == 0 else ()
            b = min(r.batch_size, per_rank - start)
            asked = None if k is None else class_labels(torch.arange(b) + rank * per_rank + start, classes, r.per_row)
            labels = torch.full((b,), self.net.null_label, dtype=torch.long) if r.null_label else asked
            drawn = self.sample(b, seed=derive_seed(r.seed, rank, i), labels=labels,
                                guidance_scale=r.guidance_scale, record_timesteps=record)
            images = to_eval(drawn.images.float())
            if record:
                out.chain = [to_eval(frame[: r.chain_samples].float()).cpu() for frame in drawn.chain]
            if metrics is not None:
                metrics.update(images, asked)
            if sum(len(x) for x in kept) < r.keep:
                kept.append(quantize(images).cpu())
        out.images = torch.cat(kept)[: r.keep] if kept else out.images
        return out

    @torch.no_grad()
    def bits_per_dim(self, split: Any, n_images: int, seed: int, batch_size: int, clip_denoised: bool,
                     rank: int = 0, world: int = 1, reduce_sum: ReduceSum = lambda x: x) -> dict[str, float]:
        """The full variational bound on the first n_images of `split` (T network calls each), this rank's share
        (every world-th image), summed over ranks: mean bits/dim, its prior and decoder parts, and the count."""
        from ddpm.data import image_of

        idx = list(range(rank, min(n_images, len(split)), world))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # total, prior, decoder, count
        if idx:
            x0 = torch.stack([image_of(split[i]) for i in idx]).to(self.device)
            g = torch.Generator(device=self.device).manual_seed(seed)
            with eval_mode(self.net) as net:
                out = likelihood.bits_per_dim(self.diffusion, net, x0, clip_denoised, chunk=batch_size, generator=g)
            sums = torch.stack([out["total"].sum(), out["prior"].sum(), out["decoder"].sum(),
                                torch.tensor(float(len(idx)), dtype=torch.float64, device=self.device)])
        total, prior, decoder, count = reduce_sum(sums).tolist()
        return {"bpd": total / count, "bpd_prior": prior / count, "bpd_decoder": decoder / count, "bpd_n": int(count)}
