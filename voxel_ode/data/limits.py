"""Prep's bottomhole limits, inferred where the description lacks them: training runs whose field
delivered less than its wells' rates (InjRate) had wells held at a limit, and the priors need it
(without it, a closed box's producers at their limit were predicted 1.2-2.7x the change).

The runs' delivered shares of the rates (their field water rates over InjRate, over those of the
best-delivering training run: a unit factor on the rates shifts every run alike) say when wells
were held, not at what pressure; the pressure comes from the priors' own wells: a few runs that
fell short are marched (data/pack.py's reservoir with the description's constants, declared or
calibrated; the pressure driven by each run's recorded temperatures) at the rates they delivered,
and the held wells' bottomhole pressures in those years are the first guess, in each form a
description may declare (the pressure itself, or one over each well's or the reservoir base's
initial pressure). The forms that fit best with the priors' wells held at the guesses are
refined near them, both kinds in turns where both fell short (in a closed box, injectors held at
their maximum leave the producers to draw the pressure down to theirs), on the delivered shares
and the runs' recorded pressure changes together (a held well's pressure is the field's); runs
that held their rates are marched too (they must not reach a limit). A limit is kept only where
it moves the priors' shares and pressures towards the runs' (EXPLAINS).
"""

from __future__ import annotations

import dataclasses
import itertools
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
N_RUNS = 3  # runs that fell short marched per evaluation, per kind of well
N_HELD = 2  # and runs that held their rates (at another depth, a limit's form shows: they must not reach it)
MAX_CELLS = physics_priors.DIRECT_SOLVE_MAX_CELLS  # active cells per run the fit marches (~30 marches each)
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
ROUNDS = 2  # searches per limit, in turns with the other kind's
NEAR = 0.5  # decades around a limit's first guess searched
FORMS = ("absolute",) + description.LIMIT_REFERENCES  # the limit itself, or over the initial pressure there
_AT = {"well": "at each well", "base": "at the reservoir's base"}
KINDS = {"InjectorMaxBottomholePressure": (0, 1.0, "injectors' maximum"),
         "ProducerMinBottomholePressure": (1, -1.0, "producers' minimum")}  # column, sign over initial, words


@dataclass
class _Run:
    name: str
    statics: dict
    physics: description.Physics
    gap: np.ndarray  # the injected water's temperature over the initial (its wellbores' weight)
    temperature: np.ndarray  # (n_reports, n_active) K, the run's own at every report from t = 0
    pressure_change: np.ndarray  # (n_reports, n_active) Pa since t = 0, the run's own
    n_reports: int
    shares: np.ndarray  # (years, 2) the field's delivered share of the wells' rates, over the best run's


def _load(path, desc: description.Description, fill_value, shares, best) -> _Run | None:
    """None for a file prep's scan rejects (it names what is wrong with it)."""
    try:
        with h5py.File(path, "r") as f:
            grid = f[schema.raw_path("IsActive")].shape
            statics, _, scalars, _, _, physics = raw.resolved_inputs(f, path, grid, fill_value, desc)
            active = np.asarray(statics["IsActive"]) > 0.5
            t0 = np.asarray(statics["Temperature0"], np.float64)[active]
            recorded = [raw.read_dataset(f[schema.raw_path(n)]).astype(np.float64)[:, active] - np.asarray(
                statics[n + "0"], np.float64)[active] for n in ("Temperature", "Pressure")]
    except (UserError, raw.DatasetProblem, OSError, KeyError, ValueError):
        return None
    changes = []
    for change in recorded:
        change = np.where(np.isfinite(change) & (np.abs(change) < 1e9), change, 0.0)  # fill values
        change = np.concatenate([np.zeros_like(change[:1]), change]) if physics.first_report == "year1" else change
        change[0] = 0.0
        changes.append(change)
    temperature = t0 + changes[0]
    gap = np.zeros(active.shape, np.float32)
    t_inj = pack.injection_temperature(physics, scalars)
    if t_inj is not None:
        gap[active] = t_inj - t0
    return _Run(Path(path).name, statics, physics, gap, temperature, changes[1], len(temperature), shares / best)


def _marched(run: _Run, limits: dict) -> tuple[np.ndarray, np.ndarray]:
    """((years, 2) the delivered shares of the priors' wells, (n_reports, n_active) their pressure
    change) with ``limits`` {name: (form, Pa)}: the limit itself ("absolute") or its distance from
    an initial pressure (description.LIMIT_REFERENCES: each well's own, or the reservoir base's)."""
    values, at = dict(run.physics.values), dict(run.physics.limits_at)
    for name, (form, pressure) in limits.items():
        if form == "absolute":
            values[name] = pressure
            at.pop(name, None)
        else:
            values[name], at[name] = KINDS[name][1] * pressure, form
    res = pack.reservoir(run.statics, dataclasses.replace(run.physics, values=values, limits_at=at), run.gap)
    rates = []
    change = physics_priors.driven_pressure_change(res, run.temperature, run.n_reports, rates)
    rates = np.array(rates) if rates else np.zeros((run.n_reports - 1, 2))
    q = np.where(np.asarray(run.statics["IsActive"]) > 0.5, np.asarray(run.statics["InjRate"], np.float64), 0.0)
    targets = np.array([q[q > 0].sum(), -q[q < 0].sum()])
    return rates / np.where(targets > 0, targets, np.nan), change


