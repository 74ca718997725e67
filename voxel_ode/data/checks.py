"""Checks against hostile or damaged input: physical ranges of raw grids, statistics,
model configs, and the leftovers of killed runs.

Kept apart from the stages that call them so each stage needs only a one-line hook,
and every check gives one line naming the file, the dataset or field, and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from voxel_ode import schema


# ---------------------------------------------------------------------------
# Physical ranges of raw grids
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """Values outside [low, high] are impossible (``open_low``: low itself too); outside
    ``usual`` they are legal but unusual (a warning; ``hint`` says the likely cause)."""

    low: float
    high: float
    open_low: bool
    usual: tuple[float, float]
    hint: str


# Permeability arrives in m^2 (voxel-ode synth, ~1e-16..1e-11) or mD (other simulators,
# ~1e-3..1e5): the impossible range must hold for both. 1e7 mD is 10,000 darcy, far above
# any rock in either unit; zero-permeability cells are legal but rare (barriers).
_PERM = Bounds(0.0, 1e7, False, (1e-22, 1e5), "permeability is m^2 (~1e-16..1e-11) or mD (~1e-3..1e5)")
RAW_BOUNDS = {
    "PermX": _PERM, "PermY": _PERM, "PermZ": _PERM,
    "Porosity": Bounds(0.0, 1.0, False, (1e-3, 0.6), "porosity is a fraction, 0..1"),
    "Pressure0": Bounds(0.0, 1e9, True, (1e4, 2e8), "pressure is in Pa; bar or MPa values look like this"),
    "Pressure": Bounds(0.0, 1e9, True, (1e4, 2e8), "pressure is in Pa; bar or MPa values look like this"),
    "Temperature0": Bounds(0.0, 1000.0, True, (250.0, 700.0), "temperature is in K; deg C values look like this"),
    "Temperature": Bounds(0.0, 1000.0, True, (250.0, 700.0), "temperature is in K; deg C values look like this"),
    "InjRate": Bounds(-math.inf, math.inf, False, (-1e3, 1e3), "InjRate is kg/s per perforated cell"),
}
CELL_SIZE_USUAL = (0.1, 1e4)  # m


def _cell(mask: np.ndarray, k: int) -> tuple:
    return tuple(int(i) for i in np.unravel_index(np.flatnonzero(mask)[k], mask.shape))


def range_problems(name: str, grid: np.ndarray, mask: np.ndarray, where: str = "") -> tuple[str | None, list[str]]:
    """(error or None, warnings) for raw grid ``name`` over the cells of ``mask``, each
    "dataset: what" with the extreme value and one offending cell (z, y, x)."""
    bounds = RAW_BOUNDS.get(name)
    if bounds is None:
        return None, []
    values = grid[mask]
    if values.size == 0:
        return None, []
    dataset = schema.raw_path(name)
    low_bad = values <= bounds.low if bounds.open_low else values < bounds.low
    bad = low_bad | (values > bounds.high)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        side = f"<= {bounds.low:g}" if bounds.open_low else f"< {bounds.low:g}"
        return (f"{dataset}: value {values[k]:.6g} at active cell (z, y, x) = {_cell(mask, k)}{where} "
                f"is impossible ({bad.sum()} active cells {side} or > {bounds.high:g}; {bounds.hint})"), []
    lo, hi = float(values.min()), float(values.max())
    warnings = []
    if lo < bounds.usual[0] or hi > bounds.usual[1]:
        n = int(((values < bounds.usual[0]) | (values > bounds.usual[1])).sum())
        warnings.append(f"{dataset}: {n} active cells{where} outside the usual {bounds.usual[0]:g}..{bounds.usual[1]:g} "
                        f"(range {lo:.6g}..{hi:.6g}; {bounds.hint})")
    return None, warnings


def grid_problems(statics: dict, mask: np.ndarray, cell_size) -> tuple[str | None, list[str]]:
    """(first error or None, warnings) over the static grids of one raw run: ranges, at least
    one active cell and one active well cell, and the cell sizes (m)."""
    if not mask.any():
        return f"{schema.raw_path('IsActive')}: no active cell (the run has nothing to learn or predict)", []
    warnings = []
    for name in RAW_BOUNDS:
        if name in statics and name in schema.RAW_STATIC_NAMES:
            error, warn = range_problems(name, statics[name], mask)
            if error:
                return error, warnings
            warnings += warn
    if not (mask & (statics["IsWell"] > 0.5)).any():
        return f"{schema.raw_path('IsWell')}: no well in an active cell (nothing drives the flow)", warnings
    off_well = mask & (statics["IsWell"] <= 0.5) & (statics["InjRate"] != 0)
    if off_well.any():
        warnings.append(f"{schema.raw_path('InjRate')}: non-zero at {int(off_well.sum())} active cells that are "
                        f"not wells (e.g. {_cell(off_well, 0)})")
    if cell_size is not None and any(not CELL_SIZE_USUAL[0] <= v <= CELL_SIZE_USUAL[1] for v in cell_size):
        warnings.append(f"{schema.raw_path(schema.PARAMS_SCALAR)}: cell sizes {tuple(cell_size)} m outside the usual "
                        f"{CELL_SIZE_USUAL[0]:g}..{CELL_SIZE_USUAL[1]:g} m")
    return None, warnings


def scalar_warnings(scalars: np.ndarray) -> list[str]:
    """Field scalars are positive totals for injection and production alike (schema)."""
    out = []
    for i, name in enumerate(schema.SCALAR_NAMES):
        if (scalars[:, i] < 0).any():
            out.append(f"{schema.raw_path(name)}: negative values (min {scalars[:, i].min():.6g}); "
                       "field rates and totals are positive for injection and production")
    return out


