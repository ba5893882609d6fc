#!/usr/bin/env bash
# Few-step samplers on the GPU (the few-step sampling issue's measurements), in parts that fit one device call each:
#   train:  one Fashion-MNIST run of today's recipe (experiment=ddpm_fashion_mnist, lr 5e-4, EMA 0.999, warm-up
#           500) for $STEPS steps, in the background (setsid: it outlives the call; `wait_train` waits for it)
#   digits: the sweep (sampler_sweep.py, full grid, $N samples, offline + Inception FID) on $DIGITS_CKPT
#   fmnist: the sweep on the trained checkpoint, grid $GRID, settings $SLICE
#   eval50k: $N50K samples through eval.py with the best setting of rows.jsonl within 50 NFE (by Inception FID)
# Use:   OUT=<dir> RUNS=<dir> INCEPTION=<TorchScript> PARTS="digits fmnist" bash benchmarks/sampler_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the results}
RUNS=${RUNS:-/tmp/sampler_sweep_runs}
STEPS=${STEPS:-8000}
N=${N:-5000}
N50K=${N50K:-50000}
GRID=${GRID:-full}
SLICE=${SLICE:-:}
PARTS=${PARTS:-train wait_train fmnist eval50k}
INCEPTION=${INCEPTION:-}
SOURCE_DIR=${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}
DIGITS_CKPT=${DIGITS_CKPT:-}
mkdir -p "$OUT" "$RUNS"
ckpt="$RUNS/run/checkpoints/last.ckpt"
fids=(--fid classifier inception)
[ -n "$INCEPTION" ] && fids+=(--inception-weights "$INCEPTION")
for part in $PARTS; do
  case $part in
    train)
      setsid nohup python3 train.py hydra.run.dir="$RUNS/run" experiment=ddpm_fashion_mnist optimizer.lr=5e-4 \
        module.ema_decay=0.999 module.lr_warmup_steps=500 trainer.max_steps="$STEPS" \
        trainer.val_check_interval="$STEPS" callbacks.model_checkpoint.every_n_train_steps=2000 \
        callbacks.sample_eval.fid_samples=0 callbacks.sample_eval.bpd_images=0 logger=none \
        data.source_dir="$SOURCE_DIR" > "$RUNS/train.log" 2>&1 &
      echo $! > "$RUNS/train.pid"
      echo "training in the background (pid $!)";;
    wait_train)
      while kill -0 "$(cat "$RUNS/train.pid")" 2>/dev/null; do sleep 5; done
      grep -q '"success"' "$RUNS/run/metrics.json" 2>/dev/null || { tail -30 "$RUNS/train.log"; exit 1; }
      echo "trained: $(tr -d ' \n' < "$RUNS/run/metrics.json")";;
    digits)
      python3 benchmarks/sampler_sweep.py run "$DIGITS_CKPT" --out "$RUNS/digits" --n "$N" --grid full "${fids[@]}" \
        2>&1 | grep -v "Warning\|warn(" | tee "$OUT/digits.log"
      cp "$RUNS/digits/rows.jsonl" "$OUT/digits_rows.jsonl";;
    fmnist)
      python3 benchmarks/sampler_sweep.py run "$ckpt" --out "$RUNS/fmnist" --n "$N" --grid "$GRID" --slice "$SLICE" \
        "${fids[@]}" 2>&1 | grep -v "Warning\|warn(" | tee -a "$OUT/fmnist.log"
      cp "$RUNS/fmnist/rows.jsonl" "$OUT/fmnist_rows.jsonl";;
    eval50k)
      best=$(python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$RUNS/fmnist/rows.jsonl')]
r = min((r for r in rows if r['nfe'] <= 50), key=lambda r: r['fid'])
print(' '.join([f\"sampler={r['setting']}\"] + [f'sampler.{k}={v}' for k, v in r['overrides'].items()]))")
      echo "best within 50 NFE: $best"
      weights=()
      [ -n "$INCEPTION" ] && weights=(fid.weights_path="$INCEPTION")
      # shellcheck disable=SC2086
      python3 eval.py ckpt_path="$ckpt" $best sampler.progress=false n_samples="$N50K" batch_size=2500 \
        warmup_batches=1 'metrics=[fid]' fid=inception "${weights[@]}" logger=none \
        hydra.run.dir="$RUNS/eval50k" 2>&1 | grep -v "Warning\|warn(" | tail -5
      cp "$RUNS/eval50k/metrics.json" "$OUT/eval50k.json";;
    *) echo "unknown part $part"; exit 2;;
  esac
done
