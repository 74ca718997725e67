"""The thermal half of calibration (calibration.py): rock heat capacity, the injection temperature's
offset and the outside heat exchange fitted on the training runs' temperature changes with the
coupled march (priors.prior_fields) at given pressure constants, the cells' width where the
pressure leaves it open (``width``), and the pressure march driven by a run's own temperatures
(``driven_pressures``: what calibration fits the pressure constants on).

The thermal prior's share theta of the injection gap times the gap is the modelled temperature
change. The gap's injection temperature comes from the field scalars with an enthalpy convention
that differs between simulators, so an offset (K) is fitted with it in closed form (it is
degenerate with the rock's heat capacity, which is searched in 1-D for each setting of the outside
heat exchange). Conductivity is left at its declared or generic value (weakly identified: open-darts
development runs, research branch wt-cal).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from voxel_ode.physics import priors as physics_priors
from voxel_ode.physics.faces import lateral_side

# rock (grain) volumetric heat capacity: grain densities 2000-3300 kg/m^3 x specific heats
# 700-1100 J/(kg K) give 1.4e6-3.6e6; margins either side.
HEAT_RANGE = (1.0e6, 5.0e6)  # J/(m^3 K)
# offset of the injection temperature read from the field scalars: enthalpy conventions (reference
# state, pressure work, c_p(T)) differ by a few K; beyond 30 K the scalars mean something else.
OFFSET_RANGE = (-30.0, 30.0)  # K


@dataclass
class Pressure:
    """The pressure constants: cells (dx, dy, dz) m, total compressibility 1/Pa, lateral boundary."""

    cell_size: tuple
    compressibility: float
    boundary: str
    multiplier: float


@dataclass
class Thermal:
    rock_heat: float
    outside: bool
    offset: float  # K, added to each run's injection temperature
    error: float = np.inf
    errors: list = field(default_factory=list)  # per run
    pressures: list = field(default_factory=list)  # coupled pressure change per run (n_reports, n)
    own_offsets: list = field(default_factory=list)
    offset_curvature: float = 0.0
    heat_curve: dict = field(default_factory=dict)  # log10 heat capacity -> error, about the best


def reservoir(run, p: Pressure, t: Thermal | None, declared) -> physics_priors.Reservoir:
    res = dataclasses.replace(run.reservoir, cell_size=run.cell_size or p.cell_size, compressibility=p.compressibility,
                              boundary=p.boundary, boundary_multiplier=p.multiplier,
                              rock_conductivity=declared.conductivity)
    if t is None or run.injection_temperature is None:
        return dataclasses.replace(res, injection_gap=None)
    gap = np.where(res.active, run.injection_temperature + t.offset - np.asarray(res.temperature0, np.float64), 0.0)
    return dataclasses.replace(res, rock_heat_per_volume=t.rock_heat, outside_heat_exchange=t.outside,
                               injection_gap=gap)


def driven_pressures(runs, p: Pressure, declared) -> list:
    """Each run's pressure change (n_reports, n) at the constants ``p`` with its water at its own
    (true) temperatures, the injectors' wellbores holding the injected water where it is known
    (the water at its initial temperature where the run has no temperature history)."""
    out = []
    for run in runs:
        hot = run.injection_temperature is not None and run.temperature_change is not None
        res = reservoir(run, p, Thermal(physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME, False, 0.0) if hot else None,
                        declared)
        n_reports = run.true_change.shape[0]
        if run.temperature_change is None:
            out.append(physics_priors.warm_pressure_change(res, n_reports))
            continue
        change = run.temperature_change
        if run.side_temperature_change is not None and p.boundary == "pore_volume":
            on_side = lateral_side(res.active.shape)[np.asarray(res.active, bool)]
            change = np.where(on_side, run.side_temperature_change, change)
        temperature = np.asarray(res.temperature0, np.float64)[res.active] + change
        out.append(physics_priors.driven_pressure_change(res, temperature, n_reports))
    return out


def thermal_runs(runs):
    return [r.temperature_change is not None and r.injection_temperature is not None
            and bool(np.any(r.temperature_change[1:])) for r in runs]


def coupled(runs, p: Pressure, t: Thermal, declared, fit_offset: bool) -> Thermal:
    """``t`` with the coupled march's errors at (p, t): each run's theta (at the offset before) and
    pressure change; the offset refitted in closed form where ``fit_offset``."""
    thetas, gaps, truths, pressures = [], [], [], []
    for run, hot in zip(runs, thermal_runs(runs)):
        res = reservoir(run, p, t if hot else None, declared)
        theta, pressure = physics_priors.prior_fields(res, run.true_change.shape[0])
        pressures.append(pressure[:, res.active])
        if hot:
            thetas.append(theta[1:, res.active])
            gaps.append(run.injection_temperature - np.asarray(res.temperature0, np.float64)[res.active])
            truths.append(run.temperature_change[1:])
    out = dataclasses.replace(t, pressures=pressures)
    if not thetas:
        return out
    w = [1.0 / max(float(np.sum(d * d)), 1e-30) for d in truths]
    tt = [float(np.sum(th * th)) for th in thetas]
    resid = [float(np.sum(th * (d - g * th))) for th, g, d in zip(thetas, gaps, truths)]
    if fit_offset:
        weight = max(sum(wi * a for wi, a in zip(w, tt)), 1e-300)
        out.offset = float(np.clip(sum(wi * r for wi, r in zip(w, resid)) / weight, *OFFSET_RANGE))
    # a run whose water barely moves heat (theta ~ 0) tells no offset of its own
    out.own_offsets = [r / a if a > 1e-6 * th.size else float("nan") for r, a, th in zip(resid, tt, thetas)]
    out.offset_curvature = sum(wi * a for wi, a in zip(w, tt)) / len(thetas)
    out.errors = [float(np.linalg.norm((g + out.offset) * th - d) * np.sqrt(wi))
                  for th, g, d, wi in zip(thetas, gaps, truths, w)]
    out.error = float(np.mean(np.minimum(out.errors, 1.0)))
    return out


def fit(runs, p: Pressure, declared, start: Thermal | None) -> Thermal:
    """Rock heat capacity with the injection offset in closed form: first three points across the
    search range of log10 heat capacity for each undeclared outside-exchange setting, the best
    setting kept; then (``start`` given) a parabola through three points about the best so far."""
    fit_offset = not declared.injection_temperature
    offset0 = start.offset if start else 0.0
    options = [declared.outside_heat_exchange] if declared.outside_heat_exchange is not None else [False, True]
    if start is not None:
        options = [start.outside]
    if declared.rock_heat is not None:
        fits = [coupled(runs, p, Thermal(declared.rock_heat, o, offset0), declared, fit_offset) for o in options]
        return min(fits, key=lambda f: f.error)
    if start is not None:
        return _parabola(runs, p, declared, start, fit_offset)
    lo, hi = np.log10(HEAT_RANGE)
    best = None
    for outside in options:
        fits, offset = {}, offset0
        for x in np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), 3):
            fits[x] = coupled(runs, p, Thermal(10.0 ** x, outside, offset), declared, fit_offset)
            offset = fits[x].offset  # the gap's offset lags one evaluation
        xs = sorted(fits)
        a, b, c = quadratic(xs, [fits[k].error for k in xs])
        center = float(np.clip(-b / (2 * a), lo, hi)) if a > 0 else min(fits, key=lambda k: fits[k].error)
        guess = min(fits.values(), key=lambda f: f.error)
        predicted = a * center ** 2 + b * center + c if a > 0 else guess.error
        if best is None or predicted < best[0]:
            best = (predicted, dataclasses.replace(guess, rock_heat=10.0 ** center))
    return best[1]


def _parabola(runs, p, declared, start: Thermal, fit_offset, step=0.05) -> Thermal:
    """A few steps of a parabola through log10 heat capacity -step, 0, +step about the best so far."""
    fits = {}
    center = np.log10(start.rock_heat)
    lo, hi = np.log10(HEAT_RANGE)
    for _ in range(2):
        for x in (center - step, center, center + step):
            x = float(np.clip(x, lo, hi))
            if x not in fits:
                fits[x] = coupled(runs, p, dataclasses.replace(start, rock_heat=10.0 ** x), declared, fit_offset)
        xs = np.array(sorted(fits))
        best = min(fits, key=lambda k: fits[k].error)
        near = xs[np.argsort(np.abs(xs - best))[:3]]
        a, b, _ = quadratic(near, [fits[k].error for k in near])
        new = float(np.clip(-b / (2 * a) if a > 0 else best, best - 2 * step, best + 2 * step))
        if abs(new - center) < 0.02:
            break
        center = float(np.clip(new, lo, hi))
    if center not in fits:
        fits[center] = coupled(runs, p, dataclasses.replace(start, rock_heat=10.0 ** center), declared, fit_offset)
    result = min(fits.values(), key=lambda f: f.error)
    result.heat_curve = {k: f.error for k, f in fits.items()}
    return result


def quadratic(xs, ys):
    """(a, b, c) of the parabola through the points; a flat curve (nothing pinned) is no error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        return np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 2)


