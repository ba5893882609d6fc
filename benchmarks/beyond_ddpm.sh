#!/usr/bin/env bash
# Beyond DDPM, measured on one GPU (issue 13's acceptance): three Fashion-MNIST runs trained side by side at the
# same budget, then their evaluations.
#   cfg:     experiment=cfg_fashion_mnist (class-conditional, label dropout 0.1) -> guidance.py: FID and class
#            accuracy for w in {0, 0.5, 1, 2, 4} and for the null label, per-class grids
#   fixed:   the same unconditional U-Net with DDPM's fixed variance (fixedlarge, L_simple)
#   learned: the same with Improved DDPM's learned_range variance and L_hybrid (vlb_weight 0.001)
#            -> on both: bits/dim (eval.py, the exact T-step bound) and FID of the respaced ancestral chain
#            at $FID_STEPS steps (samplers.py fid --ancestral)
#            -> ablation: the learned network sampled with its variance head replaced by frac = 1 (sigma^2 = beta',
#            fixedlarge) and frac = 0 (beta_tilde', fixedsmall), $FRACS: the variance's share of the FID gap
#            apart from what L_hybrid did to the mean
# Use:   OUT=<dir> bash benchmarks/beyond_ddpm.sh | tee <dir>/run.log     (GPU; the numbers are printed, logs in $RUNS/logs)
# Smoke test on a CPU:  OUT=/tmp/b STEPS=20 N=64 BPD=4 BATCH=64 FID_STEPS="10 20" DEVICE="trainer.accelerator=cpu trainer.precision=32-true" bash benchmarks/beyond_ddpm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the logs}
RUNS=${RUNS:-/tmp/beyond_ddpm_runs}
STEPS=${STEPS:-6000}   # optimizer steps of every run (batch 128)
N=${N:-2000}           # samples per FID
BPD=${BPD:-1000}       # held-out images for bits/dim (0: skip)
BATCH=${BATCH:-1000}
FID_STEPS=${FID_STEPS:-25 50 100 200}   # respaced ancestral step counts for the fixed / learned FID
FRACS=${FRACS-1 0}    # the learned network with a constant frac (ablation; empty: none)
DEVICE=${DEVICE:-trainer=gpu}
PARTS=${PARTS:-cfg variance}   # "variance": only the fixed / learned pair (e.g. another seed: EXTRA=seed=1)
EVAL_PERF=${EVAL_PERF:-cpu}   # evaluations eager fp32 (no compilation per process); training uses perf=auto
SOURCE_DIR=${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}   # Debian's dataset-fashion-mnist
LOGS=$RUNS/logs   # every log; $OUT gets the three guidance grids (the summary is stdout)
mkdir -p "$OUT" "$RUNS" "$LOGS"
common=(logger=none $DEVICE data.source_dir="$SOURCE_DIR" trainer.max_steps="$STEPS" trainer.val_check_interval="$STEPS"
        callbacks.model_checkpoint.every_n_train_steps="$STEPS" callbacks.sample_eval.bpd_images=0 ${EXTRA:-})
train() {  # name, overrides...
  local name=$1; shift
  python3 train.py hydra.run.dir="$RUNS/$name" "${common[@]}" "$@" > "$LOGS/train_$name.log" 2>&1 \
    || { echo "training $name failed:"; tail -30 "$LOGS/train_$name.log"; return 1; }
  echo "trained $name: $(tr -d ' \n' < "$RUNS/$name/metrics.json")"
}
uncond=(experiment=ddpm_fashion_mnist optimizer.lr=5e-4 module.ema_decay=0.999 module.lr_warmup_steps=500
        callbacks.sample_eval.every_n_validations=1 callbacks.sample_eval.fid_samples=256)
start=$SECONDS
# The feature classifier and the FID reference statistics, once (cached in cache/), before the parallel runs
python3 - "$SOURCE_DIR" <<'PY'
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ddpm.tasks.config import to_plain
from ddpm.metrics import SampleMetrics

with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
    cfg = compose(config_name="train", overrides=["experiment=ddpm_fashion_mnist", "paths.output_dir=.",
                                                   f"data.source_dir={sys.argv[1]}"])
