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
from voxel_ode.data import envelope, prepped, start_scalars
from voxel_ode.data.stats import Stats
from voxel_ode import metrics as M
from voxel_ode.inference import bands as bands_module
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


# a scalar's RMS error below this share of its size: forecast exactly (float rounding), left out of width/RMS
EXACT_SCALAR = 1e-6
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


def band_scores(calibrated: dict, sim: dict, grid, scalar) -> tuple[dict, dict]:
    """(the model's bands of one run (bands.apply + "coverage"), their scores: {"grid":
    metrics.band_metrics, "scalar": metrics.scalar_band_metrics or absent})."""
    band = {**bands_module.apply(calibrated, sim, grid, scalar), "coverage": calibrated["coverage"]}
    active = sim["static"][schema.STATIC_ACTIVE]
    scores = {"grid": M.band_metrics(band["low"], band["high"], grid, sim["outputs_grid"], active)}
    if band["scalar_low"] is not None and "outputs_scalar" in sim:
        scores["scalar"] = M.scalar_band_metrics(band["scalar_low"], band["scalar_high"], scalar,
                                                 sim["outputs_scalar"])
    return band, scores


def summarize_bands(per_sim: dict) -> dict:
    """Over the runs, per variable (P, T, and the scalars together): the band's coverage, its mean
    width over the RMS error (both pooled over runs per step; scalars: averaged over the scalars
    not forecast exactly, those named in "exact"), at the last step and the mean over steps
    t >= 1; for P and T also the mean over runs of the spread-error rank correlation."""
    def steps(values):
        values = np.asarray(values, np.float64)
        return {"last": M.finite_mean(values[-1:]), "mean": M.finite_mean(values[1:])}

    out = {}
    for var in schema.DYNAMIC_NAMES:
        runs = [s["grid"][var] for s in per_sim.values()]
        width = np.mean([r["width"] for r in runs], axis=0)
        rms = np.sqrt(np.mean([np.square(r["rms_err"]) for r in runs], axis=0))
        out[var] = {"coverage": steps(np.mean([r["coverage"] for r in runs], axis=0)),
                    "width_over_rms": steps(width / np.where(rms > 0, rms, np.nan)),
                    "spread_error_rank_corr": M.finite_mean([r["spread_error_rank_corr"] for r in runs])}
    runs = [s["scalar"] for s in per_sim.values() if "scalar" in s]
    if runs:
        covered = np.mean([[r[n]["covered"] for n in schema.SCALAR_NAMES] for r in runs], axis=(0, 1))
        ratios, exact = [], []
        for n in schema.SCALAR_NAMES:
            rms = np.sqrt(np.mean([np.square(r[n]["abs_err"]) for r in runs], axis=0))
            # a scalar the rollout gets exactly (water rates a run held, taken from the priors) has
            # no error to size a band against: its ratio would be width / float rounding
            size = np.sqrt(np.mean([np.square(r[n]["abs_true"]) for r in runs], axis=0))
            is_exact = rms <= EXACT_SCALAR * size
            ratios.append(np.where(is_exact, np.nan, np.mean([r[n]["width"] for r in runs], axis=0)
                                   / np.where(rms > 0, rms, np.nan)))
            if np.all(is_exact[1:]):
                exact.append(n)
        ratio = np.array([M.finite_mean(step) for step in np.asarray(ratios).T])  # over the scalars
        out["scalars"] = {"coverage": steps(covered), "width_over_rms": steps(ratio), "exact": exact}
    return out


