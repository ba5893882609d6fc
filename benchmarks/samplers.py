"""Samplers on a trained checkpoint: FID against network evaluations (NFE), and how long 50,000 samples take.

    python benchmarks/samplers.py fid CKPT [--n 2000] [--batch 1000]        # the FID-vs-NFE table
    python benchmarks/samplers.py fid CKPT --ancestral 25 50 100 --no-warmup  # only respaced ancestral chains
    python benchmarks/samplers.py fid CKPT --ancestral 50 100 --frac 1         # learned_range: head replaced
    python benchmarks/samplers.py fid CKPT --save DIR                          # also keep every setting's samples
    python benchmarks/samplers.py diffusers [--n 10000] [--nfe 20]            # diffusers' DDIM / DPM-Solver++

`fid` draws `n` samples per setting from the EMA weights (same seeds for every setting), with the data set and
FID features of the checkpoint's run (`fid=classifier`: offline), after one untimed batch (compilation, CUDA
graphs); the time is that of sampling alone, and `s_per_50k` scales it to 50,000 samples. `--frac F` (a
learned_range checkpoint, ancestral chains) replaces the network's variance head by the constant frac = F -- 1:
sigma^2 = beta' (fixedlarge), 0: beta_tilde' (fixedsmall) -- so the same mean network is sampled with a fixed
variance: the ablation that separates what the learned variance buys from what L_hybrid did to the mean.
`diffusers` times diffusers' DDIMScheduler and DPMSolverMultistepScheduler with its UNet2DModel in the
ddpm-cifar10 configuration (random weights: the speed is the same), bf16 autocast and torch.compile, for
comparison with
`python eval.py ... sampler=dpm_solver sampler.num_steps=20 n_samples=50000 warmup_batches=1 'metrics=[]'`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = [  # (sampler config name, overrides): the table, plus training-time evaluation's default
    ("ancestral", {}),
    ("ancestral", {"num_steps": 250}), ("ancestral", {"num_steps": 100}), ("ancestral", {"num_steps": 50}),
    ("ddim", {"num_steps": 100}), ("ddim", {"num_steps": 50}), ("ddim", {"num_steps": 20}), ("ddim", {"num_steps": 10}),
    ("ddim", {"num_steps": 50, "eta": 1.0}),
    ("dpm_solver", {"num_steps": 25}), ("dpm_solver", {"num_steps": 20}), ("dpm_solver", {"num_steps": 15}),
    ("dpm_solver", {"num_steps": 10}),
]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load(ckpt: Path, perf: str | None = None, fid: str = "classifier", fid_overrides: tuple[str, ...] = ()):
    """The checkpoint's sampling pipeline (EMA weights) on the GPU (else CPU), its run's data module and the eval
    config's metrics (prepared: feature network and reference statistics). perf: a conf/perf plan name instead
    of the run's; fid / fid_overrides: the conf/fid option and overrides (e.g. fid.weights_path=...)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ddpm.io.checkpoint import read_checkpoint
    from ddpm.pipeline import SamplingPipeline
    from ddpm.tasks.evaluate import run_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "perf" / f"{perf}.yaml")) if perf else None
    pipeline = SamplingPipeline.from_checkpoint(ckpt, device, perf=plan)
    dm = instantiate(run_config(ckpt).data)
    dm.check()
    metrics = prepare_metrics(ckpt, dm, device, fid, fid_overrides)
    print(f"# {ckpt}: step {read_checkpoint(ckpt)['global_step']}, {dm.name}, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}", flush=True)
    return pipeline, dm, metrics


def prepare_metrics(ckpt: Path, dm, device: torch.device, fid: str = "classifier", overrides: tuple[str, ...] = ()):
    """SampleMetrics of eval.py's config with fid=<fid>, its reference statistics ready."""
    from hydra import compose, initialize_config_dir

    from ddpm.metrics import SampleMetrics
    from ddpm.tasks.config import to_plain

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt_path={ckpt}", "paths.output_dir=.", f"fid={fid}",
                                                      *overrides])
    metrics = SampleMetrics(**to_plain(cfg.fid))
    metrics.prepare(dm, device)
    return metrics


