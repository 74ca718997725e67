"""Prep cost of a new run: the physics priors (physics_priors.priors) and the whole in-memory prep
of a raw file (pack.prepare_arrays), as CPU seconds of this process (one thread) and wall time.

    python benchmarks/bench_well_response.py --darts 5             # first 5 open-darts dev runs
    python benchmarks/bench_well_response.py --grid 326 70 76      # a synthetic full-size geology

The open-darts runs use benchmarks/descriptions/darts-dev.json; the synthetic geology is synth's
draw (no time stepping) with its own description's physics.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voxel_ode.data import description
from voxel_ode.synth import geology, voxel
from voxel_ode.synth.well_rates import well_rates
from voxel_ode.physics import priors as physics_priors
from voxel_ode.data import pack
from voxel_ode import schema


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def darts_runs(n: int) -> None:
    desc = description.load(REPO / "benchmarks" / "descriptions" / "darts-dev.json")
    files = sorted((REPO.parent / "shared" / "darts-dev" / "data").glob("v2.4_*.h5"))[:n]
    print("| run | active cells | priors CPU s | whole prep CPU s | whole prep wall s |\n|---|---|---|---|---|")
    for path in files:
        arrays, cpu, wall = timed(lambda: pack.prepare_arrays(path, desc=desc))
        active = arrays["static"][1] > 0.5
        statics = {n: arrays["static"][i] for i, n in enumerate(schema.STATIC_NAMES)}
        # the packed arrays are in SI units (m^2) and start at t = 0, whatever the raw file declared
        packed = dataclasses.replace(desc, permeability_unit="m2", first_report=None)
        physics = description.resolve(packed, arrays["params_scalar"], statics["PermX"][active],
                                      statics["Pressure0"][active], arrays["outputs_grid"][1, 0][active], path.name)
        res = pack.reservoir(statics, physics, statics[schema.INJECTION_GAP])
        _, prior_cpu, _ = timed(lambda: physics_priors.priors(res, arrays["outputs_grid"].shape[0]))
        print(f"| {path.name} | {int(active.sum()):,} | {prior_cpu:.2f} | {cpu:.2f} | {wall:.2f} |")


def synthetic(grid, seed: int, n_reports: int) -> None:
    rng = voxel.sim_rng(seed, 0)
    params = geology.sample_params(rng, grid)
    geo = geology.build_geology(grid, params, rng)
    inj = well_rates(geo, params, grid)
    res = physics_priors.Reservoir(geo.active, tuple(geo.perm), geo.porosity, geo.temperature0, inj,
                                  params.cell_size, "fixed_pressure", params.aquifer_strength,
                                  params.rock_compressibility + params.fluid_compressibility,
                                  injection_gap=np.where(geo.active, params.injection_temperature - geo.temperature0, 0))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _, cpu, wall = timed(lambda: physics_priors.priors(res, n_reports))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"grid {grid}: {int(geo.active.sum()):,} active cells; priors for {n_reports} reports: "
          f"{cpu:.1f} CPU s, {wall:.1f} s wall, peak RSS +{rss1 - rss0:.0f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--darts", type=int, default=0, help="time the first N open-darts development runs")
    ap.add_argument("--grid", type=int, nargs=3, default=None, help="time a synthetic geology of this grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reports", type=int, default=30)
    args = ap.parse_args()
    if args.darts:
        darts_runs(args.darts)
    if args.grid:
        synthetic(tuple(args.grid), args.seed, args.reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
