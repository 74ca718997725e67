"""`voxel-ode synth` (voxel engine): synthetic geothermal reservoir simulations in the v2.4 schema.

Each simulation draws its own geology and operating conditions from (seed, run index)
(``synth.geology``, ``synth.well_rates``) and solves single-phase water flow and heat transport
on the structured grid (``synth.simulator``). This module runs one simulation (``simulate``),
a dataset of them in worker processes (``generate_dataset``) and declares what the files mean
(``DESCRIPTION``, written as ``description.json``).

Output
------
``Output/*[t]`` is the state after t years; t = 0 is the initial state.
Field scalars at t are rates at that state (positive numbers);
FieldEnergyProductionTotal integrates the production energy rate over every
sub-step (0 at t = 0). ``Input/ParamsScalar`` holds the values really used,
in ``schema.PARAM_FIELDS`` order and units.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.data import description, raw
from voxel_ode.synth.geology import Reservoir, SimParams, build_geology, sample_params
from voxel_ode.synth.simulator import Unsafe, run_physics
from voxel_ode.synth.well_rates import well_rates

MIN_GRID = (4, 5, 5)
DEFAULT_GRID = (32, 16, 16)  # (Z, Y, X): demo size; Z is depth and the long axis
DEFAULT_SUBSTEPS = 4  # backward-Euler steps per year
# the attributes of every file
FILE_ATTRS = {"generator": "voxel-ode synth",
              "time_convention": "Output/*[t] = state after t years; t=0 is the initial state"}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def params_vector(p: SimParams, res: Reservoir, inj_rate) -> np.ndarray:
    act = res.active
    log_kh = 0.5 * (np.log10(res.perm[0][act]) + np.log10(res.perm[1][act]))
    values = {
        "InjectionTemperature": p.injection_temperature,
        "TotalInjectionRate": float(inj_rate[inj_rate > 0].sum()),
        "TotalProductionRate": float(-inj_rate[inj_rate < 0].sum()),
        "SurfaceTemperature": p.surface_temperature,
        "GeothermalGradient": p.geothermal_gradient,
        "RockHeatCapacity": p.rock_heat_capacity,
        "RockThermalConductivity": p.rock_conductivity,
        "RockDensity": p.rock_density,
        "RockCompressibility": p.rock_compressibility,
        "FluidCompressibility": p.fluid_compressibility,
        "LogPermMean": float(log_kh.mean()),
        "LogPermStd": float(log_kh.std()),
        "PermAnisotropy": p.perm_anisotropy,
        "PermCorrelationLength": p.perm_correlation_length,
        "PorosityMean": float(res.porosity[act].mean()),
        "FaultTransMultiplier": float(np.exp(np.mean(np.log(p.fault_multipliers)))) if p.n_faults else 1.0,
        "NumFaults": p.n_faults,
        "NumInjectors": sum(res.well_is_injector),
        "NumProducers": len(res.well_is_injector) - sum(res.well_is_injector),
        "CellSizeX": p.cell_size[0],
        "CellSizeY": p.cell_size[1],
        "CellSizeZ": p.cell_size[2],
        "ReservoirTopDepth": p.top_depth,
        "ReservoirThickness": res.mean_thickness,
        "LayerDip": res.layer_dip_deg,
        "BoundaryAquiferStrength": p.aquifer_strength,
    }
    assert set(values) == set(schema.PARAM_NAMES)
    return np.array([values[name] for name in schema.PARAM_NAMES], np.float32)


def sim_rng(seed: int, index: int) -> np.random.Generator:
    """Per-simulation generator from (seed, index): results do not depend on --workers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def simulate(grid=DEFAULT_GRID, seed: int = 0, n_steps: int = schema.N_TIMESTEPS, substeps: int = DEFAULT_SUBSTEPS,
             index: int = 0, progress: bool = False, **overrides) -> dict:
    """Run one synthetic simulation; return {short schema name: array} ready for data.raw.write_simulation.

    ``seed`` and ``index`` pick the random draw (``generate_dataset`` uses index =
    run number). ``overrides`` force SimParams fields, e.g. ``n_injectors=0,
    n_producers=0`` for a run without wells or ``aquifer_strength=0``. The
    returned dict also has ``"_params"`` (the SimParams used), ``"_diagnostics"``
    (solver counts, the rate reduction applied) and ``"_attrs"`` (the file attributes).
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or any(g < m for g, m in zip(grid, MIN_GRID)):
        raise ValueError(f"grid {grid} too small, need at least {MIN_GRID} (Z, Y, X)")
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    rng = sim_rng(seed, index)
    params = sample_params(rng, grid, **overrides)
    res = build_geology(grid, params, rng)
    # Injection water is colder than every active cell (a cold-water reinjection).
    t_min = float(res.temperature0[res.active].min())
    params.injection_temperature = min(params.injection_temperature, t_min - 10.0)
    rate_scale = 1.0
    for attempt in range(6):
        inj_rate = well_rates(res, params, grid) * rate_scale
        try:
            out_p, out_t, scalars, diagnostics = run_physics(res, params, inj_rate, grid, n_steps, substeps,
                                                             progress)
            break
        except Unsafe:
            rate_scale *= 0.5  # too much drawdown for liquid water: halve the rates and rerun
    else:
        raise RuntimeError(f"simulation seed={seed} index={index} stayed unsafe after rate reductions")
    is_well = np.zeros(grid, np.float32)
    is_well[inj_rate != 0] = 1.0
    arrays = {
        "FaultId": res.fault_id.astype(np.float32),
        "IsActive": res.active.astype(np.float32),
        "IsWell": is_well,
        "InjRate": inj_rate.astype(np.float32),
        "PermX": res.perm[0].astype(np.float32),
        "PermY": res.perm[1].astype(np.float32),
        "PermZ": res.perm[2].astype(np.float32),
        "Porosity": res.porosity.astype(np.float32),
        "Pressure0": res.pressure0.astype(np.float32),
        "Temperature0": res.temperature0.astype(np.float32),
        "ParamsScalar": params_vector(params, res, inj_rate),
        "Pressure": out_p,
        "Temperature": out_t,
    }
    for name, values in scalars.items():
        arrays[name] = values.astype(np.float64)
    arrays["_params"] = params
    arrays["_diagnostics"] = dict(diagnostics, rate_scale=rate_scale)
    arrays["_attrs"] = FILE_ATTRS
    return arrays


def _generate_one(job) -> str:
    out_dir, index, grid, seed, n_steps, substeps, progress, overrides = job
    arrays = simulate(grid, seed, n_steps=n_steps, substeps=substeps, index=index, progress=progress, **overrides)
    return str(raw.write_simulation(Path(out_dir) / raw.run_file_name(index), arrays))


def generate_dataset(out_dir, n: int, grid=DEFAULT_GRID, seed: int = 0, workers: int = 1,
                     n_steps: int = schema.N_TIMESTEPS, substeps: int = DEFAULT_SUBSTEPS, progress: bool = True,
                     **overrides) -> list[Path]:
    """Write ``out_dir/v2.4_0001.h5 .. v2.4_<n>.h5``; run i uses the draw (seed, i)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_sim_bar = progress and (n == 1 or workers == 1) and int(np.prod(grid)) > 200_000
    jobs = [(str(out_dir), i, tuple(grid), seed, n_steps, substeps, per_sim_bar, overrides) for i in range(1, n + 1)]
    bar = tqdm(total=n, desc="synth", unit="sim", disable=not progress)
    paths = []
    # Always in worker processes started with "spawn": safe when the caller has
    # imported torch, and the environment below gives each worker single-threaded
    # BLAS (multi-threaded OpenBLAS made the sparse solves ~5x slower on a shared
    # 2-core machine). The runs are independent and seeded by (seed, index).
    saved = {var: os.environ.get(var) for var in _THREAD_VARS}
    os.environ.update({var: "1" for var in _THREAD_VARS})
    try:
        with mp.get_context("spawn").Pool(max(1, min(workers, n))) as pool:
            for path in pool.imap(_generate_one, jobs):
                paths.append(Path(path))
                bar.update(1)
            pool.close()
            pool.join()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    bar.close()
    description.write(out_dir / description.FILE_NAME, DESCRIPTION)
    return paths


def _param(name: str) -> dict:
    return {"param": schema.PARAM_NAMES.index(name), "unit": schema.PARAM_FIELDS[schema.PARAM_NAMES.index(name)].unit}


# What voxel-ode synth's files mean (voxel_ode/description.py), written next to them.
DESCRIPTION = description.Description.from_dict({
    "permeability_unit": "m2", "first_report": "initial", "lateral_boundary": "fixed_pressure",
    "well_inflow": "as_given",  # the engine's wells are per-cell mass sources
    "quantities": {name: _param(name) for name in (
        "CellSizeX", "CellSizeY", "CellSizeZ", "RockCompressibility", "FluidCompressibility", "InjectionTemperature",
        "RockHeatCapacity", "RockDensity", "RockThermalConductivity")}
    | {"BoundaryMultiplier": _param("BoundaryAquiferStrength")}}, "voxel-ode synth")
