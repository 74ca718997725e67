"""Benchmark of `voxel-ode synth`: the demo dataset and one full-size simulation.

    python benchmarks/bench_synth.py demo  [--n 20 --grid 32 16 16 --workers 2]
    python benchmarks/bench_synth.py full  [--n_steps 30 --substeps 4]

Prints wall time, peak memory of the worker processes (they run the
simulations) and, for the demo, how much the runs differ: the yearly pressure
change (RMS over active cells, years 2..29), the largest pressure change at a
well and how far the cold plume (>5 K cooler) reaches from the injectors.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import schema
from voxel_ode.synth import voxel as synth


def _summary(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        act = f["Input/IsActive"][()] > 0
        wells = f["Input/IsWell"][()] > 0
        inj = (f["Input/InjRate"][()] > 0).any(axis=0)
        p = f["Output/Pressure"][()].astype(np.float64)
        t = f["Output/Temperature"][()]
    yearly = np.sqrt((np.diff(p, axis=0)[:, act] ** 2).mean(axis=1))  # RMS change per year
    cooled = (t[-1] - t[0] < -5.0) & act
    _, ys, xs = np.nonzero(cooled)
    reach = 0
    for y0, x0 in np.argwhere(inj):
        if len(ys):
            reach = max(reach, int(np.maximum(abs(ys - y0), abs(xs - x0)).max()))
    return {
        "active": act.mean(),
        "yearly_rms_dp": float(np.median(yearly[1:])) if len(yearly) > 1 else float(yearly[0]),
        "well_dp": float(np.abs(p[:, wells] - p[0, wells]).max()) if wells.any() else 0.0,
        "plume_reach": reach,
    }


def bench_demo(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        start = time.perf_counter()
        paths = synth.generate_dataset(tmp, args.n, tuple(args.grid), seed=0, workers=args.workers)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in paths)
        rows = [_summary(p) for p in paths]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"demo: {args.n} sims {tuple(args.grid)} x {schema.N_TIMESTEPS}, {args.workers} workers: "
          f"{elapsed:.1f} s wall, {size / 1e6:.1f} MB written, peak worker RSS {rss:.0f} MB")
    for key, unit, scale in (("yearly_rms_dp", "Pa", 1), ("well_dp", "bar", 1e-5), ("plume_reach", "cells", 1),
                             ("active", "fraction", 1)):
        v = np.array([r[key] for r in rows]) * scale
        print(f"  {key:14s} min {v.min():10.3g}  median {np.median(v):10.3g}  max {v.max():10.3g}  [{unit}]")


def bench_full(args) -> None:
    grid = schema.FULL_GRID_SHAPE
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        start = time.perf_counter()
        paths = synth.generate_dataset(tmp, 1, grid, seed=0, workers=1, n_steps=args.n_steps,
                                       substeps=args.substeps)
        elapsed = time.perf_counter() - start
        size = paths[0].stat().st_size
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    years = args.n_steps - 1
    print(f"full: {grid} x {args.n_steps} reports ({years} years, {args.substeps} sub-steps/year): "
          f"{elapsed:.1f} s wall, {size / 1e6:.0f} MB file, peak worker RSS {rss:.0f} MB")
    if args.n_steps < schema.N_TIMESTEPS:
        per_year = elapsed / max(years, 1)
        print(f"  extrapolated to {schema.N_TIMESTEPS - 1} years: ~{per_year * (schema.N_TIMESTEPS - 1):.0f} s "
              "(includes setup in the per-year cost, so an upper estimate)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["demo", "full"])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--grid", type=int, nargs=3, default=list(synth.DEFAULT_GRID))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n_steps", type=int, default=schema.N_TIMESTEPS)
    parser.add_argument("--substeps", type=int, default=synth.DEFAULT_SUBSTEPS)
    parser.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    (bench_demo if args.what == "demo" else bench_full)(args)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