dm = instantiate(cfg.data)
dm.check()
SampleMetrics(**to_plain(cfg.fid)).prepare(dm, "cuda" if torch.cuda.is_available() else "cpu")
PY
echo "feature classifier and reference statistics ready after $((SECONDS - start)) s"
pids=()
[[ $PARTS == *cfg* ]] && { train cfg experiment=cfg_fashion_mnist & pids+=($!); }
[[ $PARTS == *variance* ]] && { train fixed "${uncond[@]}" module.variance_type=fixedlarge & pids+=($!);
                               train learned "${uncond[@]}" module.variance_type=learned_range & pids+=($!); }
for p in "${pids[@]}"; do wait "$p"; done
echo "${#pids[@]} runs trained side by side in $((SECONDS - start)) s"

if [[ $PARTS == *cfg* ]]; then
  python3 benchmarks/guidance.py "$RUNS/cfg/checkpoints/last.ckpt" --n "$N" --batch "$BATCH" --grids "$RUNS/grids" \
    --perf "$EVAL_PERF" 2> "$LOGS/guidance.log"
  cp "$RUNS"/grids/guidance_w{0,1,4}.png "$OUT"/
  echo "guidance table after $((SECONDS - start)) s"
fi
[[ $PARTS == *variance* ]] || exit 0

evaluate() {  # name: bits/dim, then FID of the respaced ancestral chain at each of $FID_STEPS steps
  local name=$1 ckpt=$RUNS/$1/checkpoints/last.ckpt
  [[ $BPD == 0 ]] || python3 eval.py ckpt_path="$ckpt" logger=none perf="$EVAL_PERF" \
    hydra.run.dir="$RUNS/eval_${name}_bpd" 'metrics=[bpd]' bpd_images="$BPD" batch_size="$BATCH" n_samples=8 \
    > "$LOGS/eval_${name}_bpd.log" 2>&1
  python3 benchmarks/samplers.py fid "$ckpt" --ancestral $FID_STEPS --n "$N" --batch "$BATCH" --no-warmup \
    --perf "$EVAL_PERF" > "$LOGS/fid_$name.log" 2> "$LOGS/fid_$name.err"
}
ablate() {  # frac: FID of the learned network with its variance head replaced by the constant frac
  python3 benchmarks/samplers.py fid "$RUNS/learned/checkpoints/last.ckpt" --ancestral $FID_STEPS --frac "$1" \
    --n "$N" --batch "$BATCH" --no-warmup --perf "$EVAL_PERF" > "$LOGS/fid_learned_frac$1.log" 2> "$LOGS/fid_learned_frac$1.err"
}
pids=()
evaluate fixed & pids+=($!)
evaluate learned & pids+=($!)
for f in $FRACS; do ablate "$f" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
python3 - "$RUNS" "$LOGS" $FRACS <<'PY'
import json
import sys
from pathlib import Path

runs, logs = Path(sys.argv[1]), Path(sys.argv[2])
names = {"fixed": "fixedlarge (L_simple)", "learned": "learned_range (L_hybrid)"}
names.update({f"learned_frac{f}": f"the learned_range network, frac = {f} ("
              + {"1": "beta'", "0": "beta_tilde'"}.get(f, "constant") + ")" for f in sys.argv[3:]})
table = {}
for name in names:
    rows = [json.loads(line) for line in (logs / f"fid_{name}.log").read_text().splitlines() if line.startswith("{")]
    bpd_file = runs / f"eval_{name}_bpd" / "metrics.json"
    bpd = json.loads(bpd_file.read_text()) if bpd_file.is_file() else {"bpd": float("nan"), "bpd_n": 0}
    table[name] = bpd, {r["nfe"]: r for r in rows}
    for r in ([bpd] if bpd["bpd_n"] else []) + rows:
        print(json.dumps(r))
steps = list(table["fixed"][1])
fid = next(k for k in table["fixed"][1][steps[0]] if k.startswith("fid_") and not k.endswith("_n"))
print(f"| variance (loss) | bits/dim (n) | " + " | ".join(f"{fid}, {s} respaced steps" for s in steps) + " |")
print("|---" * (2 + len(steps)) + "|")
for name, what in names.items():
    bpd, rows = table[name]
    bits = f"{bpd['bpd']:.3f} ({bpd['bpd_n']})" if bpd["bpd_n"] else "-"
    print(f"| {what} | {bits} | " + " | ".join(f"{rows[s][fid]:.3f}" for s in steps) + " |")
PY
echo "total $((SECONDS - start)) s"
