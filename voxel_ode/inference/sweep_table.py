"""A sweep's numbers: per-scenario series from a forecast, the table's row of each, the ranking,
scenarios.csv / scenarios.json and the comparison picture sweep.png.

Per scenario (frame t = t years after the start, t = 0 the initial state):

    energy_total               J  predicted FieldEnergyProductionTotal at the last year minus year 0
                                  (the model's cumulative scalar, the sum of its yearly increments)
    energy_last_year           J  its increment over the last year (energy_per_year in the JSON)
    production_temperature_*   K  mean predicted temperature of the producers' cells weighted by
                                  their rates, at year 0 and the last year; _drop = start - end
    breakthrough_year          -  first year the production temperature is more than
                                  ``breakthrough_k`` below year 0's (empty: never)
    <field scalar>                each of schema.SCALAR_NAMES at the last year (W, J, kg/s)
    dp_end_<well>, dp_peak_<well>  Pa  mean pressure change of the well's cells since year 0 at the
                                  last year, and the one of largest size over the years
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from voxel_ode import files, schema

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_OBJECTIVE = "energy_total"
DEFAULT_BREAKTHROUGH_K = 1.0
FIXED_COLUMNS = ("energy_total", "energy_total_low", "energy_total_high", "energy_last_year", "production_temperature_start", "production_temperature_end",
                 "production_temperature_drop", "breakthrough_year") + schema.SCALAR_NAMES
N_LABELLED = 5  # scenarios named in the picture
# the picture's units: energies in TJ, powers in MW, pressures in bar (schema's SI in the table)
DISPLAY = {"J": ("TJ", 1e-12), "W": ("MW", 1e-6), "Pa": ("bar", 1e-5)}


def column_unit(column: str) -> str:
    if column.startswith("dp_"):
        return "Pa"
    if column.startswith("energy_"):
        return "J"
    if column.startswith("production_temperature"):
        return "K"
    units = {f.name: f.unit for f in schema.SCALAR_FIELDS}
    return units.get(column, "-")


def _finite(values) -> list:
    """JSON-safe: NaN and inf as null."""
    return [float(v) if math.isfinite(float(v)) else None for v in np.asarray(values, np.float64).ravel()]


def series(grid: np.ndarray, scalar: np.ndarray, inj_rate: np.ndarray, active: np.ndarray, wells) -> dict:
    """A forecast's per-year series: grid (T, 2, Z, Y, X), scalar (T, 5), the scenario's InjRate and
    wells (data/plan.Well)."""
    producers = active & (inj_rate < 0)
    weight = -inj_rate[producers]
    temp = grid[:, 1][:, producers].astype(np.float64) @ weight / weight.sum() if weight.sum() > 0 \
        else np.full(len(grid), np.nan)
    pressure = grid[:, 0].astype(np.float64)
    dp = {w.name: (pressure[:, w.zs, w.y, w.x] - pressure[0, w.zs, w.y, w.x]).mean(axis=1) for w in wells}
    return {"years": list(range(len(grid))),
            "field_scalars": {n: _finite(scalar[:, i]) for i, n in enumerate(schema.SCALAR_NAMES)},
            "production_temperature": _finite(temp),
            "well_pressure_change": {name: _finite(v) for name, v in dp.items()},
            "wells": [{"name": w.name, "x": w.x, "y": w.y, "z": [int(w.zs.min()), int(w.zs.max())],
                       "rate": w.total} for w in wells]}


def _array(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def energy_per_year(result: dict) -> np.ndarray:
    """J produced during each year 1..T-1 (increments of the predicted cumulative total)."""
    return np.diff(_array(result["field_scalars"]["FieldEnergyProductionTotal"]))


def summary(result: dict, breakthrough_k: float = DEFAULT_BREAKTHROUGH_K) -> dict:
    """One scenario's row of the table (module doc) from its stored series."""
    total = _array(result["field_scalars"]["FieldEnergyProductionTotal"])
    temp = _array(result["production_temperature"])
    drop = temp[0] - temp
    late = np.flatnonzero(drop > breakthrough_k)
    row = {"name": result["name"], "energy_total": total[-1] - total[0],
           "energy_last_year": energy_per_year(result)[-1] if len(total) > 1 else np.nan,
           "production_temperature_start": temp[0], "production_temperature_end": temp[-1],
           "production_temperature_drop": drop[-1], "breakthrough_year": int(late[0]) if len(late) else None}
    band = (result.get("field_scalars_band") or {}).get("FieldEnergyProductionTotal")
    if band is not None:  # the band of the energy produced (bands file), same start as energy_total
        row["energy_total_low"], row["energy_total_high"] = _array(band[0])[-1] - total[0], _array(band[1])[-1] - total[0]
    for name in schema.SCALAR_NAMES:
        row[name] = _array(result["field_scalars"][name])[-1]
    for name, values in result["well_pressure_change"].items():
        dp = _array(values)
        row[f"dp_end_{name}"] = dp[-1]
        row[f"dp_peak_{name}"] = dp[int(np.nanargmax(np.abs(dp)))] if np.isfinite(dp).any() else np.nan
    row["out_of_range"] = "; ".join(result.get("out_of_range") or [])  # inputs beyond the training runs'
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def parse_objective(objective: str, minimize: bool = False) -> tuple[str, bool]:
    """(column, minimize): ``-name`` minimizes name."""
    if objective.startswith("-"):
        return objective[1:], True
    return objective, minimize