def _errors(runs, limits: dict) -> np.ndarray:
    """(3,) over the runs: the mean squared error of the injected and of the produced shares over
    each run's years, and the squared relative error of its pressure change (the shares say when a
    well was held, the pressure at what limit: a held well's pressure is the field's)."""
    total = np.zeros(3)
    for run in runs:
        shares, change = _marched(run, limits)
        true = run.shares[-len(shares):]
        total[:2] += np.nan_to_num(np.nanmean((shares - true) ** 2, axis=0))
        total[2] += float(np.sum((change - run.pressure_change) ** 2) / max(np.sum(run.pressure_change ** 2), 1e-30))
    return total


def _guesses(run: _Run, name) -> dict:
    """{form: (years,) the run's held wells' bottomhole pressures in that form} in the years its
    field fell short with ``name``'s kind of well: its wells marched at the rates it delivered
    (without limits), the most extreme of that kind each year (the held one sits at its limit)."""
    column, sign, _ = KINDS[name]
    n = run.n_reports - 1
    res = pack.reservoir(run.statics, run.physics, run.gap)
    bhp, p0, kinds = physics_priors.held_well_pressures(res, run.temperature, run.n_reports, run.shares[-n:])
    years = run.shares[-n:, column] < 1 - SHORTFALL
    wells = kinds == sign
    if not years.any() or not wells.any():
        return {}
    base = description.base_pressure(run.statics["Pressure0"], np.asarray(run.statics["IsActive"]) > 0.5)
    over = sign * (bhp[np.ix_(years, wells)] - p0[wells])  # > 0: past its initial pressure, the limit's way
    extreme = sign * (bhp[np.ix_(years, wells)] - base)
    return {"absolute": base + sign * extreme.max(axis=1), "well": over.max(axis=1), "base": extreme.max(axis=1)}


def _fit(runs, names, short, tick) -> dict:
    """{name: (form, Pa)} for the kinds of well ``names`` that fell short and need a limit: each
    form's first guess (the median of _guesses over the runs held at it); every combination of
    forms refined (_refine); the best kept. The misfit is
    the delivered shares' and the pressure change's (_errors): the shares alone are a weak signal
    of a limit's value (a wide search on them found limits 1.5x the truth or in the wrong form)."""
    guesses = {}
    for name in names:
        values = {}
        for run in runs:
            if run.name in short[name]:
                for form, v in _guesses(run, name).items():
                    values.setdefault(form, []).append(v)
        guesses[name] = {form: float(np.clip(np.median(np.concatenate(v)), *LIMIT_RANGE)) for form, v in values.items()}
    names = [n for n in names if guesses[n]]

    def cost(limits):
        tick()
        return float(_errors(runs, limits).sum())

    combos = [{n: (f, guesses[n][f]) for n, f in zip(names, forms)}
              for forms in itertools.product(*(list(guesses[n]) for n in names))]
    best = None
    for limits in combos:  # each refined: at the rough guesses the truth's forms fitted third on set3
        limits = _refine(limits, guesses, cost)
        misfit = cost(limits)
        if best is None or misfit < best[1]:
            best = (limits, misfit)
    return _needed(runs, best[0] if best else {})


def _refine(limits: dict, guesses: dict, cost) -> dict:
    """``limits`` each searched within NEAR decades of its guess in its form, in turns."""
    limits = dict(limits)
    for turn in range(ROUNDS * len(limits)):
        name = list(limits)[turn % len(limits)]
        form, centre = limits[name][0], np.log10(guesses[name][limits[name][0]])
        found = minimize_scalar(lambda x: cost(limits | {name: (form, 10.0 ** x)}), method="bounded",
                                bounds=(max(centre - NEAR, np.log10(LIMIT_RANGE[0])), min(centre + NEAR, np.log10(LIMIT_RANGE[1]))),
                                options={"xatol": 0.01})
        if found.fun < cost(limits):  # a limit reached only late sits in a notch the search may step over
            limits[name] = (form, float(10.0 ** found.x))
    return limits


def _needed(runs, limits: dict) -> dict:
    """``limits`` less any the shares do not need: one whose removal leaves the misfit within
    1 / EXPLAINS of it."""
    total = _errors(runs, limits).sum()
    for name in limits:
        rest = {k: v for k, v in limits.items() if k != name}
        if total > EXPLAINS * _errors(runs, rest).sum():
            return _needed(runs, rest) if rest else {}
    return limits


