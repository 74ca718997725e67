"""Prep's bottomhole limits, inferred where the description lacks them: training runs whose field
delivered less than its wells' rates (InjRate) had wells held at a limit, and the priors need it
(without it, a closed box's producers at their limit were predicted 1.2-2.7x the change).

For each kind of well that fell short (injectors: a maximum pressure, producers: a minimum), a few
such runs and a few that held their rates are marched by the priors (data/pack.py's reservoir,
with the description's constants, declared or calibrated) at candidate limits, and the limit
whose delivered shares of the rates, year by year, match the runs' own (their field water rates
over InjRate, over those of the best-delivering training run: a unit factor on the rates shifts
every run alike) is kept. Two forms, as a description may declare them: the pressure itself, or a
pressure over each well's own initial pressure (runs at other depths then share one number); the
one that fits better is kept, and only where it moves the shares towards the runs' (EXPLAINS). Each
evaluation is a coupled march per run: the search is a scan of SCAN points per form across
LIMIT_RANGE and a bounded 1-D refinement.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.optimize import minimize_scalar
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.data import description, pack, raw
from voxel_ode.physics import priors as physics_priors
from voxel_ode.utils import UserError

# Pa: a limit 1 bar .. 1000 bar away from the well's initial pressure, or a pressure of 1 .. 1000 bar
LIMIT_RANGE = (1e5, 1e8)
SCAN = 13  # points per form across LIMIT_RANGE (log-spaced: every quarter decade)
N_RUNS = 3  # runs that fell short marched per evaluation
N_HELD = 2  # and runs that held their rates (at another depth, a limit's form shows: they must not reach it)
# A run whose field delivered this much less than its wells' rates (InjRate) in some year, next to
# the best-delivering training run, had a well held at a bottomhole limit (data/calibrate.py too)
SHORTFALL = 1e-3
POOR_FIT = 0.1  # rms error of the delivered share above which the fit is said to be poor
# a limit is used where it moves the delivered shares towards the runs' (the misfit without one
# x EXPLAINS at most): one that changes nothing (field rates that mean something else than
# InjRate's) is not. Not stricter: on a closed drawn set the producers' limit left 0.94 of the
# misfit and took the priors alone from P 0.689 to 0.052 (holding a well's pressure matters more
# to the field's pressure than to its rates)
EXPLAINS = 0.99
KINDS = {"InjectorMaxBottomholePressure": (0, 1.0, "injectors' maximum"),
         "ProducerMinBottomholePressure": (1, -1.0, "producers' minimum")}  # column, sign over initial, words


@dataclass
class _Run:
    name: str
    statics: dict
    physics: description.Physics
    gap: np.ndarray
    n_reports: int
    shares: np.ndarray  # (years, 2) the field's delivered share of the wells' rates, over the best run's


def _load(path, desc: description.Description, fill_value, shares, best) -> _Run | None:
    """None for a file prep's scan rejects (it names what is wrong with it)."""
    try:
        with h5py.File(path, "r") as f:
            grid = f[schema.raw_path("IsActive")].shape
            statics, _, scalars, _, _, physics = raw.resolved_inputs(f, path, grid, fill_value, desc)
    except (UserError, raw.DatasetProblem, OSError, KeyError, ValueError):
        return None
    n_reports = len(scalars) + int(physics.first_report == "year1")
    active = np.asarray(statics["IsActive"]) > 0.5
    gap = np.zeros(active.shape, np.float32)
    t_inj = pack.injection_temperature(physics, scalars)
    if t_inj is not None:
        gap[active] = t_inj - np.asarray(statics["Temperature0"])[active]
    return _Run(Path(path).name, statics, physics, gap, n_reports, shares / best)


def _shares_at(run: _Run, name: str, form: str | None, pressure: float) -> np.ndarray:
    """(years, 2) the delivered shares of the priors' wells with the limit ``name`` at ``pressure``
    (Pa: the limit itself, or its distance from each well's initial pressure; form None: none)."""
    _, sign, _ = KINDS[name]
    values, at = dict(run.physics.values), dict(run.physics.limits_at)
    if form == "absolute":
        values[name] = pressure
        at.pop(name, None)
    elif form is not None:
        values[name], at[name] = sign * pressure, "well"
    res = pack.reservoir(run.statics, dataclasses.replace(run.physics, values=values, limits_at=at), run.gap)
    rates = physics_priors.delivered_rates(res, run.n_reports)
    q = np.where(np.asarray(run.statics["IsActive"]) > 0.5, np.asarray(run.statics["InjRate"], np.float64), 0.0)
    targets = np.array([q[q > 0].sum(), -q[q < 0].sum()])
    return rates / np.where(targets > 0, targets, np.nan)


def _misfit(runs, name, form, log_pressure) -> float:
    column = KINDS[name][0]
    total = 0.0
    for run in runs:
        prior = _shares_at(run, name, form, 10.0 ** log_pressure)[:, column]
        true = run.shares[-len(prior):, column]
        keep = np.isfinite(true) & np.isfinite(prior)
        total += float(np.sum((prior[keep] - true[keep]) ** 2))
    return total


