"""The priors' unknown constants fitted on a few training runs, for exports that do not declare them.

Without cell sizes or a lateral boundary (data/description.py) the priors cannot be computed from
declared values, and ~25 runs do not teach a network field-wide pressure (docs/benchmarks.md,
"open-darts development set"). The runs' own pressure changes can tell what is missing.

The pressure march (priors.py) with water at its initial temperature is linear. With
cells dx = dy = h, dz = a h and total compressibility c_t, its shape depends only on the aspect
a, on c_t h^2 (how far a change diffuses in a year, in cells) and on the boundary; its size
scales as 1 / h. So: for each candidate (a, c_t h^2, boundary) the best single gain against
the true changes of the calibration runs at every report; the lowest relative error wins and
h follows from its gain. Declared values are held fixed. A best error above
``MAX_USEFUL_ERROR`` means the model explains too little: no priors then.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from voxel_ode.physics import priors as physics_priors

N_RUNS = 4  # calibration runs, spread over the training split (~0.35 s per run and candidate; 2 runs
# gave held-out pressure priors of 0.05-0.22 depending on the pair, 4 runs 0.07-0.14)
ASPECTS = (1.0, 0.3, 0.1, 0.03)  # dz / dx
DIFFUSIVITIES = (1e-7, 1e-6, 1e-5, 1e-4)  # c_t h^2, m^2/Pa
BOUNDARIES = (("closed", 0.0), ("pore_volume", 100.0), ("pore_volume", 1000.0), ("fixed_pressure", 0.1))
REFERENCE_CELL = 10.0  # m: the horizontal size the fit starts from
MAX_USEFUL_ERROR = 0.8
# active cells of a calibration run: ~66 candidates need a direct solve each (a few s); larger
# grids would need an iterative one per candidate (tens of minutes), and fitting on a coarsened
# copy missed badly (open-darts runs, 2^3 blocks: pressure prior 0.6-0.9 instead of 0.05-0.10)
MAX_CELLS = physics_priors.DIRECT_SOLVE_MAX_CELLS
COMPRESSIBILITIES = {"TotalCompressibility", "RockCompressibility", "FluidCompressibility"}


@dataclass
class Run:
    """One calibration run: the priors' inputs (cell size and constants are placeholders) and
    the true pressure change since t = 0 at its active cells, (n_reports, n_active) Pa."""

    reservoir: physics_priors.Reservoir
    true_change: np.ndarray
    cell_size: tuple | None = None  # declared (m)


@dataclass
class Fit:
    cell_size: tuple
    compressibility: float
    boundary: str
    multiplier: float
    error: float  # mean relative error of the scaled warm march over every report

    def note(self, n_runs: int) -> str:
        return f"calibrated on {n_runs} training runs (pressure change, relative error {self.error:.2f})"


def _score(runs: list[Run], cell_size, compressibility, boundary, multiplier) -> tuple[float, float]:
    """(mean relative error over the runs, each capped at 1; gain) of the warm march, one gain for all."""
    pairs = []
    for run in runs:
        res = dataclasses.replace(run.reservoir, cell_size=run.cell_size or cell_size, boundary=boundary,
                                  boundary_multiplier=multiplier, compressibility=compressibility)
        pairs.append((physics_priors.warm_pressure_change(res, run.true_change.shape[0])[1:], run.true_change[1:]))
    gain = sum(float((m * t).sum()) for m, t in pairs) / max(sum(float((m * m).sum()) for m, _ in pairs), 1e-300)
    if not gain > 0:
        return np.inf, 0.0
    # capped at 1 (what no prior scores): a run that no candidate explains (on the development set
    # one whose wells barely move the pressure) must not veto the fit of the others
    errors = [min(np.linalg.norm(gain * m - t) / max(np.linalg.norm(t), 1e-30), 1.0) for m, t in pairs]
    return float(np.mean(errors)), gain


def fit(runs: list[Run], boundary: tuple | None = None, compressibility: float | None = None,
        progress=None) -> Fit | None:
    """The best candidate, or None when no run has a pressure change or none fits well enough.
    ``boundary``: declared (kind, multiplier); ``compressibility``: declared c_t (1/Pa), used
    only where the cell sizes are declared too (else c_t h^2 is fitted as one)."""
    runs = [r for r in runs if np.any(r.true_change)]
    if not runs:
        return None
    declared_cells = runs[0].cell_size  # the description declares them for all runs or none
    aspects = (None,) if declared_cells else ASPECTS
    boundaries = (boundary,) if boundary else BOUNDARIES
    spreads = (None,) if declared_cells and compressibility else DIFFUSIVITIES
    h2 = declared_cells[0] ** 2 if declared_cells else REFERENCE_CELL ** 2

    def evaluate(aspect, bnd, spread):
        cell = None if aspect is None else (REFERENCE_CELL, REFERENCE_CELL, aspect * REFERENCE_CELL)
        ct = compressibility if spread is None else spread / h2
        return _score(runs, cell, ct, *bnd) + (aspect, bnd, spread)

    results = []
    for aspect, bnd, spread in itertools.product(aspects, boundaries, spreads):
        results.append(evaluate(aspect, bnd, spread))
        if progress:
            progress()
    best = min(results, key=lambda r: r[0])
    if best[4] is not None:  # half a decade either side of the best spread
        best = min([best] + [evaluate(best[2], best[3], best[4] * f) for f in (10 ** -0.5, 10 ** 0.5)],
                   key=lambda r: r[0])
    error, gain, aspect, (kind, multiplier), spread = best
    if not error <= MAX_USEFUL_ERROR:
        return None
    if aspect is None:
        cell = declared_cells
        ct = compressibility if spread is None else spread / h2
    else:
        h = float(np.clip(REFERENCE_CELL / gain, 0.1, 1e4))  # the march's size scales as 1 / h
        cell, ct = (h, h, aspect * h), spread / h ** 2
    return Fit(tuple(float(v) for v in cell), float(np.clip(ct, 1e-12, 1e-6)), kind, float(multiplier), error)


