"""A model trained here, exported to diffusers, sampled by diffusers' DDPMPipeline and by our pipeline: same FID?

    python benchmarks/diffusers_roundtrip.py CKPT --out DIR [--n 5000] [--batch 1000] [--fid classifier]

Exports CKPT (EMA weights) with export.py's code to DIR/exported, then draws n samples with diffusers'
DDPMPipeline (its DDPMScheduler, the full T-step chain, its own noise) and n with our 1000-step ancestral sampler
(SamplingPipeline, two seeds: the spread between them is the sampling noise at this n), all scored by the same
metric against the run's data. TF32 is off; `--perf cpu` samples ours in eager fp32 like diffusers'
pipeline. Prints one JSON line per set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from samplers import ROOT, prepare_metrics, sync


def main() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ddpm.pipeline import SampleRequest, SamplingPipeline
    from ddpm.tasks.evaluate import run_config
    from ddpm.tasks.export import export

    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--fid", default="classifier")
    p.add_argument("--perf", default=None, help="a conf/perf plan for our sampler (default: the checkpoint's)")
    args = p.parse_args()
    import diffusers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = export(OmegaConf.create({"ckpt_path": str(args.ckpt), "format": "diffusers", "out": str(args.out /
                                      "exported"), "use_ema": True, "overwrite": True}))
    dm = instantiate(run_config(args.ckpt).data)
    dm.check()
    metrics = prepare_metrics(args.ckpt, dm, device, args.fid)
    chain = {"_target_": "ddpm.core.samplers.ancestral.AncestralSampler", "num_steps": None, "clip_denoised": True,
             "progress": False}
    plan = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "perf" / f"{args.perf}.yaml")) if args.perf else None
    ours = SamplingPipeline.from_checkpoint(args.ckpt, device, sampler=chain, perf=plan)
    for seed in (0, 1):
        sync()
        start = time.perf_counter()
        drawn = ours.draw(SampleRequest(n=args.n, batch_size=args.batch, seed=seed), to_eval=dm.to_eval,
                          metrics=metrics)
        sync()
        row = {"sampler": f"ours: {ours.sampler.describe()}, seed {seed}", "n": drawn.n_total,
               metrics.fid_name: round(metrics.compute(drawn.n_total)[metrics.fid_name], 4),
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row), flush=True)
    pipe = diffusers.DDPMPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    sync()
    start, done = time.perf_counter(), 0
    while done < args.n:
        b = min(args.batch, args.n - done)
        g = torch.Generator(device=device).manual_seed(1000 + done)
        out = pipe(batch_size=b, generator=g, num_inference_steps=pipe.scheduler.config.num_train_timesteps,
                   output_type="np").images  # (B, H, W, C) in [0, 1]
        images = torch.from_numpy(out).permute(0, 3, 1, 2).to(device) * 2 - 1
        metrics.update(dm.to_eval(images))
        done += b
    sync()
    row = {"sampler": f"diffusers DDPMPipeline ({type(pipe.scheduler).__name__}, "
                      f"{pipe.scheduler.config.num_train_timesteps} steps)", "n": done,
           metrics.fid_name: round(metrics.compute(done)[metrics.fid_name], 4),
           "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    torch.backends.cudnn.allow_tf32 = False  # both sides in full fp32 (diffusers' network is not autocast)
    torch.backends.cuda.matmul.allow_tf32 = False
    main()
