"""Pictures of a rollout (matplotlib, Agg, PNG); its ParaView XDMF is predictions.py's.

* ``plot_error_curves``: per-step relative change error and abs-tol accuracy,
  model vs baselines, averaged over simulations.
* ``plot_slices``: truth / prediction / error of Pressure and Temperature on a
  Z-X and an X-Y section through the injector (the cell with the largest
  positive InjRate), inactive cells blank; axes in metres where the cell sizes
  are known (``cell_size_of``), else in cells.
* ``plot_scalars``: the 5 field scalars over time, truth vs predictions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from voxel_ode import schema
from voxel_ode.data import description
from voxel_ode import metrics as M
from voxel_ode.files import atomic_path

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNITS = {f.name: f.unit for f in schema.DYNAMIC_FIELDS + schema.SCALAR_FIELDS}
# units the pictures show instead of the schema's SI ones: reservoir engineers read pressure in
# bar and field energy in MW and TJ (a plant's rate is ~1e7 W, 29 years of it ~1e16 J)
DISPLAY_UNITS = {"Pa": ("bar", 1e-5), "W": ("MW", 1e-6), "J": ("TJ", 1e-12)}
# the field-scalar panels show at least this share of the value (the metrics' tolerance is +-5 %)
MIN_SCALAR_SPAN = 0.1
METHOD_STYLE = {"model": "C0", "persistence": "C7", "linear": "C2"}
METHOD_LINE = {"model": "-", "persistence": "--", "linear": ":"}  # baselines often overlap: keep both visible
METHOD_ORDER = ("model", "persistence", "linear")


def display_unit(name: str) -> tuple[str, float]:
    """(unit shown, factor from the schema's unit) of a field in the pictures."""
    unit = UNITS[name]
    return DISPLAY_UNITS.get(unit, (unit, 1.0))


def _method_rank(method: str):
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def injector_cell(static: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) of the largest positive InjRate; the grid centre if there is no injector."""
    inj = static[schema.STATIC_NAMES.index("InjRate")]
    if not np.any(inj > 0):
        return tuple(n // 2 for n in inj.shape)
    return tuple(int(i) for i in np.unravel_index(np.argmax(inj), inj.shape))


def cell_size_of(sim: dict, desc: description.Description | None = None):
    """(dx, dy, dz) in m of a simulation as its dataset description (Stats.description) declares
    them, with the run's ParamsScalar where it points there; None if not declared, also where
    prep calibrated them (fitted sizes drawn as metres would pass for the truth)."""
    if desc is None:
        return None
    if set(desc.calibrated) & set(description.CELL_SIZE_QUANTITIES):
        return None
    try:
        return description.declared_cell_size(desc, sim.get("params_scalar"))
    except (TypeError, IndexError, ValueError):
        return None


def default_steps(n_t: int) -> list[int]:
    """A few steps to picture: first predicted, middle, last."""
    return sorted({1, n_t // 2, n_t - 1} & set(range(1, n_t))) or [0]


def plot_error_curves(per_sim: dict, path) -> Path:
    """Mean over simulations of rel. change error and abs-tol accuracy per step, one line per method."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, layout="constrained")
    for col, var in enumerate(schema.DYNAMIC_NAMES):
        for row, (metric, label) in enumerate((("rel_change_err", "relative change error"),
                                               ("acc_abs", "accuracy within tolerance"))):
            ax = axes[row, col]
            methods = sorted({m for s in per_sim.values() for m in s}, key=_method_rank)
            for method in methods:
                curves = [np.asarray(s[method]["grid"][var][metric], float) for s in per_sim.values() if method in s]
                with warnings.catch_warnings():  # all-NaN steps (t = 0 of rel. error) stay NaN quietly
                    warnings.simplefilter("ignore", RuntimeWarning)
                    curve = np.nanmean(np.vstack(curves), axis=0) if curves else None
                if curve is not None:
                    ax.plot(np.arange(1, len(curve)), curve[1:], METHOD_LINE.get(method, "-"), label=method,
                            color=METHOD_STYLE.get(method))
            ax.set_title(f"{var}: {label}")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("step (years)")
    axes[0, 0].legend()
    fig.suptitle(f"rollout error, mean over {len(per_sim)} simulation(s); persistence change error = 1")
    return _save(fig, path)


def plot_slices(sim: dict, pred_grid: np.ndarray, path, step: int, cell=None, cell_size=None) -> Path:
    """Truth / prediction / error of P and T at ``step``: Z-X (through the injector's y) and X-Y (its z).
    A forecast (no truth): the initial state / prediction / change since t = 0.

    ``cell_size``: (dx, dy, dz) in m puts the axes in metres (depth down from the grid's top);
    None leaves them in cell indices.
    """
    static = sim["static"]
    active = static[schema.STATIC_NAMES.index("IsActive")] > 0.5
    z, y, x = cell if cell is not None else injector_cell(static)
    has_truth = "outputs_grid" in sim
    truth = sim["outputs_grid"][step] if has_truth else pred_grid[0]
    labels = ("truth", "prediction", "prediction - truth") if has_truth else \
        ("initial state", "forecast", "forecast - initial state")
    pred = pred_grid[step]
    # fixed spacing instead of constrained layout: a third faster for these 12 panels + colorbars
    fig, axes = plt.subplots(4, 3, figsize=(13, 14), gridspec_kw=dict(hspace=0.35, wspace=0.45, top=0.95))
    nz, ny, nx = active.shape
    if cell_size is not None:
        dx, dy, dz = (float(v) for v in cell_size)
        sections = ((f"Z-X at y={(y + 0.5) * dy:.0f} m", lambda a: a[:, y, :], (0, nx * dx, nz * dz, 0),
                     "X (m)", "depth (m)"),
                    (f"X-Y at depth {(z + 0.5) * dz:.0f} m", lambda a: a[z, :, :], (0, nx * dx, ny * dy, 0),
                     "X (m)", "Y (m)"))
    else:
        sections = ((f"Z-X at y={y}", lambda a: a[:, y, :], None, "X (cell)", "Z (cell, down)"),
                    (f"X-Y at z={z}", lambda a: a[z, :, :], None, "X (cell)", "Y (cell)"))
    for v, var in enumerate(schema.DYNAMIC_NAMES):
        unit, factor = display_unit(var)
        for s, (section, take, extent, xlabel, ylabel) in enumerate(sections):
            mask = ~take(active)
            # float64: a 1 Pa error on ~250 bar is below float32's resolution in bar
            tr = np.ma.array(take(truth[v]).astype(np.float64) * factor, mask=mask)
            pr = np.ma.array(take(pred[v]).astype(np.float64) * factor, mask=mask)
            err = pr - tr
            row = 2 * v + s
            # a forecast's scale spans the initial state and the forecast: the plume lies outside the first
            scaled = tr if has_truth else np.ma.concatenate([tr.ravel(), pr.ravel()])
            vmin, vmax = (float(scaled.min()), float(scaled.max())) if scaled.count() else (0.0, 1.0)
            lim = float(np.abs(err).max()) if err.count() else 1.0
            for c, (img, title, kw) in enumerate((
                (tr, labels[0], dict(vmin=vmin, vmax=vmax, cmap="viridis")),
                (pr, labels[1], dict(vmin=vmin, vmax=vmax, cmap="viridis")),
                (err, labels[2], dict(vmin=-lim or -1, vmax=lim or 1, cmap="RdBu_r")),
            )):
                ax = axes[row, c]
                im = ax.imshow(img, origin="upper", aspect="auto", interpolation="nearest", extent=extent, **kw)
                ax.set_title(f"{var} {title}, {section}", fontsize=9)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                fig.colorbar(im, ax=ax, label=unit)
    fig.suptitle(f"step {step}: sections through the injector cell (z, y, x) = ({z}, {y}, {x}); blank = inactive")
    return _save(fig, path)


def plot_scalars(true_scalar, preds: dict, path, bands=None) -> Path:
    """The 5 field scalars over time: truth (black) vs each method that predicts them; ``bands``
    (bands.apply's dict): the model's band shaded."""
    fig, axes = plt.subplots(1, schema.N_SCALARS, figsize=(4 * schema.N_SCALARS, 3.5), layout="constrained")
    for i, name in enumerate(schema.SCALAR_NAMES):
        ax = axes[i]
        unit, factor = display_unit(name)
        if true_scalar is not None:
            ax.plot(np.asarray(true_scalar, np.float64)[:, i] * factor, "k-", label="truth")
        for method, scalar in preds.items():
            s = np.asarray(scalar, np.float64)[:, i] * factor
            if np.isfinite(s[1:]).any():
                ax.plot(s, "--", color=METHOD_STYLE.get(method), label=method)
        if bands is not None and bands.get("scalar_low") is not None:
            ax.fill_between(np.arange(len(bands["scalar_low"])), bands["scalar_low"][:, i] * factor,
                            bands["scalar_high"][:, i] * factor, color=METHOD_STYLE.get("model"), alpha=0.2,
                            label=f"model {bands['coverage']:.0%} band")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step (years)")
        ax.set_ylabel(unit)
        _min_span(ax, MIN_SCALAR_SPAN)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def plot_band_width(sim: dict, pred_grid: np.ndarray, bands: dict, path, step: int, cell=None,
                    cell_size=None) -> Path:
    """The band's width of P and T at ``step`` on the Z-X and X-Y sections through the injector,
    next to the actual |error| where the run has a truth (same colour scale)."""
    active = sim["static"][schema.STATIC_ACTIVE] > 0.5
    z, y, _ = cell if cell is not None else injector_cell(sim["static"])
    has_truth = "outputs_grid" in sim
    sections = ((f"Z-X at y={y}", lambda a: a[:, y, :]), (f"X-Y at z={z}", lambda a: a[z, :, :]))
    fig, axes = plt.subplots(2, 4 if has_truth else 2, figsize=(20 if has_truth else 10, 7), squeeze=False,
                             layout="constrained")
    for v, var in enumerate(schema.DYNAMIC_NAMES):
        unit, factor = display_unit(var)
        width = (bands["high"][step, v] - bands["low"][step, v]).astype(np.float64) * factor
        panels = [("band width", width)]
        if has_truth:
            panels.append(("|prediction - truth|", np.abs(pred_grid[step, v].astype(np.float64)
                                                          - sim["outputs_grid"][step, v]) * factor))
        top = max(float(np.max(img[active])) if active.any() else 1.0 for _, img in panels) or 1.0
        for s, (section, take) in enumerate(sections):
            for k, (title, img) in enumerate(panels):
                ax = axes[v, s * len(panels) + k]
                im = ax.imshow(np.ma.array(take(img), mask=~take(active)), origin="upper", aspect="auto",
                               interpolation="nearest", vmin=0, vmax=top, cmap="magma")
                ax.set_title(f"{var} {title}, {section}", fontsize=9)
                fig.colorbar(im, ax=ax, label=unit)
    fig.suptitle(f"step {step}: width of the {bands['coverage']:.0%} band (cells; blank = inactive)")
    return _save(fig, path)


def _min_span(ax, fraction: float) -> None:
    """Widen the y-axis to at least ``fraction`` of its largest |value|, without an offset: a
    rate that is constant within 1e-4 would otherwise fill the panel (e.g. "+3.139e1" and a
    steep-looking line) as if it drifted."""
    ax.ticklabel_format(axis="y", useOffset=False)
    lo, hi = ax.get_ylim()
    span = fraction * max(abs(lo), abs(hi))
    if hi - lo < span:
        mid = 0.5 * (lo + hi)
        ax.set_ylim(mid - 0.5 * span, mid + 0.5 * span)


def plot_simulation(out_dir, sim: dict, preds: dict, desc: description.Description | None = None, sim_metrics=None,
                    steps=None, dynamic_std=None, bands=None) -> list[Path]:
    """All pictures of one simulation: slices of the model at a few steps, scalars, and error curves.
    ``sim_metrics``: the metrics of evaluate_sim, else computed here (normalized MSE with
    ``dynamic_std``, the stats' std of (P, T), else 1); ``bands``: the model's (bands.apply), shown
    on the scalars and as a slice of their width at the last step."""
    out_dir = Path(out_dir)
    grid = preds["model"][0]
    steps = default_steps(len(grid)) if steps is None else steps
    cell_size = cell_size_of(sim, desc)
    written = [plot_slices(sim, grid, out_dir / f"slices_step{t:02d}.png", t, cell_size=cell_size) for t in steps]
    written.append(plot_scalars(sim.get("outputs_scalar"), {m: p[1] for m, p in preds.items()},
                                out_dir / "scalars.png", bands))
    if bands is not None:
        written.append(plot_band_width(sim, grid, bands, out_dir / f"band_width_step{len(grid) - 1:02d}.png",
                                       len(grid) - 1))
    if sim_metrics is None:
        std = [1.0] * schema.N_DYNAMIC if dynamic_std is None else dynamic_std
        sim_metrics = {m: {"grid": M.grid_metrics(g, sim["outputs_grid"],
                                                   sim["static"][schema.STATIC_ACTIVE], std)}
                       for m, (g, _) in preds.items()}
    written.append(plot_error_curves({"sim": sim_metrics}, out_dir / "error_curves.png"))
    return written


def plot_forecast(out_dir, sim: dict, grid, scalar, desc: description.Description | None = None,
                  bands=None) -> list[Path]:
    """The pictures of a forecast (a run with no truth): sections of the forecast against the initial
    state at a few steps, and the forecast field scalars."""
    out_dir = Path(out_dir)
    cell_size = cell_size_of(sim, desc)
    written = [plot_slices(sim, grid, out_dir / f"slices_step{t:02d}.png", t, cell_size=cell_size)
               for t in default_steps(len(grid))]
    written.append(plot_scalars(None, {"model": scalar}, out_dir / "scalars.png", bands))
    if bands is not None:
        written.append(plot_band_width(sim, grid, bands, out_dir / f"band_width_step{len(grid) - 1:02d}.png",
                                       len(grid) - 1))
    return written
