"""Training recipes at equal wall-clock: which reaches the better FID in the same GPU-seconds?

    # on the GPU: each recipe x seed trains for --budget seconds of train.py's clock (+trainer.max_time: start-up
    # of the fit and torch.compile included, each run from an empty compile cache), checkpoints every
    # --ckpt-every steps; then the EMA weights of every checkpoint draw --samples samples (the evaluator's sampler,
    # fixed seeds), all written to OUT/samples.npz (compressed, one array per run and checkpoint) + OUT/runs.json
    python benchmarks/recipes.py train --recipes ddpm,edm --seeds 0,1 --budget 240 --out OUT [-- OVERRIDES]
    python benchmarks/recipes.py sample --out OUT
    # on any machine: score every array with fd_resnet (all checkpoints) and Inception FID (the last ones), write
    # OUT/table.md and OUT/fid_vs_seconds.png
    python benchmarks/recipes.py score OUT [OUT ...] --inception
    # the same comparison on a 2-core CPU: the default run's model and data (digits), --budget 120
    python benchmarks/recipes.py train --preset digits-cpu --recipes ddpm,min_snr,edm --budget 120 \
        --ckpt-every 1000 --out OUT && python benchmarks/recipes.py sample --out OUT && \
        python benchmarks/recipes.py score OUT --data digits

The run's wall clock per checkpoint is the checkpoint file's write time since the process started, so the plot's
x-axis includes start-up and compilation. The model is the one the issue names: Fashion-MNIST zero-padded to 32x32,
unet_small with channel_mult [1,2,2,2] and 64 base channels (8.9M parameters), batch 128, bf16, perf=auto.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RUN = ["logger=csv", "~callbacks.sample_eval", "callbacks.progress_bar.refresh_rate=0", "trainer.max_steps=-1",
       "trainer.val_check_interval=100000000", "+trainer.limit_val_batches=0"]  # training only, until the clock
MODEL = ["data=fashion_mnist", "model=unet_small", "model.channel_mult=[1,2,2,2]", "model.base_channels=64",
         "data.batch_size=128", "trainer=gpu", "perf=auto", *RUN]
# --preset: the GPU model, or the default run's model and data on a CPU (python train.py's, 2 cores)
PRESETS = {"fmnist-gpu": MODEL, "digits-cpu": ["data=digits", *RUN]}
STARTUP = re.compile(r"start-up: (.*)")
RATE = re.compile(r"Throughput: median ([0-9.]+) img/s")


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = json.loads((out / "runs.json").read_text()) if (out / "runs.json").is_file() else {}
    budget = time.strftime("%H:%M:%S", time.gmtime(args.budget))
    for recipe in args.recipes.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = f"{recipe}-s{seed}"
            run_dir = out / name
            cmd = [sys.executable, str(ROOT / "train.py"), *PRESETS[args.preset], f"objective={recipe}", f"seed={seed}",
                   f"+trainer.max_time=00:{budget}",
                   f"callbacks.model_checkpoint.every_n_train_steps={args.ckpt_every}",
                   f"paths.output_dir={run_dir}", f"perf.compile_cache_dir={out / 'compile_cache' / name}",
                   *args.overrides]
            began = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            wall = time.time() - began
            log = proc.stdout + proc.stderr
            (out / f"{name}.log").write_text(log)
            if proc.returncode != 0:
                print(log[-4000:])
                raise SystemExit(f"{name}: train.py exited {proc.returncode}")
            ckpts = sorted((run_dir / "checkpoints").glob("step_*.ckpt"))
            last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True,
                              mmap=True)
            runs[name] = {"recipe": recipe, "seed": seed, "wall_seconds": round(wall, 1), "steps": last["global_step"],
                          "checkpoints": {c.name: round(c.stat().st_mtime - began, 1) for c in ckpts}
                          | {"last.ckpt": round((run_dir / "checkpoints" / "last.ckpt").stat().st_mtime - began, 1)},
                          "startup": STARTUP.findall(log), "img_per_s": [float(r) for r in RATE.findall(log)][-1:],
                          "command": " ".join(cmd[1:])}
            print(json.dumps({name: runs[name]}), flush=True)
            (out / "runs.json").write_text(json.dumps(runs, indent=1))


def sample(args: argparse.Namespace) -> None:
    """Every checkpoint's EMA samples, cropped to the data's native size, as uint8 (N, H, W, C)."""
    from ddpm.io.checkpoint import network_weights, read_checkpoint
    from ddpm.io.compat import instantiate, upgrade_data_config
    from ddpm.pipeline import SampleRequest, SamplingPipeline
    from ddpm.pipeline.evaluation import evaluate_request
    from ddpm.tasks.config import compose, to_plain

    out = Path(args.out)
    runs = json.loads((out / "runs.json").read_text())
    sampler = {**to_plain(compose("train", [f"sampler={args.sampler}"], ROOT / "conf").sampler), "progress": False}
    arrays: dict[str, np.ndarray] = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in runs:
        run_dir = out / name
        from omegaconf import OmegaConf

        data = upgrade_data_config(to_plain(OmegaConf.load(run_dir / "config.yaml").data))
        datamodule = instantiate({**data, **({"source_dir": args.source_dir} if args.source_dir else {})})
        pipe = None
        for ckpt_name in runs[name]["checkpoints"]:
            path = run_dir / "checkpoints" / ckpt_name
            if pipe is None:  # one compiled network per run; later checkpoints load into it
                # eager bf16: a few batches per checkpoint do not repay a compilation
                pipe = SamplingPipeline.from_checkpoint(path, device, sampler=sampler,
                                                        perf={**to_plain(compose("train", ["perf=auto"],
                                                                                 ROOT / "conf").perf),
                                                              "compile": False})
            else:
                pipe.net.load_state_dict(network_weights(read_checkpoint(path), "ema"))
            began = time.perf_counter()
            drawn = evaluate_request(pipe, SampleRequest(n=args.samples, batch_size=args.batch, seed=args.seed,
                                                         keep=args.samples), to_eval=datamodule.to_eval)
            arrays[f"{name}/{ckpt_name}"] = drawn.samples.images.permute(0, 2, 3, 1).numpy()
            print(f"{name}/{ckpt_name}: {args.samples} samples in {time.perf_counter() - began:.1f} s", flush=True)
    np.savez_compressed(out / "samples.npz", **arrays)


def score(args: argparse.Namespace) -> None:
    """fd_resnet for every array, Inception FID for each run's last checkpoint; the table and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from metric_quality import score as score_images
    from metric_quality import setup

    runs, arrays = {}, {}
    for d in (Path(p) for p in args.dirs):
        runs.update(json.loads((d / "runs.json").read_text()))
        with np.load(d / "samples.npz") as f:
            arrays.update({k: f[k] for k in f.files})
    scores: dict[str, dict[str, float]] = {k: {} for k in arrays}
    fids = ["classifier"] + (["inception"] if args.inception else [])
    for fid in fids:
        dm, metrics = setup(args.data, fid, args.overrides, args.device)
        for key, images in arrays.items():
            if fid == "inception" and not key.endswith("last.ckpt"):
                continue
            r = score_images(metrics, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), args.device)
            scores[key][metrics.fid_name] = r[metrics.fid_name]
            print(key, metrics.fid_name, round(r[metrics.fid_name], 3), flush=True)
    out = Path(args.dirs[0])
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    names = sorted({k for s in scores.values() for k in s})
    lines = ["| run | steps | wall s | img/s | " + " | ".join(names) + " |", "|---" * (4 + len(names)) + "|"]
    by_recipe: dict[str, list[dict[str, float]]] = {}
    for name, run in runs.items():
        final = scores[f"{name}/last.ckpt"]
        by_recipe.setdefault(run["recipe"], []).append(final)
        rate = run["img_per_s"][-1] if run["img_per_s"] else float("nan")
        lines.append(f"| {name} | {run['steps']} | {run['wall_seconds']} | {rate:.0f} | "
                     + " | ".join(f"{final.get(n, float('nan')):.3f}" for n in names) + " |")
    lines += ["", "| recipe | " + " | ".join(f"mean {n}" for n in names) + " | " + " | ".join(
        f"{n} / ddpm" for n in names) + " |", "|---" * (1 + 2 * len(names)) + "|"]
    means = {r: {n: float(np.mean([s[n] for s in v if n in s])) for n in names} for r, v in by_recipe.items()}
    for recipe, m in means.items():
        base = means.get("ddpm", {})
        lines.append(f"| {recipe} | " + " | ".join(f"{m[n]:.3f}" for n in names) + " | "
                     + " | ".join(f"{m[n] / base[n]:.2f}" if n in base else "" for n in names) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {r: f"C{i}" for i, r in enumerate(by_recipe)}  # one colour per recipe, one line style per seed
    for name, run in runs.items():
        pts = sorted((secs, scores[f"{name}/{c}"]["fd_resnet"]) for c, secs in run["checkpoints"].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colors[run["recipe"]],
                linestyle=["-", "--", ":", "-."][run["seed"] % 4])
    ax.set(xlabel="wall-clock seconds since the process started", ylabel="fd_resnet (2000 EMA samples)",
           yscale="log", title="Recipes at equal wall-clock")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_seconds.png", dpi=120)


def main(argv: list[str]) -> None:
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--recipes", default="ddpm,edm")
    t.add_argument("--seeds", default="0,1")
    t.add_argument("--budget", type=int, default=240, help="seconds of +trainer.max_time per run")
    t.add_argument("--ckpt-every", type=int, default=2500, help="optimizer steps between checkpoints")
    t.add_argument("--out", required=True)
    t.add_argument("--preset", choices=sorted(PRESETS), default="fmnist-gpu")
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--samples", type=int, default=2000)
    s.add_argument("--batch", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sampler", default="dpm_solver_sde", help="a conf/sampler option (the evaluator's default)")
    s.add_argument("--source-dir", default=None, help="the data's files, where they are not where the run read them")
    c = sub.add_parser("score")
    c.add_argument("dirs", nargs="+")
    c.add_argument("--data", default="fashion_mnist")
    c.add_argument("--inception", action="store_true", help="also Inception FID of each run's last checkpoint")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.overrides = overrides
    {"train": train, "sample": sample, "score": score}[args.cmd](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