def _fit(runs, name, tick) -> tuple[str, float, float]:
    """(form, pressure in Pa, rms error of the delivered shares) of the best fit over both forms: a
    scan, then a bounded 1-D search in each interval next to its best point or, where the misfit is
    flat (limits no run reaches), next to the edges of that plateau."""
    best = None
    n_years = sum(int(np.isfinite(r.shares[:, KINDS[name][0]]).sum()) for r in runs)
    grid = np.linspace(*np.log10(LIMIT_RANGE), SCAN)
    for form in ("absolute", "over_initial"):
        costs = []
        for x in grid:
            costs.append(_misfit(runs, name, form, x))
            tick()
        low = min(costs)
        ties = [j for j, c in enumerate(costs) if c <= low * (1 + 1e-6) + 1e-12]
        found = (grid[ties[0]], low)
        for a, b in sorted({(min(j, k), max(j, k)) for j in ties for k in (j - 1, j + 1)
                            if 0 <= k < SCAN and k not in ties}):
            refined = minimize_scalar(lambda x: _misfit(runs, name, form, x), bounds=(grid[a], grid[b]),
                                      method="bounded", options={"xatol": 0.01})
            tick()
            if refined.fun < found[1]:
                found = (refined.x, refined.fun)
        if best is None or found[1] < best[2]:
            best = (form, float(10.0 ** found[0]), float(found[1]))
    return best[0], best[1], float(np.sqrt(best[2] / max(n_years, 1)))


def calibrate_limits(desc: description.Description, train_paths, shares: dict, fill_value=None,
                     progress=True) -> tuple[description.Description, dict, list]:
    """(``desc`` with the limits it lacks fitted, each marked as calibrated; {limit: report entry};
    warnings: a limit that fits the runs held at it poorly, a shortfall no limit explains). What
    was fitted is printed. ``shares``: calibrate.delivered_shares per training path (None where
    the file cannot tell). Nothing is fitted for a kind of well that held its rates in every run."""
    known = {p: s for p, s in shares.items() if s is not None and p in train_paths}
    if not known:
        return desc, {}, []
    report, warnings = {}, []
    # the kind of well more runs fell short with first: the other's limit is fitted with it in place
    # (a closed box's producers at their limit drive the pressure up to the injectors')
    for name, best, short in sorted(_short_runs(known), key=lambda k: -len(k[2])):
        if name in desc.quantities:
            continue
        column, _, words = KINDS[name]
        scale = np.array([best if c == column else 1.0 for c in (0, 1)])
        load = lambda paths, n: [r for r in (_load(p, desc, fill_value, known[p], scale)  # noqa: E731
                                             for p in _spread(paths, n)) if r is not None]
        runs = load(short, N_RUNS)
        n_short = len(runs)
        if not runs:
            continue
        runs += load([p for p in known if p not in short], N_HELD)
        with tqdm(desc=f"limit: {words}", unit="march", disable=not progress, leave=False) as bar:
            form, pressure, error = _fit(runs, name, bar.update)
        n_years = sum(int(np.isfinite(r.shares[:, column]).sum()) for r in runs)
        without = float(np.sqrt(_misfit(runs, name, None, 0.0) / max(n_years, 1)))
        if error ** 2 > EXPLAINS * without ** 2:
            warnings.append(f"{len(short)} training run(s) fell short of their wells' rates, but no {words} bottomhole "
                            f"pressure explains it (delivered share rms error {error:.3f}, {without:.3f} without "
                            "one): none used")
            continue
        spec = {"value": pressure, "unit": "Pa"} if form == "absolute" else \
            {"over_initial": KINDS[name][1] * pressure, "at": "well", "unit": "Pa"}
        note = f"calibrated on {n_short} training runs held at it (delivered share rms error {error:.3f})"
        desc = dataclasses.replace(desc, quantities=desc.quantities | {name: spec},
                                   calibrated=desc.calibrated | {name: note})
        report[name] = {"value": float(spec.get("value", spec.get("over_initial"))),
                        "form": "absolute" if form == "absolute" else "over the initial pressure at each well",
                        "share_error": float(error), "runs": [r.name for r in runs[:n_short]],
                        "runs_that_held": [r.name for r in runs[n_short:]]}
        said = f"{pressure / 1e5:.4g} bar" if form == "absolute" else \
            f"{KINDS[name][1] * pressure / 1e5:+.4g} bar over each well's initial pressure"
        tqdm.write(f"calibration: {words} bottomhole pressure {said}, fitted on "
                   f"{', '.join(r.name for r in runs[:n_short])} held at it and {len(runs) - n_short} that held their "
                   f"rates (delivered share rms error {error:.3f})", file=sys.stderr)
        if error > POOR_FIT:
            warnings.append(f"the {words} bottomhole pressure fits the runs held at it poorly (rms error {error:.2f})")
    return desc, report, warnings


def _spread(paths, n) -> list:
    return [] if not paths else sorted({paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round()})


def _short_runs(shares: dict) -> list:
    """[(limit, the best run's smallest delivered share, the runs that fell short of it)] per kind of
    well some training run fell short with."""
    out = []
    for name, (column, _, _) in KINDS.items():
        lows = np.array([np.nanmin(s[:, column]) if np.isfinite(s[:, column]).any() else np.nan
                         for s in shares.values()])
        if not np.isfinite(lows).any() or np.nanmax(lows) <= 0:
            continue
        best = float(np.nanmax(lows))
        short = [p for p, low in zip(shares, lows) if np.isfinite(low) and low < best * (1 - SHORTFALL)]
        if short:
            out.append((name, best, short))
    return out
