"""Prep's calibration: where the dataset description lacks what the physics priors need, fit it on
training runs (physics/calibration.py) and put the result into the description, each entry
marked as calibrated, so stats.json, checkpoints and raw-file rollouts all use what prep used."""

from __future__ import annotations

import dataclasses
import sys

import h5py
import numpy as np
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.data import description, raw
from voxel_ode.physics import calibration
from voxel_ode.physics import priors as physics_priors
from voxel_ode.utils import UserError

def _calibration_run(path, desc: description.Description, fill_value):
    """(calibration.Run, resolved physics) of one raw file: its static inputs in SI units and its
    true pressure change since t = 0 at every report."""
    with h5py.File(path, "r") as f:
        grid = f[schema.raw_path("IsActive")].shape
        statics, _, _, _, mask, physics = raw.resolved_inputs(f, path, grid, fill_value, desc)
        pressure = raw.read_dataset(f[schema.raw_path("Pressure")]).astype(np.float64)
    change = pressure[:, mask] - statics["Pressure0"][mask]
    change[:, ~np.isfinite(change).all(axis=0) | (np.abs(change) > 1e9).any(axis=0)] = 0.0  # fill values
    change = np.concatenate([np.zeros_like(change[:1]), change]) if physics.first_report == "year1" else change
    change[0] = 0.0
    perm = tuple(statics[n].astype(np.float64) for n in ("PermX", "PermY", "PermZ"))
    res = physics_priors.Reservoir(mask, perm, statics["Porosity"], statics["Temperature0"], statics["InjRate"],
                                  (1.0, 1.0, 1.0))
    return calibration.Run(res, change, physics.cell_size), physics


def calibrate_description(desc: description.Description, train_paths, fill_value=None, progress=True) -> description.Description:
    """``desc`` with what the priors lack (cell sizes, compressibility, lateral boundary) fitted on
    a few training runs (calibration.py); unchanged when it declares them or nothing fits."""
    cells = all(q in desc.quantities for q in description.CELL_SIZE_QUANTITIES)
    if (cells and desc.lateral_boundary) or not train_paths:
        return desc
    picks = sorted({train_paths[int(i)] for i in np.linspace(0, len(train_paths) - 1, calibration.N_RUNS).round()})
    runs, physics = [], None
    for path in picks:
        try:
            run, physics = _calibration_run(path, desc, fill_value)
            runs.append(run)
        except (UserError, raw.DatasetProblem, OSError, KeyError, ValueError):
            continue  # the scan names what is wrong with it
    if not runs:
        return desc
    if max(r.true_change.shape[1] for r in runs) > calibration.MAX_CELLS:
        tqdm.write(f"calibration: skipped, more than {calibration.MAX_CELLS} active cells per run (too slow); "
                   "declare the cell sizes and the lateral boundary (description.json) for physics priors",
                   file=sys.stderr)
        return desc
    v = physics.values
    boundary = (physics.lateral_boundary, v.get("BoundaryMultiplier", 0.0)) if physics.lateral_boundary else None
    with tqdm(desc="calibrate", unit="candidate", disable=not progress, leave=False) as bar:
        result = calibration.fit(runs, boundary, description.declared_compressibility(v), progress=bar.update)
    if result is None:
        tqdm.write("calibration: the pressure changes of the training runs fit no candidate; no physics priors",
                   file=sys.stderr)
        return desc
    dx, dy, dz = result.cell_size
    tqdm.write(f"calibration ({len(runs)} training runs, relative error {result.error:.2f}): cells "
               f"{dx:.3g} x {dy:.3g} x {dz:.3g} m, total compressibility {result.compressibility:.3g} /Pa, "
               f"lateral boundary {result.boundary} x {result.multiplier:g}", file=sys.stderr)
    return apply_calibration(desc, result, len(runs))


def apply_calibration(desc: description.Description, result: calibration.Fit, n_runs: int) -> description.Description:
    """``desc`` with the fitted constants as quantities, each marked as calibrated."""
    quantities, calibrated = dict(desc.quantities), dict(desc.calibrated)
    note = result.note(n_runs)
    fitted = {}
    cells_declared = all(q in desc.quantities for q in description.CELL_SIZE_QUANTITIES)
    if not cells_declared:
        fitted.update(zip(description.CELL_SIZE_QUANTITIES, result.cell_size))
    if not cells_declared or not calibration.COMPRESSIBILITIES & set(desc.quantities):
        fitted["TotalCompressibility"] = result.compressibility
    if desc.lateral_boundary is None:
        fitted["BoundaryMultiplier"] = result.multiplier
        calibrated["lateral_boundary"] = note
    for name, value in fitted.items():
        quantities[name] = {"value": value, "unit": description.QUANTITIES[name][0]}
        calibrated[name] = note
    if "TotalCompressibility" in fitted:  # c_t is fitted as one
        for name in calibration.COMPRESSIBILITIES - {"TotalCompressibility"}:
            quantities.pop(name, None)
    return dataclasses.replace(desc, quantities=quantities, calibrated=calibrated,
                               lateral_boundary=desc.lateral_boundary or result.boundary)
