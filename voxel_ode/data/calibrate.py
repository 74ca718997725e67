"""Prep's calibration: where the dataset description lacks what the physics priors need, infer it
from training runs (physics/calibration.py) and put the result into the description, each entry
marked as calibrated, so stats.json, checkpoints and raw-file rollouts all use what prep used.
The report (which runs, how well each is explained, what was fitted and how well it is pinned,
the warnings, whether it is used) goes into stats.json as "calibration"."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.data import description, limits, pack, raw
from voxel_ode.physics import calibration, reduced
from voxel_ode.physics import priors as physics_priors
from voxel_ode.utils import UserError

HEAT_QUANTITIES = ({"RockHeatCapacityVolumetric"}, {"RockHeatCapacity", "RockDensity"})
# A run that fell short of its rates (limits.SHORTFALL) had a well held at a bottomhole limit: its
# pressure is capped by a limit the constants' fit does not model, so it is not a calibration run
# where enough others are.
SHORTFALL = limits.SHORTFALL


def _calibration_run(path, desc: description.Description, fill_value):
    """(calibration.Run, resolved physics) of one raw file: its static inputs in SI units, its true
    pressure and temperature changes since t = 0 at every report and its injection temperature
    (declared, else from the field scalars with a declared offset: the fit adds its own)."""
    with h5py.File(path, "r") as f:
        grid = f[schema.raw_path("IsActive")].shape
        statics, _, scalars, _, mask, physics = raw.resolved_inputs(f, path, grid, fill_value, desc)
        changes = []
        for name in ("Pressure", "Temperature"):
            values = raw.read_dataset(f[schema.raw_path(name)]).astype(np.float64)
            change = values[:, mask] - statics[name + "0"][mask].astype(np.float64)
            change[:, ~np.isfinite(change).all(axis=0) | (np.abs(change) > 1e9).any(axis=0)] = 0.0  # fill values
            change = np.concatenate([np.zeros_like(change[:1]), change]) if physics.first_report == "year1" else change
            change[0] = 0.0
            changes.append(change)
    perm = tuple(statics[n].astype(np.float64) for n in ("PermX", "PermY", "PermZ"))
    res = physics_priors.Reservoir(mask, perm, statics["Porosity"], statics["Temperature0"], statics["InjRate"],
                                   (1.0, 1.0, 1.0), wellbore=physics.wellbore)
    return calibration.Run(res, changes[0], physics.cell_size, changes[1], pack.injection_temperature(physics, scalars),
                           Path(path).name), physics


def delivered_share(path, fill_value=None) -> float | None:
    """The smallest share, over the years and over injection and production, of the wells' rates
    (InjRate at active cells) that the field delivered (its water rates); None where the file
    cannot tell."""
    shares = delivered_shares(path, fill_value)
    return None if shares is None else float(np.nanmin(shares))


def delivered_shares(path, fill_value=None) -> np.ndarray | None:
    """(reports, 2) the share of the wells' injection and production rates (InjRate at active
    cells, in its own unit) the field delivered each report (its water rates; NaN where the wells
    have no such rate); None where the file cannot tell."""
    try:
        with h5py.File(path, "r") as f:
            rate = raw.read_dataset(f[schema.raw_path("InjRate")]).astype(np.float64)
            keep = (raw.read_dataset(f[schema.raw_path("IsActive")]) > 0.5) & np.isfinite(rate) & (np.abs(rate) < 1e9)
            if fill_value is not None:
                keep &= rate != fill_value
            rate = np.where(keep, rate, 0.0)
            delivered = [np.abs(raw.read_dataset(f[schema.raw_path(n)]).astype(np.float64))
                         for n in ("FieldWaterInjectionRate", "FieldWaterProductionRate")]
    except (OSError, KeyError, raw.DatasetProblem):
        return None
    shares = np.stack([d / target if target > 0 and np.isfinite(d).all() else np.full(len(d), np.nan)
                       for d, target in zip(delivered, (rate[rate > 0].sum(), -rate[rate < 0].sum()))], axis=1)
    return None if np.isnan(shares).all() else shares


def held_their_rates(train_paths, fill_value=None) -> list:
    """The training runs whose field delivered its wells' rates every year (SHORTFALL), next to the
    best-delivering run (a file's rates in another unit than InjRate's shift every run alike)."""
    shares = {p: delivered_share(p, fill_value) for p in train_paths}
    known = [v for v in shares.values() if v is not None and v > 0]
    if not known:
        return list(train_paths)
    best = max(known)
    return [p for p, v in shares.items() if v is None or v >= best * (1 - SHORTFALL)]


def _picks(train_paths, fill_value=None) -> tuple[list, list]:
    """(calibration runs spread over the training runs that held their rates, where at least
    calibration.MIN_RUNS did, else over all; the runs left out for falling short)."""
    held = held_their_rates(train_paths, fill_value)
    pool = held if len(held) >= calibration.MIN_RUNS else list(train_paths)
    picks = sorted({pool[int(i)] for i in np.linspace(0, len(pool) - 1, calibration.N_RUNS).round()})
    return picks, [p for p in train_paths if p not in pool]


def _declared(desc: description.Description, physics: description.Physics) -> calibration.Declared:
    v = physics.values
    heat = None
    if "RockHeatCapacityVolumetric" in v:
        heat = v["RockHeatCapacityVolumetric"]
    elif "RockHeatCapacity" in v and "RockDensity" in v:
        heat = v["RockHeatCapacity"] * v["RockDensity"]
    return calibration.Declared(
        (physics.lateral_boundary, v.get("BoundaryMultiplier", 0.0)) if physics.lateral_boundary else None,
        description.declared_compressibility(v), heat,
        v.get("RockThermalConductivity", physics_priors.GENERIC_ROCK_CONDUCTIVITY), desc.outside_heat_exchange,
        "InjectionTemperature" in v or "InjectionTemperatureOffset" in v)


def _not_used(why: str) -> dict:
    return {"runs": {}, "fitted": {}, "warnings": [why], "used": False}


def calibrate_description(desc: description.Description, train_paths, fill_value=None, progress=True,
                          blocks=None) -> tuple[description.Description, dict | None]:
    """(``desc`` with what the priors lack fitted on a few training runs, the report for stats.json's
    "calibration"). Runs when the cell sizes or the lateral boundary are not declared; the thermal
    constants the description lacks are fitted with them, then, where the fit is used and training
    runs fell short of their rates, the bottomhole limits it lacks (data/limits.py; the report's
    "limits"; a description that declares cells and boundary declares its limits too, or has
    none). Report None: nothing to calibrate. ``blocks``: fit on
    blocks of (fz, fy, fx) cells (default: cell by cell up to MAX_CELLS active cells, blocks that
    bring a run to about half of it above)."""
    cells = all(q in desc.quantities for q in description.CELL_SIZE_QUANTITIES)
    if (cells and desc.lateral_boundary) or not train_paths:
        return desc, None
    desc, report = _calibrate_constants(desc, train_paths, fill_value, progress, blocks)
    if report["used"]:
        shares = {p: delivered_shares(p, fill_value) for p in train_paths}
        desc, fitted, warnings = limits.calibrate_limits(desc, train_paths, shares, fill_value, progress)
        report["warnings"] += warnings
        if fitted:
            report["limits"] = fitted
        for line in warnings:
            tqdm.write(f"calibration: {line}", file=sys.stderr)
    return desc, report


def _calibrate_constants(desc, train_paths, fill_value, progress, blocks) -> tuple[description.Description, dict]:
    picks, short = _picks(train_paths, fill_value)
    runs, physics = [], None
    for path in picks:
        try:
            run, physics = _calibration_run(path, desc, fill_value)
        except (UserError, raw.DatasetProblem, OSError, KeyError, ValueError):
            continue  # the scan names what is wrong with it
        if blocks is None:  # one block size for every run, with room for runs with more active cells
            n = run.true_change.shape[1]
            blocks = (1, 1, 1) if n <= calibration.MAX_CELLS else \
                reduced.blocks_for(run.reservoir.active, calibration.MAX_CELLS // 2)
        blocks = tuple(int(k) for k in blocks)
        runs.append(reduced.upscaled_run(run, blocks))
    if not runs:
        report = _not_used("no readable calibration run: no physics priors")
    elif max(r.true_change.shape[1] for r in runs) > calibration.MAX_CELLS:
        report = _not_used(f"skipped, more than {calibration.MAX_CELLS} active blocks of {blocks} cells per run; "
                           "declare the cell sizes and the lateral boundary (description.json) for physics priors")
        report["blocks"] = list(blocks)
    else:
        if blocks != (1, 1, 1):
            tqdm.write(f"calibration: fitting on blocks of {blocks[0]} x {blocks[1]} x {blocks[2]} cells (Z, Y, X)",
                       file=sys.stderr)
        with tqdm(desc="calibrate", unit="stage", disable=not progress, leave=False) as bar:
            result = _per_cell(calibration.fit(runs, _declared(desc, physics), progress=bar.update), blocks)
        report = result.report() | {"blocks": list(blocks)}
        if result.used:
            desc = apply_calibration(desc, result, len(result.run_errors))
            _say_fit(result)
    if short:
        report["warnings"].insert(0, f"{len(short)} training run(s) delivered less than their wells' rates (a "
                                     f"bottomhole limit held them), not calibrated on: "
                                     + ", ".join(Path(p).name for p in short[:8]) + (" ..." if len(short) > 8 else ""))
    for line in report["warnings"]:
        tqdm.write(f"calibration: {line}", file=sys.stderr)
    if not report["used"]:
        tqdm.write("calibration: not used; no physics priors", file=sys.stderr)
    return desc, report


def _per_cell(result: calibration.Fit, blocks) -> calibration.Fit:
    """A fit on blocks of (fz, fy, fx) cells as the cells' constants: the sizes divided by the
    block's; the lateral boundary's strength as the outermost cells hold it (a side block is
    fx cells wide: its extra pore volume, or its support through a half block, is that of one
    side cell); compressibility and the thermal constants are the same per cell as per block."""
    lateral = blocks[2]  # calibration assumes dy = dx; coarsening keeps fy = fx
    multiplier = result.multiplier
    if result.boundary == "pore_volume":
        multiplier = 1.0 + lateral * (multiplier - 1.0)
    elif result.boundary == "fixed_pressure":
        multiplier = multiplier / lateral
    factor = dict(zip(description.CELL_SIZE_QUANTITIES, blocks[::-1])) | {"BoundaryMultiplier": None}
    fitted = {}
    for name, entry in result.fitted.items():
        if name in factor:
            entry = {**entry, "value": multiplier if factor[name] is None else entry["value"] / factor[name]}
        fitted[name] = entry
    return dataclasses.replace(result, cell_size=tuple(s / k for s, k in zip(result.cell_size, blocks[::-1])),
                               multiplier=multiplier, fitted=fitted)


def _say_fit(result: calibration.Fit) -> None:
    dx, dy, dz = result.cell_size
    heat = "" if result.rock_heat is None else (
        f"; rock heat {result.rock_heat:.3g} J/(m^3 K), outside heat exchange {result.outside_heat_exchange}"
        + ("" if result.injection_offset is None else
           f", injection temperature offset {result.injection_offset:+.1f} K")
        + f" (temperature error {result.temperature_error:.2f})")
    tqdm.write(f"calibration ({len(result.run_errors)} training runs, pressure error {result.error:.2f}, "
               f"{result.seconds:.0f} s): cells {dx:.3g} x {dy:.3g} x {dz:.3g} m, total compressibility "
               f"{result.compressibility:.3g} /Pa, lateral boundary {result.boundary} x {result.multiplier:.3g}{heat}",
               file=sys.stderr)


def apply_calibration(desc: description.Description, result: calibration.Fit, n_runs: int) -> description.Description:
    """``desc`` with the fitted constants as quantities, each marked as calibrated."""
    quantities, calibrated = dict(desc.quantities), dict(desc.calibrated)
    note = result.note(n_runs)
    fitted = {}
    declared = set(desc.quantities)
    cells_declared = all(q in declared for q in description.CELL_SIZE_QUANTITIES)
    if not cells_declared:
        fitted.update(zip(description.CELL_SIZE_QUANTITIES, result.cell_size))
    if not cells_declared or not calibration.COMPRESSIBILITIES & declared:
        fitted["TotalCompressibility"] = result.compressibility
    if desc.lateral_boundary is None:
        fitted["BoundaryMultiplier"] = result.multiplier
        calibrated["lateral_boundary"] = note
    if result.rock_heat is not None and not any(way <= declared for way in HEAT_QUANTITIES):
        fitted["RockHeatCapacityVolumetric"] = result.rock_heat
    if result.injection_offset is not None and not {"InjectionTemperature", "InjectionTemperatureOffset"} & declared:
        fitted["InjectionTemperatureOffset"] = result.injection_offset
    heat = desc.outside_heat_exchange
    if heat is None and result.outside_heat_exchange is not None:
        heat = result.outside_heat_exchange
        calibrated["outside_heat_exchange"] = note
    for name, value in fitted.items():
        quantities[name] = {"value": value, "unit": description.QUANTITIES[name][0]}
        calibrated[name] = note
    if "TotalCompressibility" in fitted:  # c_t is fitted as one
        for name in calibration.COMPRESSIBILITIES - {"TotalCompressibility"}:
            quantities.pop(name, None)
    return dataclasses.replace(desc, quantities=quantities, calibrated=calibrated,
                               lateral_boundary=desc.lateral_boundary or result.boundary, outside_heat_exchange=heat)
