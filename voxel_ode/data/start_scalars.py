"""The field scalars at t = 0 of a run known only by its inputs (a forecast), in the data's own
convention.

The model predicts each field scalar relative to its value the step before, so a forecast needs
a start. Its water rates are the wells' prescribed rates (``InjRate``); its energy rates are those
rates times the water's enthalpy, and the enthalpy's convention is the simulator's (absolute
IAPWS-95 with the pressure's work in it, c_w (T - 273.15), another reference temperature, W or
MW). So prep fits it on the training runs' t = 0 reports (``fit``: h = a + b T, + c p, or a
scale on c_w (T - 273.15), the form chosen by leave-one-run-out error) and stores it in
stats.json (KEY); ``estimate`` uses it. Without a fit (stats from an earlier prep, or no run
with a report to fit on) the energy rates take c_w (T - 273.15) in W, exact for `voxel-ode synth`.
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


def run_samples(static, scalars0) -> list[list[float]]:
    """[[T, p, enthalpy]] of one training run from its inputs and its t = 0 report's rates: the
    injected water's where the injection temperature is known (a nonzero gap), the produced water's."""
    water = well_water(static)
    row = np.asarray(scalars0, np.float64)
    gap = np.asarray(static)[schema.STATIC_NAMES.index(schema.INJECTION_GAP)]
    samples = []
    for kind, energy, mass in (("injected", "FieldEnergyInjectionRate", "FieldWaterInjectionRate"),
                               ("produced", "FieldEnergyProductionRate", "FieldWaterProductionRate")):
        if kind not in water or (kind == "injected" and not np.any(gap != 0)):
            continue
        e, m = row[schema.SCALAR_NAMES.index(energy)], row[schema.SCALAR_NAMES.index(mass)]
        if math.isfinite(e) and math.isfinite(m) and m > 0:
            _, t, p = water[kind]
            samples.append([t, p, float(e / m)])
    return samples


def _solve(form, samples) -> np.ndarray | None:
    x = np.array([FORMS[form](t, p) for t, p, _ in samples], np.float64)
    h = np.array([s[2] for s in samples], np.float64)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300)
    coef, _, rank, _ = np.linalg.lstsq(x / scale, h, rcond=None)
    return coef / scale if rank == x.shape[1] else None


def fit(per_run: list[list[list[float]]]) -> dict | None:
    """The enthalpy form and coefficients that predict a left-out training run's t = 0 energy
    rates best (relative RMS over its samples), refitted on every run; None without samples. A
    form is tried where at least two more runs than it has coefficients give samples."""
    runs = [r for r in per_run if r]
    if not runs:
        return None
    best = None
    for form in FORMS:
        n_coef = len(FORMS[form](0.0, 0.0))
        if len(runs) < n_coef + 2 and form != "scaled_linear":
            continue
        errors = []
        for i in range(len(runs)):
            others = [s for j, r in enumerate(runs) if j != i for s in r]
            coef = _solve(form, others) if len(runs) > 1 else _solve(form, runs[0])
            if coef is None:
                break
            errors += [(np.dot(FORMS[form](t, p), coef) - h) / max(abs(h), 1e-30) for t, p, h in runs[i]]
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


def estimate(static, record: dict | None = None) -> np.ndarray:
    """(5,) field scalars at t = 0 (schema.SCALAR_NAMES) from a run's packed static channels:
    prescribed water rates, energy rates by ``record`` (stats.json's KEY; None: NO_FIT), total 0."""
    water = well_water(static)
    injected, produced = water.get("injected", [0.0, 0.0, 0.0]), water.get("produced", [0.0, 0.0, 0.0])
    values = {"FieldEnergyInjectionRate": injected[0] * enthalpy(record, *injected[1:]) if injected[0] else 0.0,
              "FieldEnergyProductionRate": produced[0] * enthalpy(record, *produced[1:]) if produced[0] else 0.0,
              "FieldEnergyProductionTotal": 0.0,
              "FieldWaterInjectionRate": injected[0], "FieldWaterProductionRate": produced[0]}
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
    if not ok:
        raise UserError(f"{source}: {KEY}: not a known form with its finite coefficients")


def describe(record: dict | None) -> str:
    """One line: how a forecast's t = 0 field scalars are estimated under ``record``."""
    if record is None:
        return ("field scalars at t = 0 estimated from the wells' rates and liquid-water enthalpy c_w (T - 273.15) "
                "in W (these stats hold no enthalpy fitted on training runs: re-run prep to fit the data's own)")
    return (f"field scalars at t = 0 estimated from the wells' rates and the enthalpy fitted on {record.get('runs')} "
            f"training runs' first reports ({record['form']}, left-out error "
            f"{100 * record.get('left_out_relative_error', float('nan')):.2g} %)")
