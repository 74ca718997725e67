#!/usr/bin/env bash
# Does more training data help? The demo's model and settings, trained for the same time on
# 40 and on N_BIG training simulations, evaluated on the same 5 test simulations.
#
#     DEVICE=cuda MINUTES=2 N_BIG=200 WORK=/tmp/data_scaling OUT=out bash benchmarks/data_scaling.sh
set -uo pipefail
OUT=${OUT:-data_scaling_out}; W=${WORK:-/tmp/data_scaling}; PY=${PYTHON:-python3}
N_BIG=${N_BIG:-200}; MINUTES=${MINUTES:-2}; DEVICE=${DEVICE:-auto}; WORKERS=${WORKERS:-16}
mkdir -p "$OUT" "$W"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
stage() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

stage "synth $((N_BIG + 5)) simulations 32x16x16"
$PY -m voxel_ode.cli synth --out "$W/raw_big" --n $((N_BIG + 5)) --grid 32 16 16 --workers "$WORKERS" 2>&1 | tail -1
mkdir -p "$W/raw_40"
ls "$W/raw_big"/v2.4_*.h5 | sort | head -45 | xargs -I{} cp {} "$W/raw_40/"
for n in 40 big; do
  stage "prep raw_$n"
  $PY -m voxel_ode.cli prep --input_root "$W/raw_$n" --out_root "$W/prepped_$n" --patch_size 32 16 16 \
    --stride 32 16 16 --n_test 5 --min_active_frac 0 --workers "$WORKERS" 2>&1 | tail -1
  stage "train on raw_$n: $MINUTES min"
  $PY -m voxel_ode.cli train --prepped_root "$W/prepped_$n" --save_dir "$W/ck_$n" --sample_mode full \
    --base_channels 24 --depth 4 --receptive_field_radius 2 --batch_size 4 --lr 2e-3 --warmup_steps 50 \
    --max_steps 100000 --time_budget_min "$MINUTES" --rollout_steps 3 --rollout_curriculum_steps 200 \
    --aug_xy_rot --aug_flip --noise_std 0 --eval_every 500 --log_every 100 --ckpt_every 100000 \
    --device "$DEVICE" --quiet > "$OUT/train_$n.log" 2>&1
  echo "exit $?"; grep -v "^\s*$" "$OUT/train_$n.log" | tail -3
  $PY -m voxel_ode.cli evaluate --prepped_root "$W/prepped_$n" --ckpt_path "$W/ck_$n/last.pt" --out "$W/eval_$n" \
    --device "$DEVICE" --no_predictions --no_progress > "$OUT/eval_$n.log" 2>&1
  echo "evaluate exit $?"; cp "$W/eval_$n/metrics.json" "$OUT/eval_$n.json"
done
stage compare
$PY benchmarks/compare_metrics.py "$OUT/eval_40.json" "$OUT/eval_big.json"
