"""Tiny raw v2.4 files for tests, written directly with h5py (no simulator).

The values are random but shaped and ranged like the real thing, so the data
path (validation, prep, stats, dataset) can be tested without `synth`.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import schema


def make_raw_arrays(grid=(12, 10, 8), n_t=6, seed=0, inactive_frac=0.3):
    """Return {short name: array} for one raw simulation."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    active = (rng.random(grid) > inactive_frac).astype(np.float32)
    z = np.arange(nz, dtype=np.float32)[:, None, None] * np.ones(grid, np.float32)
    p0 = (1e7 + 1e4 * z).astype(np.float32)
    t0 = (350.0 + 0.5 * z).astype(np.float32)
    arrays = {
        "FaultId": np.zeros(grid, np.float32),
        "IsActive": active,
        "IsWell": np.zeros(grid, np.float32),
        "InjRate": np.zeros(grid, np.float32),
        "PermX": (10 ** rng.normal(-13, 0.5, grid)).astype(np.float32),
        "PermY": (10 ** rng.normal(-13, 0.5, grid)).astype(np.float32),
        "PermZ": (10 ** rng.normal(-14, 0.5, grid)).astype(np.float32),
        "Porosity": rng.uniform(0.05, 0.3, grid).astype(np.float32),
        "Pressure0": p0,
        "Temperature0": t0,
        "ParamsScalar": rng.normal(0, 1, schema.N_PARAMS).astype(np.float32),
    }
    for name, size in zip(("CellSizeX", "CellSizeY", "CellSizeZ"), (100.0, 80.0, 10.0)):  # declared in DESCRIPTION
        arrays["ParamsScalar"][schema.PARAM_NAMES.index(name)] = size
    arrays["FaultId"][:, :, nx // 2] = 1
    arrays["IsWell"][:, 1, 1] = 1
    arrays["InjRate"][:, 1, 1] = 2.0
    arrays["IsWell"][:, ny - 2, nx - 2] = 1
    arrays["InjRate"][:, ny - 2, nx - 2] = -2.0
    steps = np.arange(n_t, dtype=np.float32)[:, None, None, None]
    pressure = p0[None] + 1e4 * steps * rng.uniform(0.5, 1.5, (n_t,) + grid).astype(np.float32)
    temperature = t0[None] - 0.2 * steps * rng.uniform(0.5, 1.5, (n_t,) + grid).astype(np.float32)
    pressure[0], temperature[0] = p0, t0
    # inactive cells never change
    pressure[:, active == 0] = p0[active == 0]
    temperature[:, active == 0] = t0[active == 0]
    arrays["Pressure"] = pressure.astype(np.float32)
    arrays["Temperature"] = temperature.astype(np.float32)
    for i, name in enumerate(schema.SCALAR_NAMES):
        arrays[name] = (10.0 ** (i + 2) * (1 + 0.1 * np.arange(n_t))).astype(np.float64)
    arrays["FieldEnergyProductionTotal"] = np.cumsum(arrays["FieldEnergyProductionRate"]) * 3.15e7
    arrays["FieldEnergyProductionTotal"][0] = 0.0
    return arrays


def write_raw_sim(path, arrays=None, skip=(), **kwargs) -> Path:
    """Write a raw v2.4 file; ``skip`` names datasets to leave out (for bad-input tests)."""
    arrays = make_raw_arrays(**kwargs) if arrays is None else arrays
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            if name in skip:
                continue
            f.create_dataset(schema.raw_path(name), data=value)
    return path


# What these files declare: cell sizes in ParamsScalar like the synth's, closed sides; the rest
# of ParamsScalar is noise, so nothing else is declared (generic constants).
DESCRIPTION = {"permeability_unit": "m2", "first_report": "initial", "lateral_boundary": "closed",
               "quantities": {name: {"param": schema.PARAM_NAMES.index(name), "unit": "m"}
                              for name in ("CellSizeX", "CellSizeY", "CellSizeZ")}}


def write_raw_dir(root, n=3, description=DESCRIPTION, **kwargs) -> list[Path]:
    """Write ``n`` simulations named like a real run directory (v2.4_0001.h5, ...) and their
    description.json (None: none, so prep infers what it can and computes no priors)."""
    paths = [write_raw_sim(Path(root) / f"v2.4_{i + 1:04d}.h5", seed=i, **kwargs) for i in range(n)]
    if description is not None:
        (Path(root) / "description.json").write_text(json.dumps(description))
    return paths
