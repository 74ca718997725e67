"""``voxel-ode evaluate``: roll out every simulation of a split with the model and the baselines,
print a summary table and write metrics.json, a per-step CSV, predictions (+ XDMF) and pictures."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data import prepped
from voxel_ode.data.stats import Stats
from voxel_ode import metrics as M
from voxel_ode.inference import plots as plots_module
from voxel_ode.inference.baselines import LinearStepper, PersistenceStepper, fit_linear_baseline, load_linear_baseline
from voxel_ode.inference.predict import out_of_range_notes
from voxel_ode.inference.predictions import write_predictions
from voxel_ode.inference.rollout import ModelStepper, run_stepper
from voxel_ode.model import checkpoint, precision
from voxel_ode.utils import UserError

# ---------------------------------------------------------------------------
# Evaluation over a split
# ---------------------------------------------------------------------------
def evaluate_sim(sim: dict, preds: dict, stats: Stats, tol_pressure, tol_temperature) -> dict:
    """{method: {"grid": {var: {metric: (T,)}}, "scalar": {...}}} for one simulation."""
    active = sim["static"][schema.STATIC_ACTIVE]
    out = {}
    for method, (grid, scalar) in preds.items():
        entry = {"grid": M.grid_metrics(grid, sim["outputs_grid"], active, stats["dynamic"]["std"],
                                        tol_pressure, tol_temperature)}
        if "outputs_scalar" in sim and not np.all(np.isnan(scalar[1:])):
            entry["scalar"] = M.scalar_metrics(scalar, sim["outputs_scalar"], stats.get("scalars"))
        out[method] = entry
    return out


# rows of the summary table: (label, group, variable or None = mean over scalars, metric)
TABLE_ROWS = (
    ("rel. change error P", "grid", "Pressure", "rel_change_err"),
    ("rel. change error T", "grid", "Temperature", "rel_change_err"),
    ("acc +/-tol P", "grid", "Pressure", "acc_abs"),
    ("acc +/-tol T", "grid", "Temperature", "acc_abs"),
    ("acc +/-5% P", "grid", "Pressure", "acc_pct"),
    ("acc +/-5% T", "grid", "Temperature", "acc_pct"),
    ("acc +/-5% scalars", "scalar", None, "acc_pct"),
    ("rel. error scalars", "scalar", None, "rel_err"),
    ("norm. MSE P", "grid", "Pressure", "mse_norm"),
    ("norm. MSE T", "grid", "Temperature", "mse_norm"),
)


def summarize(per_sim: dict) -> dict:
    """Average over simulations of each metric at the last step and over steps t >= 1."""
    methods = sorted({m for sim in per_sim.values() for m in sim}, key=["model", "persistence", "linear"].index)
    summary = {}
    for method in methods:
        summary[method] = {}
        for label, group, var, metric in TABLE_ROWS:
            vals = {"last": [], "mean": []}
            for sim in per_sim.values():
                entry = sim.get(method, {}).get(group)
                if entry is None:
                    continue
                names = [var] if var else list(entry)
                s = M.summarize_steps({n: {metric: entry[n][metric]} for n in names if metric in entry[n]})
                for key in vals:
                    vals[key].extend(s[n][metric][key] for n in s)
            summary[method][label] = {k: M.finite_mean(v) for k, v in vals.items()}
    return summary


def format_table(summary: dict, tol_pressure=schema.DEFAULT_PRESSURE_TOL_PA,
                 tol_temperature=schema.DEFAULT_TEMPERATURE_TOL_K) -> str:
    """The summary as a text table, with a legend of its columns and rows."""
    methods = list(summary)
    head = f"{'metric':<22}" + "".join(f"{m + ' last':>18}{m + ' mean':>18}" for m in methods)
    lines = [head, "-" * len(head)]
    for label, *_ in TABLE_ROWS:
        row = f"{label:<22}"
        for m in methods:
            for key in ("last", "mean"):
                v = summary[m][label][key]
                ok = v is not None and math.isfinite(v)  # None = NaN in the JSON-ready summary
                row += f"{v:>18.4g}" if ok else f"{'-':>18}"
        lines.append(row)
    lines += [
        "last: at the last step; mean: over steps 1..T-1; both averaged over the simulations",
        "rel. change error: ||pred - true|| / ||true - true(t=0)|| over active cells (persistence = 1, lower is better)",
        f"acc +/-tol: share of active cells within {tol_pressure:g} Pa (P) or {tol_temperature:g} K (T) of the truth;"
        " +/-5%: within 5% of the true value (scalars: the 5 field scalars, averaged)",
        "norm. MSE: squared error divided by the variable's variance in stats.json",
    ]
    return "\n".join(lines)


def write_step_csv(path, per_sim: dict) -> None:
    """One row per (simulation, method, variable, step) with every metric."""
    with files.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            cols = sorted(set(M.GRID_METRICS) | set(M.SCALAR_METRICS))
            w.writerow(["sim", "method", "variable", "step", *cols])
            for sim_name, methods in per_sim.items():
                for method, groups in methods.items():
                    for group in groups.values():
                        for var, mets in group.items():
                            n = len(next(iter(mets.values())))
                            for t in range(n):
                                vals = [mets[c][t] if c in mets else "" for c in cols]
                                w.writerow([sim_name, method, var, t, *vals])


def evaluate(prepped_root, ckpt_path, out_dir, split="test", device="cpu", tile=None, amp="auto", plots=True,
             linear_baseline=False, tol_pressure=schema.DEFAULT_PRESSURE_TOL_PA,
             tol_temperature=schema.DEFAULT_TEMPERATURE_TOL_K, save_predictions=True, xdmf=True,
             max_sims=None, progress=True) -> dict:
    """Roll out every simulation of ``split`` with the model and baselines; returns the summary dict.

    Writes ``out_dir/metrics.json`` ({"summary", "per_sim", "config"}),
    ``metrics_per_step.csv``, ``predictions/<run>.h5`` (+ .xdmf) and, with
    ``plots``, ``plots/<run>/*.png`` and ``plots/error_curves.png``. ``linear_baseline``: also
    fit (or reuse ``out_dir/linear_baseline.npz``) and score the linear per-voxel model.
    """
    out_dir, prepped_root = files.writable_folder(out_dir, "--out"), Path(prepped_root)
    model, normalizer, stats, config = checkpoint.load_for_inference(ckpt_path, None, device)
    checkpoint.check_data(stats, ckpt_path, Stats.load(prepped_root).preparation, prepped_root / schema.STATS_FILE)
    chosen = precision.choose(amp, device)
    paths = sorted((prepped_root / split).glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: {split}/: no *{schema.PREPPED_SUFFIX} files")
    paths = paths[:max_sims] if max_sims else paths
    steppers = [ModelStepper(model, normalizer, device=device, tile=tile, precision=chosen), PersistenceStepper()]
    if linear_baseline:
        steppers.append(_linear_stepper(out_dir / "linear_baseline.npz", prepped_root, stats, normalizer, progress))
    print(f"receptive field: {model.receptive_field} cells; {len(paths)} {split} simulations")
    attrs = {"checkpoint": str(Path(ckpt_path).resolve()), "stats": "checkpoint", "model_config": json.dumps(config),
             "receptive_field": int(model.receptive_field), "device": device}
    per_sim, timings, out_of_range = {}, [], {}
    for path in tqdm(paths, desc=f"evaluate {split}", disable=not progress):
        sim = prepped.load_prepped_sim(path)
        name = path.name[: -len(schema.PREPPED_SUFFIX)]
        out_of_range[name] = out_of_range_notes(stats, sim)
        preds, seconds_per_step = _roll_out_all(steppers, sim)
        timings.append(seconds_per_step)
        per_sim[name] = evaluate_sim(sim, preds, stats, tol_pressure, tol_temperature)
        if save_predictions:
            write_predictions(out_dir / "predictions" / f"{name}.h5", *preds["model"],
                              sim["static"][schema.STATIC_ACTIVE], {**attrs, "source": str(path.resolve())},
                              truth=(sim["outputs_grid"], sim.get("outputs_scalar")), xdmf=xdmf,
                              cell_size=plots_module.cell_size_of(sim, stats.description))
        if plots:
            plots_module.plot_simulation(out_dir / "plots" / name, sim, preds, stats.description, per_sim[name])
    summary = summarize(per_sim)
    print(format_table(summary, tol_pressure, tol_temperature))
    if None in out_of_range.values():
        print("out-of-range check: not available (stats.json from a prep before training ranges were recorded)")
    for name, notes in out_of_range.items():
        for note in notes or []:
            print(f"{name}: outside the training runs: {note}")
    report = {
        "summary": summary,
        "per_sim": per_sim,
        "out_of_range": out_of_range,  # per run: its inputs outside the training runs' ranges
        "config": {"checkpoint": str(ckpt_path), "split": split, "tile": list(tile) if tile else None,
                   "tol_pressure": tol_pressure, "tol_temperature": tol_temperature, "device": device,
                   "model_seconds_per_step": M.finite_mean(timings)},
    }
    files.write_json_atomic(out_dir / "metrics.json", M.to_jsonable(report))
    write_step_csv(out_dir / "metrics_per_step.csv", per_sim)
    if plots:
        plots_module.plot_error_curves(per_sim, out_dir / "plots" / "error_curves.png")
    return M.to_jsonable(summary)


def _linear_stepper(path: Path, prepped_root, stats, normalizer, progress) -> LinearStepper:
    """The linear baseline: the weights saved at ``path`` if fitted with these stats, else a new fit
    on the train split (saved there)."""
    weights = load_linear_baseline(path, stats) if path.exists() else None
    if weights is None:
        weights = fit_linear_baseline(prepped_root, stats, normalizer, save_path=path, progress=progress)
    return LinearStepper(weights, normalizer)


def _roll_out_all(steppers, sim: dict) -> tuple[dict, float]:
    """({method: (grid, scalars)}, the model's seconds per step) of one simulation."""
    preds, seconds = {}, float("nan")
    for stepper in steppers:
        t0 = time.perf_counter()
        preds[stepper.name] = run_stepper(stepper, sim, progress=False)
        if stepper.name == "model":
            seconds = (time.perf_counter() - t0) / max(1, len(sim["outputs_grid"]) - 1)
    return preds, seconds
