"""``voxel-ode rollout``: one simulation file through a checkpoint -> predictions.h5 (+ XDMF, pictures).

A prepped file, or a raw v2.4 file that is prepared in memory exactly as prep did for the
checkpoint's training data (its stats' description: units, time origin, derived channels).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from voxel_ode import files, schema
from voxel_ode.data import envelope, start_scalars
from voxel_ode.inference import bands as bands_module
from voxel_ode.inference import plots
from voxel_ode.inference.predictions import write_predictions
from voxel_ode.inference.rollout import load_sim, rollout
from voxel_ode.model import checkpoint, precision


def prepared_source(source, stats, ckpt_path, fill_value=None) -> dict:
    """``source``'s arrays as prep derived them for the checkpoint's data (its description); a file
    with Input/ only: a forecast over as many years as the training runs. Checked against the
    checkpoint's preparation."""
    sim = load_sim(source, fill_value=fill_value, desc=stats.description, n_reports=int(stats["n_timesteps"]))
    if sim.get("preparation") is not None:  # a prepped file or a forecast's start: prepared maybe otherwise
        checkpoint.check_data(stats, ckpt_path, sim["preparation"], source)
    return sim


def prediction_attrs(ckpt_path, stats_path, source, config, model, tile, device, sim, n_frames, stats,
                     out_of_range) -> dict:
    """predictions.h5's root attributes: where the prediction comes from, what its frames are, and
    what to trust less (inputs outside the training runs' ranges, prep's calibration doubts)."""
    return {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "stats": str(Path(stats_path).resolve()) if stats_path else "checkpoint",
        "source": str(Path(source).resolve()),
        "model_config": json.dumps(config),
        "receptive_field": int(model.receptive_field),
        "tile": json.dumps(list(tile) if tile else None),
        "device": device,
        # frame t = t years after the start; frame 0 is the initial state (a simulator whose first
        # report is the end of year 1 has its report r at frame r + 1)
        "times_years": json.dumps(list(range(n_frames))),
        "first_report": str(sim.get("first_report", "initial")),
        "forecast": json.dumps(bool(sim.get("forecast"))),  # true: a run nobody simulated, no truth in the file
        "out_of_range": json.dumps(out_of_range or []),
        "calibration_warnings": json.dumps(stats.calibration_warnings),
    }


def predict_file(ckpt_path, source, save_path, stats_path=None, device="cpu", amp="auto", tile=None,
                 plots_dir=None, xdmf=True, save_truth=False, fill_value=None, progress=True,
                 arch_flags=None, bands_path=None) -> Path:
    """Roll out ``source`` with the model of ``ckpt_path``; write ``save_path``. Returns its path.
    Uncertainty bands from ``bands_path``, else from the checkpoint's bands file where there is one."""
    files.creatable_folder(Path(save_path).parent, "--save_path's folder")  # before the work, not after
    if plots_dir:
        files.creatable_folder(plots_dir, "--plots")
    model, normalizer, stats, config = checkpoint.load_for_inference(ckpt_path, stats_path, device, arch_flags)
    chosen = precision.choose(amp, device)
    calibrated = bands_module.find(ckpt_path, bands_path)
    sim = prepared_source(source, stats, ckpt_path, fill_value)
    forecast = bool(sim.get("forecast"))
    if forecast:
        print(f"forecast: {source} has no outputs; starting from Input/Pressure0 and Input/Temperature0, "
              f"{len(sim['priors']) - 1} years; {start_scalars.describe(stats.get(start_scalars.KEY))}")
    elif note := start_scalars.after_start_note(stats.get(start_scalars.KEY)):
        print(note)
    out_of_range = out_of_range_notes(stats, sim)
    if out_of_range is None:
        print(envelope.NOT_RECORDED)
    for note in out_of_range or []:
        print(f"warning: outside the training runs: {note}")
    print(f"receptive field: {model.receptive_field} cells (tile halo)" + (f", tiles {tuple(tile)}" if tile else ""))
    t0 = time.perf_counter()
    grid, scalar = rollout(model, normalizer, sim, device=device, tile=tile, precision=chosen, progress=progress)
    dt = time.perf_counter() - t0
    print(f"{len(grid) - 1} steps on {grid.shape[2:]} in {dt:.1f} s ({dt / max(1, len(grid) - 1):.2f} s/step, {device})")
    band = None if calibrated is None else \
        {**bands_module.apply(calibrated, sim, grid, scalar), "coverage": calibrated["coverage"]}
    truth = (sim["outputs_grid"], sim.get("outputs_scalar")) if save_truth and "outputs_grid" in sim else None
    attrs = prediction_attrs(ckpt_path, stats_path, source, config, model, tile, device, sim, len(grid), stats,
                             out_of_range)
    files.writable_folder(Path(save_path).parent, "--save_path's folder")
    write_predictions(save_path, grid, scalar, sim["static"][schema.STATIC_ACTIVE], attrs, truth=truth, xdmf=xdmf,
                      cell_size=plots.cell_size_of(sim, stats.description), bands=band)
    print(f"wrote {save_path}" + (f" with {calibrated['coverage']:.0%} bands" if band else ""))
    if plots_dir:
        files.writable_folder(plots_dir, "--plots")
        if forecast:
            plots.plot_forecast(plots_dir, sim, grid, scalar, stats.description, bands=band)
        else:
            plots.plot_simulation(plots_dir, sim, {"model": (grid, scalar)}, stats.description,
                                  dynamic_std=stats["dynamic"]["std"], bands=band)
        print(f"wrote pictures to {plots_dir}")
    return Path(save_path)


def out_of_range_notes(stats, sim: dict) -> list[str] | None:
    """One line per input of the run outside the training runs' ranges (data/envelope.py); None
    where the stats hold no ranges."""
    inputs = envelope.run_inputs(sim["static"], sim["params_scalar"], plots.cell_size_of(sim, stats.description))
    return stats.outside_training(inputs)