# Where the pressure changes leave the cells' width open, the temperature changes tell it: on thin
# layers the lateral transmissibility (k x dz) does not depend on the width, and storage and the
# cold water's contraction both scale with its square, so the pressure barely moves along
# ``along_valley``; the plume's reach in cells goes with width^2 x heat capacity instead.
WIDTH_SPAN = 0.6  # decades either side of the pressure fit's width


def along_valley(p: Pressure, factor: float) -> Pressure:
    """``p`` with cells ``factor`` x as wide, as thick as before, and the same lateral support (side
    cells' extra pore volume kept; a support's half-cell transmissibility does not depend on it)."""
    h, _, dz = p.cell_size
    multiplier = 1.0 + (p.multiplier - 1.0) / factor ** 2 if p.boundary == "pore_volume" else p.multiplier
    return Pressure((h * factor, h * factor, dz), p.compressibility, p.boundary, multiplier)


def width(runs, p: Pressure, declared, outside: bool, cell_range) -> tuple[Pressure, Thermal, float]:
    """(the constants along ``along_valley`` whose coupled march fits the temperature changes best at
    the declared rock heat capacity or else the generic one, that fit, +- decades of width that
    raise its error by 1 %): five points across WIDTH_SPAN, then a parabola about the best."""
    heat = declared.rock_heat if declared.rock_heat is not None else physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME
    fixed = dataclasses.replace(declared, rock_heat=heat, outside_heat_exchange=outside)
    h = p.cell_size[0]
    lo = max(-WIDTH_SPAN, np.log10(cell_range[0] / h))
    hi = min(WIDTH_SPAN, np.log10(cell_range[1] / h))
    fits = {}

    def at(x):
        x = float(np.clip(x, lo, hi))
        if x not in fits:
            fits[x] = fit(runs, along_valley(p, 10.0 ** x), fixed, None)
        return x

    for x in np.linspace(lo, hi, 5):
        at(x)
    for _ in range(2):
        xs = np.array(sorted(fits))
        best = min(fits, key=lambda k: fits[k].error)
        near = xs[np.argsort(np.abs(xs - best))[:3]]
        a, b, _ = quadratic(near, [fits[k].error for k in near])
        at(-b / (2 * a) if a > 0 else best)
    best = min(fits, key=lambda k: fits[k].error)
    xs = np.array(sorted(fits))
    near = xs[np.argsort(np.abs(xs - best))[:3]]
    a = quadratic(near, [fits[k].error ** 2 for k in near])[0]
    spread = float(np.sqrt((0.02 * fits[best].error ** 2 + 1e-8) / a)) if a > 0 else float("inf")
    return along_valley(p, 10.0 ** best), fits[best], spread
