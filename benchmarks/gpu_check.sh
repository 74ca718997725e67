#!/usr/bin/env bash
# The CUDA paths on one GPU, end to end, in ~5 minutes (figures for docs/benchmarks.md):
#   1. synth + prep a small dataset (40x36x36 grids; pyamg needed above 20k cells)
#   2. the seed's training command (torchrun, so NCCL + DDP even with one process; --use_amp)
#      with the seed's default model (128 channels, 12 blocks, r=3) on 32^3 patches
#   3. compute-only training-step speed of that model: fp32 / bf16 / fp16 (benchmarks/bench_gpu.py)
#   4. full-grid (326x70x76) rollout speed and memory of that model (benchmarks/bench_rollout.py)
#   5. a small model trained on whole grids through 2 unrolled steps with AMP (torchrun),
#      then evaluated on the GPU in fp32 and bf16 and on the CPU: the three must agree
#
#     WORK=/tmp/gpu_check OUT=gpu_check_out bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu_check_out}
W=${WORK:-/tmp/gpu_check}
mkdir -p "$OUT" "$W"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}
stage() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

stage environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torch.distributed as d; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0), 'nccl', d.is_nccl_available())"

stage synth + prep
$PY -m voxel_ode.cli synth --out "$W/raw" --n 8 --grid 40 36 36 --workers 8 2>&1 | tail -1 || exit 1
$PY -m voxel_ode.cli prep --input_root "$W/raw" --out_root "$W/prepped" --n_test 2 --workers 8 2>&1 | tail -1 || exit 1

stage "seed training command: torchrun, NCCL, --use_amp, 128 channels x 12 blocks, batch 16 of 32^3"
torchrun --standalone --nproc_per_node=1 scripts/train_ddp.py --prepped_root "$W/prepped" --batch_size 16 \
  --receptive_field_radius 3 --base_channels 128 --depth 12 --max_steps 60 --eval_every 60 --eval_max_batches 4 \
  --log_every 20 --ckpt_every 1000 --aug_xy_rot --aug_flip --noise_std 0.01 --use_amp --num_workers 4 \
  --save_dir "$W/ck_seed" --quiet > "$OUT/seed_train.log" 2>&1
echo "exit $?"; grep -v "^\s*$" "$OUT/seed_train.log" | tail -6
cp "$W/ck_seed/metrics.jsonl" "$OUT/seed_metrics.jsonl" 2>/dev/null

if [ -z "${SKIP_SPEED:-}" ]; then  # SKIP_SPEED=1: only the runs that check correctness
stage "compute-only training step, seed model, batch 16 of 32^3"
$PY benchmarks/bench_gpu.py --prepped_root "$W/prepped" --batch_size 16 --steps 10 --warmup 3 2>&1 | tail -7

stage "full-grid rollout, seed model"
$PY benchmarks/bench_rollout.py --device cuda --amp none bf16 fp16 --base_channels 128 --depth 12 --steps 4 \
  --configs full 2>&1 | tail -8
fi

stage "small model, whole grids, 2 unrolled steps, AMP, torchrun"
torchrun --standalone --nproc_per_node=1 scripts/train_ddp.py --prepped_root "$W/prepped" --sample_mode full \
  --rollout_steps 2 --base_channels 24 --depth 4 --batch_size 4 --max_steps 400 --lr 2e-3 --warmup_steps 50 \
  --eval_every 200 --log_every 100 --use_amp --save_dir "$W/ck_small" --quiet > "$OUT/small_train.log" 2>&1
echo "exit $?"; grep -v "^\s*$" "$OUT/small_train.log" | tail -5
cp "$W/ck_small/metrics.jsonl" "$OUT/small_metrics.jsonl" 2>/dev/null
for how in "cuda none" "cuda bf16" "cpu none"; do
  set -- $how
  $PY -m voxel_ode.cli evaluate --prepped_root "$W/prepped" --ckpt_path "$W/ck_small/last.pt" --device "$1" \
    --amp "$2" --out "$W/eval_$1_$2" --no_predictions --no_progress > "$W/eval_$1_$2.log" 2>&1
  echo "evaluate --device $1 --amp $2: exit $?"
  cp "$W/eval_$1_$2/metrics.json" "$OUT/eval_$1_$2.json" 2>/dev/null
done
tail -3 "$W/eval_cuda_bf16.log"
$PY benchmarks/compare_metrics.py "$OUT"/eval_*.json
stage done
