"""The field scalars at t = 0 of a run known only by its inputs (a forecast), in the data's own
convention.

The model predicts each field scalar relative to its value the step before, so a forecast needs
a start: water rates, and energy rates = those rates times the water's enthalpy. Both follow the
simulator's conventions, so prep learns them from the training runs' t = 0 reports (``fit``,
stored in stats.json under KEY) and ``estimate`` applies them:

* the water rates: the wells' prescribed rates (``InjRate``), or what the priors' wells
  delivered in year 1 (a well held at a bottomhole limit gives less; a first report at the end of
  year 1 says what it delivered then), or none (a simulator that reports its initial state before
  the wells open), whichever matches the training runs' reports best;
* the enthalpy (absolute IAPWS-95 with the pressure's work in it, c_w (T - 273.15), another zero,
  W or MW): h = a + b T (+ c p), or a scale on c_w (T - 273.15), the form that predicts a
  left-out run's best.

Without a fit (stats from an earlier prep, or no run with a report to fit on) a forecast takes
the prescribed rates and c_w (T - 273.15) in W, exact for `voxel-ode synth`.
"""

from __future__ import annotations

import math

import numpy as np

from voxel_ode import schema
from voxel_ode.utils import UserError

KEY = "start_enthalpy"
# enthalpy forms: the features each multiplies by its fitted coefficient (T in K, p in Pa)
FORMS = {
    "scaled_linear": lambda t, p: [schema.WATER_HEAT_CAPACITY * (t - schema.ENTHALPY_ZERO_T)],
    "affine_temperature": lambda t, p: [1.0, t - schema.ENTHALPY_ZERO_T],
    "affine_temperature_pressure": lambda t, p: [1.0, t - schema.ENTHALPY_ZERO_T, p * 1e-6],
}
NO_FIT = {"form": "scaled_linear", "coefficients": [1.0]}  # c_w (T - 273.15), J/kg: synth's own
# (well_water's kind, its energy rate, its water rate), in the order of a delivered (injected, produced) pair
KINDS = (("injected", "FieldEnergyInjectionRate", "FieldWaterInjectionRate"),
         ("produced", "FieldEnergyProductionRate", "FieldWaterProductionRate"))


def well_water(static) -> dict:
    """{"injected": [kg/s, K, Pa], "produced": [...]}: the field's prescribed mass rates and the
    rate-weighted temperature (injectors: Temperature0 + the injection gap) and initial pressure
    of the water the wells take in or give out; a kind without wells is left out."""
    static = np.asarray(static)
    channel = {name: static[i].astype(np.float64) for i, name in enumerate(schema.STATIC_NAMES)}
    active = channel["IsActive"] > 0.5
    rate = np.where(active, channel["InjRate"], 0.0)
    out = {}
    for kind, weight, temperature in (("injected", np.maximum(rate, 0.0), channel["Temperature0"] + channel[schema.INJECTION_GAP]),
                                      ("produced", np.maximum(-rate, 0.0), channel["Temperature0"])):
        total = float(weight.sum())
        if total > 0:
            out[kind] = [total, float((weight * temperature).sum() / total),
                         float((weight * channel["Pressure0"]).sum() / total)]
    return out


def delivered_per_report(static, rates) -> np.ndarray | None:
    """(T, 2) kg/s (injected, produced) per report: row 0 the prescribed rates, then the priors'
    wells' delivered rates of years 1, 2, ... (``rates``, physics.priors); None without them."""
    if not rates:
        return None
    water = well_water(static)
    first = [water.get(kind, [0.0])[0] for kind, _, _ in KINDS]
    return np.vstack([first, np.asarray(rates, np.float64)])


def _closeness(estimate, report) -> np.ndarray:
    """|estimate - report| over the larger of the two: bounded, and defined where a report is 0."""
    return np.abs(estimate - report) / np.maximum(np.maximum(np.abs(estimate), np.abs(report)), 1e-30)


