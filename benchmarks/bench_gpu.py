#!/usr/bin/env python
"""Training-step speed and memory of a model on one GPU (or the CPU), data loading excluded.

    python benchmarks/bench_gpu.py --prepped_root PREPPED --batch_size 16 \
        --base_channels 128 --depth 12 --precisions fp32 bf16 fp16

Takes one real batch from the prepped train split (so the whole-field context
and the mixes run as in training), moves it to the device once, and times
``--steps`` optimizer steps (forward + backward + AdamW, the train loop's
``Unroll``) per precision, after ``--warmup`` untimed steps. fp32 runs with
torch's defaults (TF32 convolutions on Ampere and newer); bf16 / fp16 use
autocast, fp16 with a GradScaler, as ``voxel-ode train --use_amp`` does.
Prints a markdown table and one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_precision(args, precision: str, device, batch_cpu: dict, normalizer, train_scalars: bool) -> dict:
    from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor, count_parameters
    from voxel_ode.training.loss import Unroll

    torch.manual_seed(0)
    model = VoxelAutoRegressor(ModelConfig(base_channels=args.base_channels, depth=args.depth,
                                           receptive_field_radius=args.receptive_field_radius)).to(device)
    from voxel_ode.model.precision import resolve

    chosen = resolve({"fp32": "none", "bf16": "bf16", "fp16": "fp16"}[precision], device)
    unroll = Unroll(model, normalizer, train_scalars, chosen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batch = {k: v.to(device) for k, v in batch_cpu.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        loss, _, _ = unroll(batch, args.rollout_steps, detach_between=True)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    n = batch["x"].shape[0]
    voxels = n * batch["x"][0, 0].numel()
    s = sum(times) / len(times)
    return {"precision": precision, "params": count_parameters(model), "batch": n,
            "sample_shape": list(batch["x"].shape[-3:]), "s_per_step": s, "samples_per_s": n / s,
            "mvoxels_per_s": voxels / s / 1e6, "first_loss": losses[0], "last_loss": losses[-1],
            "finite": all(math.isfinite(v) for v in losses),
            "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", required=True)
    ap.add_argument("--sample_mode", choices=("patch", "full"), default="patch")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--base_channels", type=int, default=128)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--receptive_field_radius", type=int, default=3)
    ap.add_argument("--rollout_steps", type=int, default=1)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args()

    from voxel_ode.data.stats import Stats
    from voxel_ode.training.dataset import PatchDataset, collate
    from voxel_ode.model.features import Normalizer
    from voxel_ode.model.network import ModelConfig

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    stats = Stats.load(args.prepped_root)
    normalizer = Normalizer(stats)
    ds = PatchDataset(args.prepped_root, "train", stats=stats, mode=args.sample_mode, seed=0,
                      rollout_steps=args.rollout_steps, context_factor=ModelConfig().context_factor)
    batch = collate([ds[i * 7 % len(ds)] for i in range(args.batch_size)])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for p in args.precisions:
        if device.type != "cuda" and p != "fp32":
            continue  # CPU autocast is not what training uses there
        rows.append(time_precision(args, p, device, batch, normalizer, train_scalars=True))
        print(json.dumps(rows[-1]), flush=True)
    r0 = rows[0]
    print(f"\n{name}, torch {torch.__version__}: base_channels={args.base_channels} depth={args.depth} "
          f"r={args.receptive_field_radius}, {r0['params']:,} parameters; batch {r0['batch']} x "
          f"{tuple(r0['sample_shape'])} ({args.sample_mode}), rollout_steps {args.rollout_steps}\n")
    print("| precision | s / step | samples / s | Mvoxel / s | peak GPU memory (GB) | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        print(f"| {r['precision']} | {r['s_per_step']:.3f} | {r['samples_per_s']:.1f} | {r['mvoxels_per_s']:.1f} "
              f"| {peak} | {r['first_loss']:.3g} -> {r['last_loss']:.3g} |")


if __name__ == "__main__":
    main()