def format_bands_table(summary: dict, coverage: float) -> str:
    """The bands' summary as a text table."""
    head = f"{'band':<12}{'coverage last':>15}{'coverage mean':>15}{'width/RMS last':>16}{'width/RMS mean':>16}" \
           f"{'rank corr':>11}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, w: f"{v:>{w}.3f}" if v is not None and math.isfinite(v) else f"{'-':>{w}}"  # noqa: E731
    for var, entry in summary.items():
        lines.append(f"{var:<12}{fmt(entry['coverage']['last'], 15)}{fmt(entry['coverage']['mean'], 15)}"
                     f"{fmt(entry['width_over_rms']['last'], 16)}{fmt(entry['width_over_rms']['mean'], 16)}"
                     f"{fmt(entry.get('spread_error_rank_corr'), 11)}")
    lines += [f"coverage: share of active cells (scalars: of runs x scalars) inside the {coverage:.0%} band; "
              "width/RMS: the band's mean width over the RMS error of the prediction",
              "rank corr: Spearman's correlation between band width and |error| over a run's cells and steps"]
    exact = summary.get("scalars", {}).get("exact")
    if exact:
        lines.append("scalars' width/RMS leaves out those forecast exactly (no error to size against): "
                     + ", ".join(exact))
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
             max_sims=None, progress=True, bands_path=None, stats_path=None) -> dict:
    """Roll out every simulation of ``split`` with the model and baselines; returns the summary dict.

    Writes ``out_dir/metrics.json`` ({"summary", "per_sim", "config"}),
    ``metrics_per_step.csv``, ``predictions/<run>.h5`` (+ .xdmf) and, with
    ``plots``, ``plots/<run>/*.png`` and ``plots/error_curves.png``. ``linear_baseline``: also
    fit (or reuse ``out_dir/linear_baseline.npz``) and score the linear per-voxel model. With a
    bands file (``bands_path`` or the checkpoint's own), the model's bands are written and scored
    (metrics.json "bands"). ``stats_path``: a stats.json in place of the checkpoint's (they must agree).
    """
    out_dir, prepped_root = files.creatable_folder(out_dir, "--out"), Path(prepped_root)
    model, normalizer, stats, config = checkpoint.load_for_inference(ckpt_path, stats_path, device)
    checkpoint.check_data(stats, ckpt_path, Stats.load(prepped_root).preparation, prepped_root / schema.STATS_FILE)
    if note := start_scalars.after_start_note(stats.get(start_scalars.KEY)):
        print(note)
    chosen = precision.choose(amp, device)
    calibrated = bands_module.find(ckpt_path, bands_path)
    paths = sorted((prepped_root / split).glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: {split}/: no *{schema.PREPPED_SUFFIX} files")
    paths = paths[:max_sims] if max_sims else paths
    files.writable_folder(out_dir, "--out")  # made only now: a refusal above leaves nothing behind
    steppers = [ModelStepper(model, normalizer, device=device, tile=tile, precision=chosen), PersistenceStepper()]
    if linear_baseline:
        steppers.append(_linear_stepper(out_dir / "linear_baseline.npz", prepped_root, stats, normalizer, progress))
    print(f"receptive field: {model.receptive_field} cells; {len(paths)} {split} simulations")
    attrs = {"checkpoint": str(Path(ckpt_path).resolve()), "stats": "checkpoint", "model_config": json.dumps(config),
             "receptive_field": int(model.receptive_field), "device": device}
    per_sim, timings, out_of_range, per_sim_bands, band = {}, [], {}, {}, None
    for path in tqdm(paths, desc=f"evaluate {split}", disable=not progress):
        sim = prepped.load_prepped_sim(path)
        name = path.name[: -len(schema.PREPPED_SUFFIX)]
        out_of_range[name] = out_of_range_notes(stats, sim)
        preds, seconds_per_step = _roll_out_all(steppers, sim)
        timings.append(seconds_per_step)
        per_sim[name] = evaluate_sim(sim, preds, stats, tol_pressure, tol_temperature)
        if calibrated is not None:
            band, per_sim_bands[name] = band_scores(calibrated, sim, *preds["model"])
        if save_predictions:
            write_predictions(out_dir / "predictions" / f"{name}.h5", *preds["model"],
                              sim["static"][schema.STATIC_ACTIVE], {**attrs, "source": str(path.resolve())},
                              truth=(sim["outputs_grid"], sim.get("outputs_scalar")), xdmf=xdmf,
                              cell_size=plots_module.cell_size_of(sim, stats.description), bands=band)
        if plots:
            plots_module.plot_simulation(out_dir / "plots" / name, sim, preds, stats.description, per_sim[name],
                                         bands=band)
    summary = summarize(per_sim)
    print(format_table(summary, tol_pressure, tol_temperature))
    bands_report = None
    if calibrated is not None:
        bands_report = {"summary": summarize_bands(per_sim_bands), "per_sim": per_sim_bands,
                        "coverage": calibrated["coverage"], "calibration_runs": calibrated["calibration_runs"]}
        print(format_bands_table(bands_report["summary"], calibrated["coverage"]))
    if None in out_of_range.values():
        print(envelope.NOT_RECORDED)
    for name, notes in out_of_range.items():
        for note in notes or []:
            print(f"{name}: outside the training runs: {note}")
    report = {
        "summary": summary,
        "per_sim": per_sim,
        "out_of_range": out_of_range,  # per run: its inputs outside the training runs' ranges
        "bands": bands_report,  # None without a bands file
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