def run_samples(static, scalars, delivered=None) -> dict:
    """One training run's evidence from its inputs, its reports ``scalars`` (T, 5) and the priors'
    delivered rates (delivered_per_report; None: not known, the prescribed): "enthalpy": [[T, p, h]]
    of the injected water (where the injection temperature is known: a nonzero gap) and of the
    produced at t = 0, where the report has water flowing; "water": [[reported, prescribed,
    delivered in year 1]] kg/s per kind at t = 0; "later": {"delivered"|"prescribed": [sum of
    squared _closeness, count]} of the water rates of every later report."""
    water = well_water(static)
    scalars = np.atleast_2d(np.asarray(scalars, np.float64))
    row = scalars[0]
    gap = np.asarray(static)[schema.STATIC_NAMES.index(schema.INJECTION_GAP)]
    samples, rates, later = [], [], {"delivered": [0.0, 0], "prescribed": [0.0, 0]}
    for i, (kind, energy, mass) in enumerate(KINDS):
        if kind not in water:
            continue
        prescribed = water[kind][0]
        e, m = row[schema.SCALAR_NAMES.index(energy)], row[schema.SCALAR_NAMES.index(mass)]
        if math.isfinite(e) and math.isfinite(m) and m >= 0:
            rates.append([float(m), prescribed, prescribed if delivered is None else float(delivered[1][i])])
            if m > 0 and (kind == "produced" or np.any(gap != 0)):
                samples.append([water[kind][1], water[kind][2], float(e / m)])
        if delivered is not None and len(scalars) > 1:
            reported = scalars[1:, schema.SCALAR_NAMES.index(mass)]
            ok = np.isfinite(reported)
            for source, est in (("delivered", np.asarray(delivered)[1:len(scalars), i]), ("prescribed", prescribed)):
                close = _closeness(np.broadcast_to(est, reported.shape)[ok], reported[ok])
                later[source] = [later[source][0] + float(np.sum(close ** 2)), later[source][1] + int(ok.sum())]
    return {"enthalpy": samples, "water": rates, "later": later}


def _solve(form, samples) -> np.ndarray | None:
    x = np.array([FORMS[form](t, p) for t, p, _ in samples], np.float64)
    h = np.array([s[2] for s in samples], np.float64)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300)
    coef, _, rank, _ = np.linalg.lstsq(x / scale, h, rcond=None)
    return coef / scale if rank == x.shape[1] else None


def _rms(pair) -> float:
    return math.sqrt(pair[0] / pair[1]) if pair[1] else 0.0


def fit(per_run: list[dict]) -> dict | None:
    """The water rates' source at t = 0 and after it, and the enthalpy's form and coefficients,
    that best predict the training runs' reports (``run_samples`` of each); None without any
    report to learn from. Another source than the prescribed (at t = 0) or the model's own (after
    it) is taken only where it is clearly closer."""
    rates = np.array([w for r in per_run for w in r["water"]], np.float64).reshape(-1, 3)
    record = _fit_enthalpy([r["enthalpy"] for r in per_run])
    if not len(rates):
        return record
    record = record or dict(NO_FIT, runs=0)  # reports without water flowing: nothing to fit an enthalpy on
    estimates = {"prescribed": rates[:, 1], "delivered": rates[:, 2], "none": np.zeros(len(rates))}
    errors = {source: float(np.sqrt(np.mean(_closeness(est, rates[:, 0]) ** 2))) for source, est in estimates.items()}
    # where no well is held, delivered = prescribed: another source only where it is clearly closer
    record["water_rates"] = min(errors, key=lambda k: (errors[k] if k == "prescribed" else 0.9 * errors[k] + 1e-6))
    record["water_rate_relative_error"] = errors
    later = {source: [sum(r.get("later", {}).get(source, [0.0, 0])[j] for r in per_run) for j in (0, 1)]
             for source in ("delivered", "prescribed")}
    later_errors = {source: _rms(pair) for source, pair in later.items()}
    # the priors' delivered rates replace the model's own only where the training runs' reports
    # follow them clearly better than they follow the prescribed rates (wells held at a limit)
    follows = later["delivered"][1] > 0 and later_errors["delivered"] < 0.5 * later_errors["prescribed"] - 1e-6
    record["rates_after_start"] = "delivered" if follows else "model"
    record["later_water_rate_relative_error"] = later_errors
    return record


def follow_delivered(predicted, previous, delivered_now) -> np.ndarray:
    """(5,) field scalars of a step whose water rates are the priors' delivered ones
    (``delivered_now``: (injected, produced) kg/s): each energy rate, and the energy produced in
    the step, scaled with its water rate (the model's enthalpy per kg kept)."""
    out = np.array(predicted, np.float64)
    total = schema.SCALAR_NAMES.index("FieldEnergyProductionTotal")
    for i, (_, energy, mass) in enumerate(KINDS):
        e, m = schema.SCALAR_NAMES.index(energy), schema.SCALAR_NAMES.index(mass)
        ratio = delivered_now[i] / out[m] if out[m] > 0 else 1.0
        out[m], out[e] = float(delivered_now[i]), out[e] * ratio
        if mass == "FieldWaterProductionRate":
            out[total] = previous[total] + (out[total] - previous[total]) * ratio
    return out


