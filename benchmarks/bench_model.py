#!/usr/bin/env python
"""Model and target-normalization figures for docs/benchmarks.md ("Model and change normalization").

    python benchmarks/bench_model.py --prepped_root PREPPED [--sizes 16 32] [--steps 3]

1. Change normalization: for each train simulation, the RMS of its normalized
   pressure/temperature change under the seed's pooled z-score and under the
   asinh scaling (dataset.Normalizer), i.e. how much weight each simulation gets
   in an MSE loss.
2. Parameter counts of the configurations, and forward+backward time of a patch
   batch on this CPU with and without channels_last_3d.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from voxel_ode import schema

from voxel_ode.model.features import Normalizer
from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor, count_parameters


def normalization_table(root: Path) -> str:
    stats = json.loads((root / schema.STATS_FILE).read_text())
    modes = {m: Normalizer(stats, delta_mode=m) for m in ("zscore", "asinh")}
    rows = []
    for rel, rms in zip(stats["train_sims"], stats["delta"]["per_sim_rms"]):
        with h5py.File(root / rel, "r") as f:
            active = f[schema.PREPPED_STATIC][schema.STATIC_ACTIVE] > 0.5
            grid = f[schema.PREPPED_OUTPUTS_GRID][...].astype(np.float64)
        delta = np.diff(grid, axis=0)[:, :, active]  # (T-1, 2, n_active)
        row = [Path(rel).name, rms[0], rms[1]]
        d = torch.from_numpy(delta[..., None, None])
        for m, nrm in modes.items():
            # the loss a prediction 10% off this simulation's own change costs: its weight in the MSE
            z = (nrm.normalize_delta(1.1 * d) - nrm.normalize_delta(d)).double().numpy()
            row += [float(np.mean(z[:, 0] ** 2)), float(np.mean(z[:, 1] ** 2))]
        rows.append(row)
    rows.sort(key=lambda r: r[1])
    s = modes["asinh"].delta_scale
    out = [
        f"asinh scales s = median of the per-sim RMS change: s_P = {s[0]:.4g} Pa, s_T = {s[1]:.4g} K; "
        f"pooled std: {stats['delta']['std'][0]:.4g} Pa, {stats['delta']['std'][1]:.4g} K; "
        f"pooled median |delta|: {stats['delta']['abs_quantiles']['0.5'][0]:.4g} Pa, "
        f"{stats['delta']['abs_quantiles']['0.5'][1]:.4g} K",
        "",
        "| train sim | RMS dP (Pa/yr) | RMS dT (K/yr) | z-score: MSE of a 10% error, P | T | asinh: MSE of a 10% error, P | T |",
        "|---|---|---|---|---|---|---|",
    ]
    out += [f"| {r[0]} | {r[1]:.3g} | {r[2]:.3g} | {r[3]:.3g} | {r[4]:.3g} | {r[5]:.3g} | {r[6]:.3g} |" for r in rows]
    arr = np.asarray([r[1:] for r in rows])
    for j, name in ((2, "z-score P"), (4, "asinh P"), (3, "z-score T"), (5, "asinh T")):
        col = arr[:, j]
        out.append(f"\nlargest/smallest per-sim loss of a 10% error, {name}: {col.max() / col.min():.3g}")
    return "\n".join(out)


def speed_table(sizes, steps, batch) -> str:
    out = ["| config | params | patch | batch | channels_last | fwd+bwd s/step | voxels/s |", "|---|---|---|---|---|---|---|"]
    configs = {
        "seed default (128, depth 12, r 3)": ModelConfig(),
        "small (32, depth 4, r 2)": ModelConfig(base_channels=32, depth=4, receptive_field_radius=2),
        "small local": ModelConfig(base_channels=32, depth=4, receptive_field_radius=2, global_context=False),
    }
    for name, cfg in configs.items():
        for n in sizes:
            if cfg.base_channels == 128 and n > 16:
                continue  # a single fwd+bwd of the full-size model at 32^3 takes minutes on 2 cores
            for cl in (False, True):
                cfg.channels_last = cl
                torch.manual_seed(0)
                model = VoxelAutoRegressor(cfg).train()
                x = torch.randn(batch, schema.N_INPUT_CHANNELS, n, n, n)
                a = torch.ones(batch, 1, n, n, n)
                p = torch.randn(batch, schema.N_CONDITIONING)
                times = []
                for _ in range(steps + 1):  # first step builds oneDNN primitives
                    t0 = time.perf_counter()
                    d, s = model(x, p, a)
                    (d.square().mean() + s.square().mean()).backward()
                    times.append(time.perf_counter() - t0)
                t = float(np.median(times[1:]))
                out.append(f"| {name} | {count_parameters(model) / 1e6:.2f}M | {n}^3 | {batch} | {cl} | {t:.3f} | {batch * n**3 / t:,.0f} |")
    return "\n".join(out)


def compare_context(root: Path, steps: int, seed: int = 0) -> str:
    """Train a small whole-field model and the same model purely local on whole fields
    (full mode) for the same number of steps; one-step test error in normalized units."""
    from voxel_ode.training.dataset import PatchDataset, collate

    train = PatchDataset(root, "train", mode="full", aug_xy_rot=True, aug_flip=True, seed=seed)
    test = PatchDataset(root, "test", mode="full")
    test_batch = collate([test[i] for i in range(len(test))])
    out = ["| model | params | train s | test MSE P | test MSE T | uniform-offset share of P error | test MSE scalars |",
           "|---|---|---|---|---|---|---|"]
    m = test_batch["active"]
    tgt = test_batch["target_delta"][:, 0]

    def errors(delta):
        err = (delta - tgt) * m
        mse = (err**2).sum(dim=(0, 2, 3, 4)) / m.sum()
        # share of the pressure error that is one constant per sample (the field-wide level)
        n = m.sum(dim=(1, 2, 3, 4))
        offset = err[:, 0].sum(dim=(1, 2, 3)) / n
        share = float((offset**2 * n).sum() / (err[:, 0] ** 2).sum())
        return mse, share

    mse, share = errors(torch.zeros_like(tgt))
    out.append(f"| persistence (no change) | 0 | 0 | {mse[0]:.4f} | {mse[1]:.4f} | {share:.2f} | - |")
    for gc in (True, False):
        cfg = ModelConfig(base_channels=16, depth=3, receptive_field_radius=1, context_channels=16, global_dim=32,
                          global_context=gc)
        torch.manual_seed(seed)
        model = VoxelAutoRegressor(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
        loader = torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate,
                                             generator=torch.Generator().manual_seed(seed))
        t0, step = time.perf_counter(), 0
        while step < steps:
            for b in loader:
                delta, scalars = model(b["x"], b["params"], b["active"])
                mm = b["active"]
                loss = ((delta - b["target_delta"][:, 0]) ** 2 * mm).sum() / (2 * mm.sum())
                loss = loss + ((scalars - b["target_scalars"][:, 0]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
        secs = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            delta, scalars = model(test_batch["x"], test_batch["params"], test_batch["active"])
        mse, share = errors(delta)
        smse = float(((scalars - test_batch["target_scalars"][:, 0]) ** 2).mean())
        name = "whole-field path" if gc else "purely local"
        out.append(f"| {name} | {count_parameters(model) / 1e3:.0f}k | {secs:.0f} | {mse[0]:.4f} | {mse[1]:.4f} | {share:.2f} | {smse:.3f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--skip_speed", action="store_true")
    ap.add_argument("--compare_steps", type=int, default=0, help="train whole-field vs local models this many steps")
    args = ap.parse_args()
    if args.prepped_root:
        print(normalization_table(args.prepped_root))
        print()
    if args.prepped_root and args.compare_steps:
        print(compare_context(args.prepped_root, args.compare_steps))
        print()
    if not args.skip_speed:
        print(speed_table(args.sizes, args.steps, args.batch))


if __name__ == "__main__":
    main()