def rank(rows: list[dict], column: str, minimize: bool) -> list[dict]:
    """Rows sorted best first by ``column`` (missing values last), each given its "rank"."""
    def key(row):
        value = row.get(column)
        missing = value is None or (isinstance(value, float) and not math.isfinite(value))
        return (missing, 0.0 if missing else (value if minimize else -value))
    ordered = sorted(rows, key=key)
    return [{"rank": i + 1} | row for i, row in enumerate(ordered)]


def table_columns(rows: list[dict]) -> list[str]:
    wells = sorted({k for r in rows for k in r if k.startswith("dp_")}, key=lambda k: (k.split("_", 2)[2], k))
    return ["rank", "name", *FIXED_COLUMNS, *wells, "out_of_range"]


def write_table(path, rows: list[dict]) -> None:
    columns = table_columns(rows)
    with files.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})


def objective_band(rows: list[dict], column: str):
    """(2, n) distances from each row's ``column`` down and up to its band's ends (matplotlib's
    xerr), or None where the column has no band (only energy_total has one, with bands)."""
    low, high = f"{column}_low", f"{column}_high"
    if not rows or any(r.get(low) is None or r.get(high) is None or r.get(column) is None for r in rows):
        return None
    value = np.array([float(r[column]) for r in rows])
    return np.stack([value - np.array([float(r[low]) for r in rows]), np.array([float(r[high]) for r in rows]) - value])


def plot_sweep(path, rows: list[dict], results: dict, column: str, minimize: bool = False) -> Path:
    """Energy produced per year of every scenario (the best N_LABELLED named, the rest grey) and
    a bar of the objective per scenario, best at the top, with its band where it has one."""
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.25 * min(len(rows), 40) + 1.5)))
    best = [r["name"] for r in rows[:N_LABELLED]]
    for row in reversed(rows):  # the best drawn last, on top
        energy = energy_per_year(results[row["name"]]) * 1e-12
        labelled = row["name"] in best
        curves.plot(np.arange(1, len(energy) + 1), energy, color=f"C{best.index(row['name'])}" if labelled else "0.75",
                    lw=2 if labelled else 1, label=f"{row['rank']}. {row['name']}" if labelled else None,
                    zorder=3 if labelled else 2)
    handles, labels = curves.get_legend_handles_labels()
    curves.legend(handles[::-1], labels[::-1], fontsize=8)  # best first
    curves.set(xlabel="year", ylabel="energy produced in the year (TJ)", title="energy produced per year")
    curves.xaxis.get_major_locator().set_params(integer=True)
    shown = rows[:40]  # a bar per scenario, at most 40
    unit, factor = DISPLAY.get(column_unit(column), (column_unit(column), 1.0))
    values = [np.nan if r.get(column) is None else float(r[column]) * factor for r in shown]
    band = objective_band(shown, column)
    bars.barh(range(len(shown)), values, color=[f"C{best.index(r['name'])}" if r["name"] in best else "0.6"
                                                for r in shown], xerr=None if band is None else band * factor,
              error_kw={"ecolor": "0.2", "capsize": 2, "lw": 1})
    bars.set_yticks(range(len(shown)), [r["name"] for r in shown], fontsize=8)
    bars.invert_yaxis()
    order = "lower" if minimize else "higher"
    coverage = next((r["band_coverage"] for r in results.values() if r.get("band_coverage")), None)
    banded = "" if band is None else f", {coverage:.0%} band" if coverage else ", band"
    bars.set(title=f"{column}, {order} is better{' (best 40)' if len(rows) > 40 else ''}{banded}",
             xlabel=f"{column} ({unit})")
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
