#!/usr/bin/env python
"""Rollout speed and peak memory on the full 326x70x76 grid (CPU by default).

Each configuration runs in its own process so its peak resident memory
(ru_maxrss) is its own. The model has random weights (speed does not depend on
them); the simulation is synthetic: a dipping reservoir layer of active cells
(~30 % of the grid) inside inactive rock, the injector in the middle.

    python benchmarks/bench_rollout.py --base_channels 16 --depth 4 --steps 4 \
        --configs full tile:96,70,76 --synth
    python benchmarks/bench_rollout.py --base_channels 24 --depth 4 --radius 2 --threads 2 --steps 3 \
        --configs full crop --amp none bf16 --active 1 0.5 0.15 --repeat 3 --peak

``full`` runs the local path on the whole grid, ``crop`` as ``voxel-ode rollout`` does (on the
boxes of active cells: regions.crop_plan). The table adds the conv FLOPs per step (forward hooks)
per second next to the bare Conv3d(C, C, 3^3) on the whole grid in the same precision (--peak),
timed in the same process.

On a GPU: ``--device cuda --amp none bf16 fp16`` times each configuration per
precision and adds the peak GPU memory (torch.cuda.max_memory_allocated).

Prints a markdown table. With --synth it first times `voxel_ode.synth.voxel` at the
same grid (``--synth_years`` simulated years, s/year reported) and runs the
rollouts on that simulation's own fields, so the speed-up is measured on one
simulation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def make_sim(grid, n_steps, seed=0, active_frac=0.3):
    """A dipping layer of active cells, ``active_frac`` of the grid thick (1 = every cell active)."""
    from voxel_ode import schema

    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    z = np.arange(nz)[:, None, None]
    dip = 0.1 * nz * min(1.0, (1 - active_frac) / 0.1)  # no room to dip in a full grid
    top = ((0.5 - active_frac / 2) * nz - dip / 2 + dip * np.arange(nx)[None, None, :] / nx).astype(int)
    active = ((z >= top) & (z < top + active_frac * nz)) * np.ones(grid, bool)
    static = {n: np.zeros(grid, np.float32) for n in schema.STATIC_NAMES}
    static["IsActive"] = active.astype(np.float32)
    for n in ("PermX", "PermY", "PermZ"):
        static[n] = (10 ** rng.normal(-13, 0.5, grid)).astype(np.float32)
    static["Porosity"] = rng.uniform(0.05, 0.3, grid).astype(np.float32)
    static["Pressure0"] = (1e7 + 1e4 * z * np.ones(grid)).astype(np.float32)
    static["Temperature0"] = (300 + 0.1 * z * np.ones(grid)).astype(np.float32)
    static["InjRate"][int(0.5 * nz), ny // 2, nx // 2] = 10.0
    stack = np.stack([static[n] for n in schema.STATIC_NAMES])
    stack *= np.where(np.arange(schema.N_STATIC)[:, None, None, None] == 1, 1, active[None])
    state0 = np.stack([static["Pressure0"], static["Temperature0"]])
    # the priors' values do not change the speed: a front spreading from the injector
    dist = np.sqrt(sum((np.arange(n)[tuple(slice(None) if a == i else None for a in range(3))] - c) ** 2
                       for i, (n, c) in enumerate(zip(grid, (0.5 * nz, ny / 2, nx / 2)))))
    years = np.arange(n_steps + 1)[:, None, None, None, None]
    prior = np.clip(years - dist[None, None] / 2.0, 0, 1) * active
    return {"static": stack, "params_scalar": rng.normal(0, 1, schema.N_PARAMS).astype(np.float32),
            "outputs_grid": np.repeat(state0[None], n_steps + 1, axis=0),
            "priors": np.broadcast_to(prior, (n_steps + 1, schema.N_PRIORS) + grid).astype(np.float16)}


# plausible (mean, std) per static channel after its transform; 0 / 1 for the rest
STATIC_MOMENTS = {"PermX": (-13.0, 0.5), "PermY": (-13.0, 0.5), "PermZ": (-13.0, 0.5), "Porosity": (0.15, 0.07),
                  "Pressure0": (1.1e7, 1e6), "Temperature0": (320.0, 10.0)}


def fake_stats():
    from voxel_ode import schema

    return {
        "static": {"names": list(schema.STATIC_NAMES),
                   "transform": ["log10" if n.startswith("Perm") else "asinh" if n == schema.INJECTION_GAP else "none"
                                 for n in schema.STATIC_NAMES],
                   "mean": [STATIC_MOMENTS.get(n, (0.0, 1.0))[0] for n in schema.STATIC_NAMES],
                   "std": [STATIC_MOMENTS.get(n, (0.0, 1.0))[1] for n in schema.STATIC_NAMES]},
        "dynamic": {"names": list(schema.DYNAMIC_NAMES), "mean": [1.1e7, 320.0], "std": [1e6, 10.0]},
        "delta": {"names": list(schema.DYNAMIC_NAMES), "mean": [0.0, 0.0], "std": [1e4, 0.1],
                  "abs_quantiles": {"0.5": [1e3, 0.01]}, "per_sim_rms": [[1e4, 0.1]]},
        "params": {"names": list(schema.PARAM_NAMES), "transform": ["none"] * 26, "mean": [0.0] * 26,
                   "std": [1.0] * 26},
        "scalars": {"names": list(schema.SCALAR_NAMES), "transform": ["signed_log1p"] * 5, "mean": [10.0] * 5,
                    "std": [2.0] * 5},
        "scalar_increments": {"names": ["FieldEnergyProductionTotal"], "transform": ["signed_log1p"],
                              "mean": [20.0], "std": [2.0]},
    }


def run_one(cfg: dict) -> dict:
    """One configuration in this process: returns timings and peak RSS."""
    import torch

    from voxel_ode.inference import rollout
    from voxel_ode.model.features import Normalizer
    from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor, count_parameters

    torch.manual_seed(0)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg.get("device") or "cpu")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.get("amp") or "none"]
    if device.type == "cpu":  # oneDNN's settings, for the record
        torch.backends.mkldnn.enabled = True
    model = VoxelAutoRegressor(ModelConfig(base_channels=cfg["base_channels"], depth=cfg["depth"],
                                           receptive_field_radius=cfg["radius"])).eval().to(device)
    if cfg.get("raw"):  # the simulator's own full-size run: same geology as the synth timing
        loaded = rollout.load_sim(cfg["raw"])
        state0 = loaded["outputs_grid"][0]
        sim = {"static": loaded["static"], "params_scalar": loaded["params_scalar"],
               "outputs_grid": np.repeat(state0[None], cfg["steps"] + 1, axis=0),
               "priors": loaded["priors"][: cfg["steps"] + 1]}
    else:
        sim = make_sim(tuple(cfg["grid"]), cfg["steps"], active_frac=cfg.get("active", 0.3))
    norm = Normalizer(fake_stats())
    from voxel_ode.model.precision import resolve

    stepper = rollout.ModelStepper(model, norm, device=device, tile=cfg.get("tile"),
                                   precision=resolve(cfg.get("amp") or "none", device), crop=cfg.get("crop", True))
    flops = count_conv_flops(model)
    times = []
    step = stepper.step

    def timed_step(*a):  # per-step wall time; the first step includes one-off allocations
        t0 = time.perf_counter()
        out = step(*a)
        times.append(time.perf_counter() - t0)
        return out

    stepper.step = timed_step
    rollout.run_stepper(stepper, sim, progress=False)
    later = times[1:] or times
    s_per_step = sum(later) / len(later)
    computed = (sum(int(np.prod(np.subtract(p[3], p[2]))) for p in stepper.plan) if stepper.plan
                else int(np.prod(cfg["grid"])))
    peak = conv_peak_gflops(cfg["base_channels"], amp_dtype, device) if cfg.get("peak") else None
    return {
        "name": cfg["name"], "params": count_parameters(model), "receptive_field": model.receptive_field,
        "steps": len(times), "s_per_step": s_per_step, "first_step_s": times[0],
        "active_frac": float(sim["static"][1].mean()), "computed_frac": computed / float(np.prod(cfg["grid"])),
        "regions": len(stepper.plan) if stepper.plan else 1,
        "gflops": flops[0] / len(times) / s_per_step / 1e9, "peak_gflops": peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


def count_conv_flops(model):
    """[total]: forward hooks add 2 k^3 Cin Cout per output voxel of every Conv3d call."""
    import torch

    total = [0.0]

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
        total[0] += 2.0 * k * (mod.in_channels // mod.groups) * out.numel()

    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(hook)
    return total


def conv_peak_gflops(channels, amp_dtype, device, shape=(326, 70, 76), reps=3):
    """The bare convolution: Conv3d(C, C, 3^3) of the residual blocks on the whole grid, batch 1,
    channels_last_3d, in the rollout's precision: median GFLOP/s of ``reps`` forwards."""
    import torch

    conv = torch.nn.Conv3d(channels, channels, 3, padding=1).to(device).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, channels, *shape, device=device).contiguous(memory_format=torch.channels_last_3d)
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        conv(x)
        for _ in range(reps):
            t0 = time.perf_counter()
            conv(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return 2.0 * 27 * channels * channels * float(np.prod(shape)) / sorted(times)[len(times) // 2] / 1e9


def run_synth(cfg: dict) -> dict:
    """Time `synth.simulate` at full size for ``years`` simulated years; save the run for the rollouts."""
    from voxel_ode.data import raw
    from voxel_ode.synth import voxel as synth

    t0 = time.perf_counter()
    arrays = synth.simulate(tuple(cfg["grid"]), seed=cfg["seed"], n_steps=cfg["years"] + 1)
    dt = time.perf_counter() - t0
    raw.write_simulation(cfg["raw"], arrays)
    return {"name": "synth", "years": cfg["years"], "s_per_year": dt / cfg["years"],
            "active_frac": float(arrays["IsActive"].mean()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, nargs=3, default=[326, 70, 76])
    ap.add_argument("--base_channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--radius", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration; s/step averages all but the first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", nargs="+", choices=("none", "bf16", "fp16"), default=["none"],
                    help="autocast precisions to time (each configuration once per precision; CPU too)")
    ap.add_argument("--configs", nargs="+", default=["full", "crop"],
                    help="'full' (the whole grid), 'crop' (the default rollout: boxes of active cells) or 'tile:Z,Y,X'")
    ap.add_argument("--active", type=float, nargs="+", default=[0.3],
                    help="active fractions of the synthetic layer to time (1 = every cell); not with --synth")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every configuration this many times, interleaved; the table gives medians")
    ap.add_argument("--peak", action="store_true",
                    help="also time the bare Conv3d(C, C, 3^3) on the whole grid in each configuration's precision")
    ap.add_argument("--synth", action="store_true",
                    help="also time voxel_ode.synth.voxel on the same grid and roll out on that simulation's fields")
    ap.add_argument("--synth_years", type=int, default=1, help="simulated years to time (s/year is reported)")
    ap.add_argument("--raw_path", default="/tmp/bench_rollout_synth.h5", help="where --synth keeps its run")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON config in this process
    ap.add_argument("--one_synth", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.one_synth:
        print(json.dumps(run_synth(json.loads(args.one_synth))))
        return

    def child(flag, cfg):  # one process per measurement, so ru_maxrss is that measurement's peak
        out = subprocess.run([sys.executable, __file__, flag, json.dumps(cfg)], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(result, file=sys.stderr)
        return result

    synth_row = None
    if args.synth:
        synth_row = child("--one_synth", {"grid": args.grid, "seed": 0, "years": args.synth_years,
                                          "raw": args.raw_path})
    cfgs = []
    for active in args.active:
        for c in args.configs:
            for amp in args.amp:
                tile = [int(v) for v in c.split(":")[1].split(",")] if c.startswith("tile:") else None
                name = c + ("" if amp == "none" else f", {amp}") + ("" if args.synth else f", {active:.0%} layer")
                cfgs.append({"name": name, "grid": args.grid, "active": active, "crop": c != "full",
                             "base_channels": args.base_channels, "depth": args.depth, "radius": args.radius,
                             "steps": args.steps, "tile": tile, "threads": args.threads, "device": args.device,
                             "amp": amp, "raw": args.raw_path if args.synth else None, "peak": args.peak})
    runs = {cfg["name"]: [] for cfg in cfgs}
    for _ in range(args.repeat):  # interleaved: a load change on a shared machine hits every configuration
        for cfg in cfgs:
            runs[cfg["name"]].append(child("--one", cfg))
    rows = []
    for name, results in runs.items():
        row = dict(sorted(results, key=lambda r: r["s_per_step"])[len(results) // 2])  # the median run
        row["all_s_per_step"] = [r["s_per_step"] for r in results]
        rows.append(row)
    r0 = rows[0]
    print(f"\ngrid {tuple(args.grid)}, model base_channels={args.base_channels} depth={args.depth} "
          f"r={args.radius}: {r0['params']:,} parameters, receptive field {r0['receptive_field']} cells\n")
    print(f"device: {args.device}, threads: {args.threads or 'torch default'}, {args.repeat} run(s) each, "
          f"interleaved (median)\n")
    print("| configuration | active | computed | regions | steps timed | s / step (after the first) | runs (s/step) "
          "| 29 steps (s, estimate) | conv GFLOP/s | bare conv GFLOP/s | peak RSS (MB) | peak GPU memory (GB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = f"{r['peak_gpu_gb']:.1f}" if r.get("peak_gpu_gb") is not None else "-"
        peak = f"{r['peak_gflops']:.0f}" if r.get("peak_gflops") else "-"
        all_runs = ", ".join(f"{v:.2f}" for v in r["all_s_per_step"])
        print(f"| {r['name']} | {r['active_frac']:.0%} | {r['computed_frac']:.0%} | {r['regions']} | {r['steps']} "
              f"| {r['s_per_step']:.2f} | {all_runs} | {29 * r['s_per_step']:.0f} | {r['gflops']:.0f} | {peak} "
              f"| {r['peak_rss_mb']:.0f} | {gpu} |")
    if synth_row:
        y = synth_row["s_per_year"]
        print(f"| voxel_ode.synth.voxel (simulator) | {synth_row['years']} year(s) | {y:.2f} | {29 * y:.0f} | - "
              f"| {synth_row['peak_rss_mb']:.0f} |")
        print("\nspeed-up of the surrogate over the simulator, per step: "
              + ", ".join(f"{r['name']} {y / r['s_per_step']:.1f}x" for r in rows))


if __name__ == "__main__":
    main()
