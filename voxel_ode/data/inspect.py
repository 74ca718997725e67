"""``voxel-ode inspect FILE``: a raw or prepped file's layout, value ranges over active cells,
what its description declares and what was inferred, and its problems."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import files, schema
from voxel_ode.data import description, pack
from voxel_ode.data import stats

def _print_layout(f: h5py.File) -> None:
    print("layout:")

    def show(name, obj):
        if isinstance(obj, h5py.Dataset):
            print(f"  {name:<40} {str(obj.shape):<24} {obj.dtype}")

    f.visititems(show)
    for key, value in f.attrs.items():
        print(f"  @{key} = {value}")


def _fmt_range(m: stats.Moments) -> str:
    return f"[{m.min:.6g}, {m.max:.6g}]" if m.count else "(no active cells)"


def _inspect_prepped(path: str) -> list[str]:
    problems = []
    with h5py.File(path, "r") as f:
        _print_layout(f)
        need = (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID, schema.PREPPED_OUTPUTS_SCALAR)
        missing = [n for n in need if n not in f]
        if missing:
            return [f"{path}: {n}: missing dataset" for n in missing]
        static, grid = f[schema.PREPPED_STATIC], f[schema.PREPPED_OUTPUTS_GRID]
        if static.ndim != 4 or static.shape[0] != schema.N_STATIC:
            return [f"{path}: {schema.PREPPED_STATIC}: shape {static.shape}, expected ({schema.N_STATIC}, Z, Y, X)"]
        if grid.shape[1:] != (schema.N_DYNAMIC,) + static.shape[1:]:
            return [f"{path}: {schema.PREPPED_OUTPUTS_GRID}: shape {grid.shape} does not match /static {static.shape}"]
        mask = static[schema.STATIC_NAMES.index("IsActive")] == 1
        print(f"active cells: {int(mask.sum())} of {mask.size} ({100 * mask.mean():.1f}%)")
        print("ranges over active cells:")
        for c, name in enumerate(schema.STATIC_NAMES):
            m = stats.Moments()
            m.add(static[c][mask])
            print(f"  static/{name:<28} {_fmt_range(m)}")
        state = [stats.Moments() for _ in schema.DYNAMIC_NAMES]
        for t in range(grid.shape[0]):
            step = grid[t]
            for c in range(schema.N_DYNAMIC):
                values = step[c][mask]
                if not np.isfinite(values).all():
                    problems.append(f"{path}: {schema.PREPPED_OUTPUTS_GRID}: NaN/Inf in active cells at t={t}")
                state[c].add(values)
        for name, m in zip(schema.DYNAMIC_NAMES, state):
            print(f"  outputs_grid/{name:<22} {_fmt_range(m)}")
    return problems


def _inspect_raw(path: str, fill_value, n_timesteps, description_path=None) -> list[str]:
    try:
        with h5py.File(path, "r") as f:
            _print_layout(f)
    except Exception:
        pass  # pack.scan_sim reports it as a problem
    desc = description.find(Path(path).parent, description_path)
    problems, s = pack.scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, desc=desc)
    if s is not None:
        n_cells = int(np.prod(s["grid"]))
        print(f"grid (Z, Y, X) = {s['grid']}, T = {s['n_timesteps']}")
        print(f"active cells: {s['n_active']} of {n_cells} ({100 * s['n_active'] / n_cells:.1f}%)"
              f"; raw IsActive==1: {s['n_raw_active']}")
        print("ranges over active cells:")
        for name, m in zip(schema.STATIC_NAMES, s["static_raw"]):
            print(f"  {name:<32} {_fmt_range(m)}")
        for name, m in zip(schema.DYNAMIC_NAMES, s["state"]):
            print(f"  {name:<32} {_fmt_range(m)}")
        for name, m in zip(schema.DYNAMIC_NAMES, s["delta"]):
            print(f"  {name + ' change per step':<32} {_fmt_range(m)}")
        for i, name in enumerate(schema.SCALAR_NAMES):
            print(f"  {name:<32} [{s['scalars'][:, i].min():.6g}, {s['scalars'][:, i].max():.6g}]")
        print(f"  {'ParamsScalar':<32} [{s['params'].min():.6g}, {s['params'].max():.6g}]")
        print(f"patch origins for 32^3 at stride 8: {len(s['origins'])}")
        print(f"description: {desc.source}; physics priors: {'yes' if s['priors'] else 'no'}")
        for item, note in s["physics"].items():
            print(f"  {item:<32} {note}")
        problems += [f"warning: {w}" for w in s["warnings"]]
    return problems


def inspect_file(path, fill_value=None, n_timesteps=None, description_path=None) -> int:
    """Print what ``voxel-ode inspect`` shows of a raw or prepped file; 1 when it has an
    impossible value or a broken structure, 0 otherwise (unusual values are listed)."""
    path = str(files.regular_file(path, "(file)"))
    print(f"file: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    prepped = False
    try:
        with h5py.File(path, "r") as f:
            prepped = schema.PREPPED_OUTPUTS_GRID in f
    except Exception:
        pass
    problems = _inspect_prepped(path) if prepped else _inspect_raw(path, fill_value, n_timesteps, description_path)
    if problems:
        print("problems:")
        for p in problems:
            print(f"  {p}")
        # unusual values are listed, but only impossible ones fail the file
        return 1 if any(not p.startswith("warning: ") for p in problems) else 0
    print("problems: none")
    return 0