def calibrate_limits(desc: description.Description, train_paths, shares: dict, fill_value=None,
                     progress=True) -> tuple[description.Description, dict, list]:
    """(``desc`` with the limits it lacks fitted, each marked as calibrated; {limit: report entry};
    warnings: a limit that fits the runs held at it poorly, a shortfall no limit explains). What
    was fitted is printed. ``shares``: calibrate.delivered_shares per training path (None where
    the file cannot tell). Nothing is fitted for a kind of well that held its rates in every run."""
    known = {p: s for p, s in shares.items() if s is not None and p in train_paths}
    short = {name: paths for name, paths in _short_runs(known).items() if name not in desc.quantities}
    if not short:
        return desc, {}, []
    scale = np.array([_best(known, c) for c in (0, 1)])
    picks = sorted({p for paths in short.values() for p in _spread(paths, N_RUNS)})
    held = _spread([p for p in known if not any(p in paths for paths in short.values())], N_HELD)
    runs = [r for r in (_load(p, desc, fill_value, known[p], scale) for p in picks + held) if r is not None]
    if max((r.temperature.shape[1] for r in runs), default=0) > MAX_CELLS:
        return desc, {}, [f"training runs fell short of their wells' rates, but their grids exceed the {MAX_CELLS} "
                          "active cells the bottomhole limits are fitted on: declare them (description.json)"]
    names = [n for n in KINDS if n in short and any(r.name in {Path(p).name for p in short[n]} for r in runs)]
    if not names:
        return desc, {}, []
    with tqdm(desc="limits", unit="march", disable=not progress, leave=False) as bar:
        fitted = _fit(runs, names, {n: {Path(p).name for p in short[n]} for n in names}, bar.update)
    return _apply(desc, runs, short, names, fitted)


def _apply(desc, runs, short, names, fitted) -> tuple[description.Description, dict, list]:
    """The description, report and warnings of the fitted limits, each said in one line."""
    error = np.sqrt(_errors(runs, fitted) / len(runs))
    without = np.sqrt(_errors(runs, {}) / len(runs))
    report, warnings = {}, []
    for name in names:
        column, sign, words = KINDS[name]
        held_at = [r.name for r in runs if r.name in {Path(p).name for p in short[name]}]
        if name not in fitted:
            warnings.append(f"{len(short[name])} training run(s) fell short of their wells' rates, but no {words} "
                            f"bottomhole pressure explains it (delivered share rms error {error[column]:.3f}, "
                            f"{without[column]:.3f} without one): none used")
            continue
        form, pressure = fitted[name]
        spec = {"value": pressure, "unit": "Pa"} if form == "absolute" else \
            {"over_initial": sign * pressure, "at": form, "unit": "Pa"}
        note = f"calibrated on {len(held_at)} training runs held at it (delivered share rms error {error[column]:.3f})"
        desc = dataclasses.replace(desc, quantities=desc.quantities | {name: spec},
                                   calibrated=desc.calibrated | {name: note})
        report[name] = {"value": float(spec.get("value", spec.get("over_initial"))),
                        "form": "absolute" if form == "absolute" else f"over the initial pressure {_AT[form]}",
                        "share_error": float(error[column]), "pressure_error": float(error[2]), "runs": held_at,
                        "runs_that_held": [r.name for r in runs if r.name not in held_at]}
        said = f"{pressure / 1e5:.4g} bar" if form == "absolute" else \
            f"{sign * pressure / 1e5:+.4g} bar over the initial pressure {_AT[form]}"
        tqdm.write(f"calibration: {words} bottomhole pressure {said}, fitted on {', '.join(held_at)} held at it and "
                   f"{len(runs) - len(held_at)} other(s) (delivered share rms error {error[column]:.3f}, pressure "
                   f"{error[2]:.2f})", file=sys.stderr)
        if error[column] > POOR_FIT:
            warnings.append(f"the {words} bottomhole pressure fits the runs held at it poorly (rms error {error[column]:.2f})")
    return desc, report, warnings


def _spread(paths, n) -> list:
    return [] if not paths else sorted({paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round()})


def _best(shares: dict, column) -> float:
    """The best-delivering run's smallest share of ``column``'s rates (1 where none is known)."""
    lows = [np.nanmin(s[:, column]) for s in shares.values() if np.isfinite(s[:, column]).any()]
    return float(max(lows)) if lows and max(lows) > 0 else 1.0


def _short_runs(shares: dict) -> dict:
    """{limit: the runs that fell short of the best run's smallest share} per kind of well some
    training run fell short with."""
    out = {}
    for name, (column, _, _) in KINDS.items():
        best = _best(shares, column)
        short = [p for p, s in shares.items() if np.isfinite(s[:, column]).any()
                 and np.nanmin(s[:, column]) < best * (1 - SHORTFALL)]
        if short:
            out[name] = short
    return out