def _fit_enthalpy(per_run: list[list[list[float]]]) -> dict | None:
    """The enthalpy form and coefficients that predict a left-out training run's t = 0 energy
    rates best (relative RMS over its samples), refitted on every run; None without samples. A
    form is tried where at least two more runs than it has coefficients give samples."""
    runs = [r for r in per_run if r]
    if not runs:
        return None
    best = None
    for form, features in FORMS.items():
        n_coef = len(features(0.0, 0.0))
        if len(runs) < n_coef + 2 and form != "scaled_linear":
            continue
        errors = []
        for i in range(len(runs)):
            others = [s for j, r in enumerate(runs) if j != i for s in r]
            coef = _solve(form, others) if len(runs) > 1 else _solve(form, runs[0])
            if coef is None:
                break
            errors += [(np.dot(features(t, p), coef) - h) / max(abs(h), 1e-30) for t, p, h in runs[i]]
        else:
            error = float(np.sqrt(np.mean(np.square(errors))))
            coef = _solve(form, [s for r in runs for s in r])
            if coef is not None and (best is None or error < best["left_out_relative_error"]):
                best = {"form": form, "coefficients": [float(c) for c in coef], "left_out_relative_error": error,
                        "runs": len(runs)}
    return best


def enthalpy(record: dict | None, temperature: float, pressure: float) -> float:
    """The water's enthalpy per kg in the data's energy unit, by the fitted form (NO_FIT: c_w (T - 273.15))."""
    record = record or NO_FIT
    return float(np.dot(FORMS[record["form"]](temperature, pressure), record["coefficients"]))


def estimate(static, record: dict | None = None, delivered=None) -> np.ndarray:
    """(5,) field scalars at t = 0 (schema.SCALAR_NAMES) from a run's packed static channels:
    water rates and energy rates by ``record`` (stats.json's KEY; None: NO_FIT), total 0.
    ``delivered``: delivered_per_report's (T, 2), whose year 1 a record that chose it takes."""
    water = well_water(static)
    source = (record or {}).get("water_rates", "prescribed")
    values = {"FieldEnergyProductionTotal": 0.0}
    for i, (kind, energy, mass) in enumerate(KINDS):
        prescribed, t, p = water.get(kind, [0.0, 0.0, 0.0])
        values[mass] = 0.0 if source == "none" else \
            float(delivered[1][i]) if source == "delivered" and delivered is not None and prescribed else prescribed
        values[energy] = values[mass] * enthalpy(record, t, p) if values[mass] else 0.0
    return np.asarray([values[n] for n in schema.SCALAR_NAMES], np.float64)


def check(record, source) -> None:
    """stats.json's KEY entry: a known form with its number of finite coefficients."""
    if record is None:
        return
    ok = isinstance(record, dict) and record.get("form") in FORMS and isinstance(record.get("coefficients"), list)
    if ok:
        coef = record["coefficients"]
        ok = len(coef) == len(FORMS[record["form"]](0.0, 0.0)) and all(
            isinstance(c, (int, float)) and math.isfinite(c) for c in coef)
    ok = ok and record.get("water_rates", "prescribed") in ("prescribed", "delivered", "none") and \
        record.get("rates_after_start", "model") in ("model", "delivered")
    if not ok:
        raise UserError(f"{source}: {KEY}: not a known form with its finite coefficients, water rates "
                        "'prescribed', 'delivered' or 'none' and rates after the start 'model' or 'delivered'")


def describe(record: dict | None) -> str:
    """One line: how a forecast's t = 0 field scalars are estimated under ``record``."""
    if record is None:
        return ("field scalars at t = 0 estimated from the wells' rates and liquid-water enthalpy c_w (T - 273.15) "
                "in W (these stats hold no enthalpy fitted on training runs: re-run prep to fit the data's own)")
    rates = {"prescribed": "the wells' prescribed rates", "delivered": "the rates the priors' wells delivered in "
             "year 1", "none": "no flow (as the training runs' first reports)"}[record.get("water_rates", "prescribed")]
    later = ("; the field's water rates after it: the priors' delivered ones, energy rates scaled alike "
             "(the training runs' wells were held at limits)" if record.get("rates_after_start") == "delivered" else "")
    return (f"field scalars at t = 0 estimated from {rates} and the enthalpy fitted on {record.get('runs')} "
            f"training runs' first reports ({record['form']}, left-out error "
            f"{100 * record.get('left_out_relative_error', float('nan')):.2g} %){later}")


def after_start_note(record: dict | None) -> str | None:
    """One line for any rollout whose field water rates after t = 0 are the priors' delivered ones."""
    if (record or {}).get("rates_after_start") != "delivered":
        return None
    return ("note: field scalars: the water rates after t = 0 are the physics priors' delivered rates and the energy "
            "rates are scaled with them (the training runs' reports follow them: wells held at limits)")
