"""Scale-out on one host: training img/s and seconds per optimizer step on 1, 2 and 4 GPUs, and the sharded
evaluation (eval.py over the same GPUs), each against one GPU measured by the same call.

    # training: unet_small and unet_base, batch 128 per GPU, bf16, the execution plan on (perf=auto), synthetic
    # 32x32x3 data (no loader in the way); 1 GPU runs trainer=gpu, N > 1 trainer=ddp trainer.devices=N
    python3 benchmarks/scaling.py train --gpus 1,2,4 --models unet_small,unet_base --scopes model,regional \
        --steps 600 --out OUT [-- OVERRIDES]
    # evaluation: eval.py on CKPT with n_samples images (FID as the checkpoint's data says) on 1, 2, ... GPUs;
    # sampling seconds from metrics.json (warm-up, i.e. compilation and CUDA graph capture, reported apart)
    python3 benchmarks/scaling.py sample CKPT --gpus 1,2,4 --n 50000 --out OUT [-- OVERRIDES]

Each writes OUT/<part>.json and prints a markdown table with the speed-up over one GPU and the efficiency
(speed-up / GPUs). The issue's targets: >= 1.85x on 2 and >= 3.6x on 4 for unet_base's training, >= 1.9x on 2
for sampling 50,000 images.
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

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"Throughput: median ([0-9.]+) img/s")
BATCH = 128
TRAIN = ["data=synthetic", f"data.batch_size={BATCH}", "perf=auto", "logger=csv", "~callbacks.sample_eval",
         "callbacks.progress_bar.refresh_rate=0", "trainer.val_check_interval=100000000",
         "+trainer.limit_val_batches=0"]


def launch(cmd: list[str], log: Path) -> str:
    """Run one script to the end; its output into `log`; stop the benchmark with the tail if it failed."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"})
    out = proc.stdout + proc.stderr
    log.write_text(out)
    if proc.returncode != 0:
        print(out[-4000:])
        raise SystemExit(f"{' '.join(cmd[1:4])}...: exited {proc.returncode} (log: {log})")
    return out


def trainer_for(gpus: int) -> list[str]:
    return ["trainer=gpu"] if gpus == 1 else ["trainer=ddp", f"trainer.devices={gpus}"]


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for scope in args.scopes.split(","):
            for gpus in args.gpus:
                name = f"{model}-{scope}-{gpus}gpu"
                cmd = [sys.executable, str(ROOT / "train.py"), f"model={model}", *TRAIN, *trainer_for(gpus),
                       f"perf.compile_scope={scope}", f"trainer.max_steps={args.steps}",
                       f"paths.output_dir={out / name}", *args.overrides]
                rows.append(measure(cmd, out / f"{name}.log", model, scope, gpus))
                (out / "train.json").write_text(json.dumps(rows, indent=1))
    print(table(rows, "img_per_s", ["model", "scope"]))


def measure(cmd: list[str], log: Path, model: str, scope: str, gpus: int) -> dict:
    """One training run's median img/s (every rank's images) and the milliseconds of one optimizer step."""
    began = time.perf_counter()
    rates = [float(r) for r in RATE.findall(launch(cmd, log))]
    if not rates:
        raise SystemExit(f"{log.stem}: no Throughput line (too few steps for a window?)")
    batch = int([a for a in cmd if a.startswith("data.batch_size=")][-1].split("=")[1])  # an override's, if any
    row = {"model": model, "scope": scope, "gpus": gpus, "img_per_s": rates[-1],
           "ms_per_step": round(1000 * batch * gpus / rates[-1], 2), "wall_s": round(time.perf_counter() - began, 1),
           "command": " ".join(cmd[1:])}
    print(json.dumps(row), flush=True)
    return row


def sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for gpus in args.gpus:
        name = f"eval-{gpus}gpu"
        cmd = [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={args.ckpt}", f"n_samples={args.n}",
               f"devices={gpus}", f"paths.output_dir={out / name}", "logger=none", *args.overrides]
        launch(cmd, out / f"{name}.log")
        metrics = json.loads(next((out / name).rglob("metrics.json")).read_text())
        rows.append({"gpus": gpus, "sampling_seconds": metrics["sampling_seconds"],
                     "warmup_seconds": metrics["warmup_seconds"],
                     "img_per_s": round(args.n / metrics["sampling_seconds"], 1),
                     **{k: v for k, v in metrics.items() if k.startswith(("fid", "fd_"))},
                     "command": " ".join(cmd[1:])})
        print(json.dumps(rows[-1]), flush=True)
        (out / "sample.json").write_text(json.dumps(rows, indent=1))
    print(table(rows, "img_per_s", []))


def table(rows: list[dict], rate: str, keys: list[str]) -> str:
    """Markdown: each row's rate, its speed-up over the one-GPU row of the same keys, and the efficiency."""
    base = {tuple(r[k] for k in keys): r[rate] for r in rows if r["gpus"] == 1}
    lines = ["| " + " | ".join([*keys, "GPUs", rate, "speed-up", "efficiency"]) + " |",
             "|---" * (len(keys) + 4) + "|"]
    for r in rows:
        one = base.get(tuple(r[k] for k in keys))
        speedup = r[rate] / one if one else float("nan")
        lines.append("| " + " | ".join([*(str(r[k]) for k in keys), str(r["gpus"]), f"{r[rate]:.1f}",
                                         f"{speedup:.2f}x", f"{speedup / r['gpus']:.0%}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    gpus = {"type": lambda s: [int(g) for g in s.split(",")], "default": [1, 2, 4],
            "help": "GPU counts, comma-separated (1 first: the baseline)"}
    t = sub.add_parser("train")
    t.add_argument("--gpus", **gpus)
    t.add_argument("--models", default="unet_small,unet_base")
    t.add_argument("--steps", type=int, default=600, help="optimizer steps per run (Throughput: windows of 50)")
    t.add_argument("--scopes", default="model,regional",
                   help="perf.compile_scope values: a whole-model graph returns every gradient at the end of its "
                        "backward, so DDP's all-reduce cannot overlap it; regional graphs return them block by block")
    t.add_argument("--out", required=True)
    s = sub.add_parser("sample")
    s.add_argument("ckpt")
    s.add_argument("--gpus", **gpus)
    s.add_argument("--n", type=int, default=50_000)
    s.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.overrides = overrides
    {"train": train, "sample": sample}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
