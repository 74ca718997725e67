"""Benchmark of the well features prep derives per simulation (one pressure solve per support strength,
one heat-front pass, the thermal prior: 29 years of heat transport on three flow fields, the
responses' change with water as cold as that prior: five more pressure solves, and the pressure
prior: 29 years of pressure steps, four solves each).

    python benchmarks/bench_well_response.py [--grid 326 70 76] [--repeats 2]

Builds a synthetic geology on the grid (synth's draw, no time stepping), then
times well_response.well_fields, well_response.thermal_prior,
well_response.cold_response_change and well_response.pressure_prior and reports the peak memory
each added.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxel_ode import schema, synth, well_response  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, nargs=3, default=(326, 70, 76))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    grid = tuple(args.grid)
    rng = synth._sim_rng(args.seed, 0)
    params = synth.sample_params(rng, grid)
    res = synth.build_geology(grid, params, rng)
    inj = synth._well_rates(res, params, grid)
    # field scalars as the synth writes them at t = 0 (only the injection enthalpy is read)
    q_inj = float(inj[inj > 0].sum())
    scalars = np.zeros((1, schema.N_SCALARS))
    scalars[0, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")] = q_inj
    scalars[0, schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")] = q_inj * synth.water_enthalpy(
        params.injection_temperature)
    print(f"grid {grid}: {int(res.active.sum()):,} active cells, {int((inj != 0).sum())} well cells")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = well_response.well_fields(res.active, list(res.perm), res.porosity, res.temperature0, inj,
                                        params.cell_size, scalars)
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name, r in out.items():
        values = r[res.active]
        unit = next(f.unit for f in schema.STATIC_FIELDS if f.name == name)
        print(f"{name}: min {values.min():.3g} max {values.max():.3g} {unit}")
    print(f"well_fields: best {min(times):.2f} s of {len(times)}, peak RSS +{rss1 - rss0:.0f} MB "
          f"(process peak {rss1:.0f} MB)")
    responses = {n: out[n] for n in schema.RESPONSE_NAMES}
    rock_heat = params.rock_heat_capacity * params.rock_density
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        prior = well_response.thermal_prior(res.active, list(res.perm), res.porosity, res.temperature0, inj,
                                            params.cell_size, responses, schema.N_TIMESTEPS,
                                            params.rock_conductivity, rock_heat)
        times.append(time.perf_counter() - t0)
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    last = prior[-1][:, res.active].astype(np.float64)
    print(f"thermal prior at year {schema.N_TIMESTEPS - 1}: share of active cells above 0.5: "
          + ", ".join(f"{n} {np.mean(v > 0.5):.3f}" for n, v in zip(schema.THERMAL_PRIOR_NAMES, last)))
    print(f"thermal_prior: best {min(times):.2f} s of {len(times)}, peak RSS +{rss2 - rss1:.0f} MB over the above "
          f"(process peak {rss2:.0f} MB), {prior.nbytes / 2**20:.0f} MB of float16 output")
    gap = out[schema.INJECTION_GAP]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cold = well_response.cold_response_change(res.active, list(res.perm), res.porosity, res.temperature0, inj,
                                                  params.cell_size, responses, prior, gap)
        times.append(time.perf_counter() - t0)
    rss3 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for name, d in cold.items():
        print(f"{name}: min {d[res.active].min():.3g} max {d[res.active].max():.3g} Pa")
    print(f"cold_response_change: best {min(times):.2f} s of {len(times)}, peak RSS +{rss3 - rss2:.0f} MB over the above")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pressure = well_response.pressure_prior(res.active, list(res.perm), res.porosity, res.temperature0, inj,
                                                params.cell_size, prior, gap, params.aquifer_strength,
                                                params.rock_compressibility + params.fluid_compressibility)
        times.append(time.perf_counter() - t0)
    rss4 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    last = pressure[-1][res.active]
    print(f"pressure prior at year {schema.N_TIMESTEPS - 1}: min {last.min():.3g} max {last.max():.3g} Pa "
          f"(support {params.aquifer_strength:.3g})")
    print(f"pressure_prior: best {min(times):.2f} s of {len(times)}, peak RSS +{rss4 - rss3:.0f} MB over the above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
