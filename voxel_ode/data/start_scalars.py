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


def run_samples(static, scalars0, delivered=None) -> dict:
    """One training run's evidence from its inputs and its t = 0 report: "enthalpy": [[T, p, h]]
    of the injected water (where the injection temperature is known: a nonzero gap) and of the
    produced, where the report has water flowing; "water": [[reported, prescribed, delivered]] kg/s
    per kind (``delivered``: the priors' wells' year-1 (injected, produced) rates; None: not known,
    the prescribed)."""
    water = well_water(static)
    row = np.asarray(scalars0, np.float64)
    gap = np.asarray(static)[schema.STATIC_NAMES.index(schema.INJECTION_GAP)]
    samples, rates = [], []
    for i, (kind, energy, mass) in enumerate(KINDS):
        if kind not in water:
            continue
        e, m = row[schema.SCALAR_NAMES.index(energy)], row[schema.SCALAR_NAMES.index(mass)]
        if not (math.isfinite(e) and math.isfinite(m) and m >= 0):
            continue
        rates.append([float(m), water[kind][0], water[kind][0] if delivered is None else float(delivered[i])])
        if m > 0 and (kind == "produced" or np.any(gap != 0)):
            samples.append([water[kind][1], water[kind][2], float(e / m)])
    return {"enthalpy": samples, "water": rates}


def _solve(form, samples) -> np.ndarray | None:
    x = np.array([FORMS[form](t, p) for t, p, _ in samples], np.float64)
    h = np.array([s[2] for s in samples], np.float64)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300)
    coef, _, rank, _ = np.linalg.lstsq(x / scale, h, rcond=None)
    return coef / scale if rank == x.shape[1] else None


def fit(per_run: list[dict]) -> dict | None:
    """The water rates' source and the enthalpy's form and coefficients that best predict the
    training runs' t = 0 reports (``run_samples`` of each); None without any report to learn from."""
    rates = np.array([w for r in per_run for w in r["water"]], np.float64).reshape(-1, 3)
    record = _fit_enthalpy([r["enthalpy"] for r in per_run])
    if not len(rates):
        return record
    record = record or dict(NO_FIT, runs=0)  # reports without water flowing: nothing to fit an enthalpy on
    estimates = {"prescribed": rates[:, 1], "delivered": rates[:, 2], "none": np.zeros(len(rates))}
    # |estimate - report| over the larger of the two: bounded, and defined where the report is 0
    errors = {source: float(np.sqrt(np.mean(np.square((est - rates[:, 0]) / np.maximum(
        np.maximum(np.abs(est), np.abs(rates[:, 0])), 1e-30))))) for source, est in estimates.items()}
    # another source only where it is clearly closer (where no well is held, delivered = prescribed)
    record["water_rates"] = min(errors, key=lambda k: (errors[k] if k == "prescribed" else 0.9 * errors[k] + 1e-6))
    record["water_rate_relative_error"] = errors
    return record


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
    ``delivered``: the priors' wells' year-1 (injected, produced) kg/s, if the record chose them."""
    water = well_water(static)
    source = (record or {}).get("water_rates", "prescribed")
    values = {"FieldEnergyProductionTotal": 0.0}
    for i, (kind, energy, mass) in enumerate(KINDS):
        prescribed, t, p = water.get(kind, [0.0, 0.0, 0.0])
        values[mass] = 0.0 if source == "none" else \
            float(delivered[i]) if source == "delivered" and delivered is not None and prescribed else prescribed
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
    ok = ok and record.get("water_rates", "prescribed") in ("prescribed", "delivered", "none")
    if not ok:
        raise UserError(f"{source}: {KEY}: not a known form with its finite coefficients and water rates "
                        "'prescribed', 'delivered' or 'none'")


def describe(record: dict | None) -> str:
    """One line: how a forecast's t = 0 field scalars are estimated under ``record``."""
    if record is None:
        return ("field scalars at t = 0 estimated from the wells' rates and liquid-water enthalpy c_w (T - 273.15) "
                "in W (these stats hold no enthalpy fitted on training runs: re-run prep to fit the data's own)")
    rates = {"prescribed": "the wells' prescribed rates", "delivered": "the rates the priors' wells delivered in "
             "year 1", "none": "no flow (as the training runs' first reports)"}[record.get("water_rates", "prescribed")]
    return (f"field scalars at t = 0 estimated from {rates} and the enthalpy fitted on {record.get('runs')} "
            f"training runs' first reports ({record['form']}, left-out error "
            f"{100 * record.get('left_out_relative_error', float('nan')):.2g} %)")
