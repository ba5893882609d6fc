"""Cold start: the seconds from launching train.py to training step 20, from an empty and from a kept compile cache.

    python benchmarks/cold_start.py --out OUT [--steps 600] [--cases model-cold,model-warm,...] [-- OVERRIDES]

Each case is one train.py process on the model of benchmarks/recipes.py (Fashion-MNIST at 32x32, unet_small
[1,2,2,2] x 64, batch 128, bf16, perf=auto): its StartupReport lines (the first step, what torch.compile did and
which caches it used; step 20 since training began and since the process started), the seconds from launch to the
"step 20" line as this script saw it, and the steady-state img/s (Throughput's median). Cases:

    model-cold      perf.compile_scope=model, an empty cache folder
    model-warm      the same again: the folder model-cold filled
    regional-cold   perf.compile_scope=regional (each repeated block compiled alone), an empty folder
    regional-warm   the same again
    no-cudnn-bench  model-warm with trainer.benchmark=false: what cuDNN's autotuning costs at start-up
    eager           perf.compile=false: start-up without torch.compile

Writes OUT/cold_start.json and prints a markdown table.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes import MODEL, STARTUP  # noqa: E402

CASES = {
    "model-cold": ("model", ["perf.compile_scope=model"]),
    "model-warm": ("model", ["perf.compile_scope=model"]),
    "regional-cold": ("regional", ["perf.compile_scope=regional"]),
    "regional-warm": ("regional", ["perf.compile_scope=regional"]),
    "no-cudnn-bench": ("model", ["perf.compile_scope=model", "trainer.benchmark=false"]),
    "eager": ("eager", ["perf.compile=false"]),
}
STEP20 = re.compile(r"start-up: step 20 reached ([0-9.]+) s after training began(?:, ([0-9.]+) s after the process)?")
FIRST = re.compile(r"start-up: first training step ([0-9.]+) s")
RATE = re.compile(r"Throughput: median ([0-9.]+) img/s")


def run_case(name: str, out: Path, steps: int, overrides: list[str]) -> dict:
    cache, extra = CASES[name]
    cmd = [sys.executable, str(ROOT / "train.py"), *MODEL, f"trainer.max_steps={steps}",
           f"perf.compile_cache_dir={out / 'compile_cache' / cache}", f"paths.output_dir={out / name}", *overrides,
           *extra]  # the case's own switches last: an override such as perf=cpu must not undo them
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, seen_step20 = [], None
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if seen_step20 is None and STEP20.search(line):
            seen_step20 = time.perf_counter() - began
    code = proc.wait()
    log = "".join(lines)
    (out / f"{name}.log").write_text(log)
    if code != 0:
        print(log[-4000:])
        raise SystemExit(f"{name}: train.py exited {code}")
    step20 = STEP20.search(log)
    first = FIRST.search(log)
    rate = RATE.findall(log)
    return {"launch_to_step20_s": round(seen_step20, 1) if seen_step20 else None,
            "train_to_step20_s": float(step20.group(1)) if step20 else None,
            "first_step_s": float(first.group(1)) if first else None,
            "img_per_s": float(rate[-1]) if rate else None, "wall_s": round(time.perf_counter() - began, 1),
            "startup": STARTUP.findall(log), "command": " ".join(cmd[1:])}


def main(argv: list[str]) -> None:
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--cases", default=",".join(CASES))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.cases.split(","):
        results[name] = run_case(name, out, args.steps if name != "eager" else min(args.steps, 200), overrides)
        print(json.dumps({name: results[name]}), flush=True)
        (out / "cold_start.json").write_text(json.dumps(results, indent=1))
    print("\n| case | launch -> step 20 s | training -> step 20 s | first step s | img/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['launch_to_step20_s']} | {r['train_to_step20_s']} | {r['first_step_s']} | "
              f"{r['img_per_s']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