def make_sampler(pipeline, name: str, overrides: dict):
    """conf/sampler/<name>.yaml with `overrides`, for the pipeline's diffusion, without a progress bar."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "sampler" / f"{name}.yaml"), overrides)
    return instantiate(cfg, diffusion=pipeline.diffusion, progress=False)


def slug(name: str, overrides: dict) -> str:
    """A file name for a setting: ancestral, ddim-num_steps50-eta1.0, ..."""
    return "-".join([name] + [f"{k}{v}" for k, v in overrides.items()])


def fid_table(ckpt: Path, n: int, batch: int, seed: int, settings: list = SETTINGS, warmup: bool = True,
              perf: str | None = None, frac: float | None = None, save: Path | None = None) -> None:
    """save: a folder that receives each setting's samples as <prefix><slug>.npz (uint8 NHWC, key arr_0, as eval.py
    writes them), for scoring elsewhere (benchmarks/metric_quality.py sets)."""
    from ddpm.pipeline import SampleRequest

    pipeline, dm, metrics = load(ckpt, perf)
    rows = []
    for name, overrides in settings:
        extra = {} if frac is None else {"var_frac": frac}
        run = pipeline.with_sampler(make_sampler(pipeline, name, {**overrides, **extra}))
        sampler = run.sampler
        if warmup:  # untimed: compilation and graph capture
            run.sample(min(batch, n), seed=seed)
        sync()
        start = time.perf_counter()
        samples = run.draw(SampleRequest(n=n, batch_size=batch, seed=seed, keep=n), to_eval=dm.to_eval)
        sync()
        seconds = time.perf_counter() - start
        if save is not None:
            import numpy as np

            save.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(save / f"{slug(name, overrides)}.npz", arr_0=samples.images.permute(0, 2, 3, 1).numpy())
        metrics.update(samples.images.to(pipeline.device).float() / 127.5 - 1)
        result = metrics.compute(samples.n_total)
        row = {"sampler": sampler.describe(), "nfe": sampler.nfe, metrics.fid_name: round(result[metrics.fid_name], 4),
               "n": samples.n_total, "seconds": round(seconds, 2), "s_per_50k": round(seconds / n * 50_000, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0][metrics.fid_name]
    print(f"\n| sampler | NFE | {metrics.fid_name} (n={n}) | vs {rows[0]['sampler']} | s per 50k samples |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['nfe']} | {r[metrics.fid_name]:.3f} | {r[metrics.fid_name] / base - 1:+.1%} | "
              f"{r['s_per_50k']} |")


def diffusers_speed(n: int, nfe: int, batch: int) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                      block_out_channels=(128, 256, 256, 256),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).cuda().eval()
    fwd = torch.compile(net)
    for scheduler in (DDIMScheduler(num_train_timesteps=1000), DPMSolverMultistepScheduler(num_train_timesteps=1000)):

        def draw(b: int) -> torch.Tensor:
            scheduler.set_timesteps(nfe)
            x = torch.randn(b, 3, 32, 32, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                for t in scheduler.timesteps:
                    x = scheduler.step(fwd(x, t).sample, t, x).prev_sample
            return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

        start = time.perf_counter()
        draw(batch)
        sync()
        warmup, start = time.perf_counter() - start, time.perf_counter()
        for _ in range(math.ceil(n / batch)):
            draw(batch)
        sync()
        seconds = time.perf_counter() - start
        drawn = math.ceil(n / batch) * batch
        print(json.dumps({"impl": f"diffusers {type(scheduler).__name__}", "nfe": nfe, "n": drawn, "batch": batch,
                          "seconds": round(seconds, 2), "s_per_50k": round(seconds / drawn * 50_000, 1),
                          "warmup_seconds": round(warmup, 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fid")
    f.add_argument("ckpt", type=Path)
    f.add_argument("--n", type=int, default=2000)
    f.add_argument("--batch", type=int, default=1000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--ancestral", type=int, nargs="+", metavar="S",
                   help="only the respaced ancestral chain at these step counts (default: the whole table)")
    f.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one untimed batch per setting first (compilation, CUDA graphs); off for eager runs")
    f.add_argument("--perf", default=None, help="an execution plan of conf/perf (default: the checkpoint's)")
    f.add_argument("--frac", type=float, default=None,
                   help="learned_range with --ancestral: sample with the variance head replaced by this frac")
    f.add_argument("--save", type=Path, default=None, help="write each setting's samples as .npz into this folder")
    d = sub.add_parser("diffusers")
    d.add_argument("--n", type=int, default=10_000)
    d.add_argument("--nfe", type=int, default=20)
    d.add_argument("--batch", type=int, default=1250)
    args = p.parse_args()
    if args.what == "fid":
        settings = [("ancestral", {"num_steps": s}) for s in args.ancestral] if args.ancestral else SETTINGS
        if args.frac is not None and not args.ancestral:
            p.error("--frac applies to the ancestral chain: give --ancestral S ...")
        fid_table(args.ckpt, args.n, args.batch, args.seed, settings, args.warmup, args.perf, args.frac, args.save)
    else:
        diffusers_speed(args.n, args.nfe, args.batch)


if __name__ == "__main__":
    main()
