"""What the training runs covered, and which of a run's inputs lie outside it.

A surrogate answers well only near what it learned from. Prep records, per training run, a
few numbers that summarise its inputs (``run_inputs``: grid size, cell sizes, well rates,
injection temperature, permeability and porosity statistics, each ``ParamsScalar`` entry)
and stores their ranges in stats.json ("training_ranges", ``ranges``); a rollout or forecast
computes the same numbers for its run and names each one outside its range (``outside``),
so an extrapolation is said, not hidden.
"""

from __future__ import annotations

import math

import numpy as np

from voxel_ode import schema
from voxel_ode.utils import UserError

RANGES_KEY = "training_ranges"
NOT_RECORDED = "out-of-range check: not available (stats.json from a prep before training ranges were recorded)"


def run_inputs(static, params, cell_size=None) -> dict[str, float]:
    """The summary of one run's inputs from its packed static channels (N_STATIC, Z, Y, X; SI
    units, derived channels included), ParamsScalar and cell sizes (m, or None)."""
    static = np.asarray(static)
    channel = {name: static[i] for i, name in enumerate(schema.STATIC_NAMES)}
    active = channel["IsActive"] > 0.5
    rate = channel["InjRate"][active].astype(np.float64)
    out = {"active cells": float(active.sum()),
           "injection rate (kg/s, total)": float(rate[rate > 0].sum()),
           "production rate (kg/s, total)": float(-rate[rate < 0].sum())}
    injecting = active & (channel["InjRate"] > 0)
    if injecting.any():  # the injection gap is the injected water's temperature minus Temperature0
        injected = channel[schema.INJECTION_GAP][injecting] + channel["Temperature0"][injecting]
        if np.any(channel[schema.INJECTION_GAP][injecting] != 0):
            out["injection temperature (K)"] = float(np.mean(injected))
    perm = channel["PermX"][active].astype(np.float64)
    if perm.size and np.all(perm > 0):
        out["log10 PermX (m^2), mean"] = float(np.mean(np.log10(perm)))
        out["log10 PermX (m^2), std"] = float(np.std(np.log10(perm)))
    porosity = channel["Porosity"][active].astype(np.float64)
    if porosity.size:
        out["porosity, mean"], out["porosity, std"] = float(porosity.mean()), float(porosity.std())
        out["initial temperature (K), mean"] = float(channel["Temperature0"][active].mean())
        out["initial pressure (Pa), mean"] = float(channel["Pressure0"][active].astype(np.float64).mean())
    if cell_size is not None:
        out |= {f"cell size {axis} (m)": float(v) for axis, v in zip("XYZ", cell_size)}
    out |= {f"ParamsScalar[{i}]": float(v) for i, v in enumerate(np.asarray(params, np.float64).ravel())}
    return {k: v for k, v in out.items() if math.isfinite(v)}


def ranges(summaries: list[dict]) -> dict[str, list[float]]:
    """{name: [min, max]} over the training runs, of the names every run has."""
    names = set.intersection(*(set(s) for s in summaries)) if summaries else set()
    return {n: [min(s[n] for s in summaries), max(s[n] for s in summaries)] for n in sorted(names)}


def check_ranges(value, source) -> dict[str, list[float]]:
    """stats.json's training ranges, checked: name -> [lo, hi] finite, lo <= hi."""
    if not isinstance(value, dict):
        raise UserError(f"{source}: {RANGES_KEY}: not an object")
    for name, pair in value.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
                and all(math.isfinite(v) for v in pair) and pair[0] <= pair[1]):
            raise UserError(f"{source}: {RANGES_KEY}/{name}: not [min, max] numbers")
    return value


def outside(training: dict | None, inputs: dict, labels: dict | None = None) -> list[str]:
    """One line per input outside the training runs' range, e.g. ``injection rate (kg/s, total) =
    61.2, training runs 10.4 to 40.1``; ``labels`` adds a name to an input (what a ParamsScalar
    entry means). Inputs the training runs did not have are not judged."""
    notes = []
    for name, value in inputs.items():
        if name not in (training or {}):
            continue
        lo, hi = training[name]
        slack = 1e-6 * max(abs(lo), abs(hi), 1e-30)  # float32 storage of equal values
        if value < lo - slack or value > hi + slack:
            label = f" ({labels[name]})" if labels and name in labels else ""
            span = f"training runs {lo:.4g} to {hi:.4g}" if hi > lo else f"every training run {lo:.4g}"
            notes.append(f"{name}{label} = {value:.4g}, {span}")
    return notes


def param_labels(desc) -> dict[str, str]:
    """What the dataset description says ParamsScalar entries are, by input name."""
    return {f"ParamsScalar[{spec['param']}]": name for name, spec in desc.quantities.items() if "param" in spec}
