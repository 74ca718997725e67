"""Rollout metrics over active cells: pure numpy, small enough to check by hand.

All grid metrics take arrays shaped (T, 2, Z, Y, X) in physical units (channel
order ``schema.DYNAMIC_NAMES``) and an active mask (Z, Y, X); inactive cells
never enter a metric. Each returns one value per step t = 0..T-1, so a curve
over the rollout is just the array. t = 0 is the given initial state (error 0
for any rollout), so summaries average over t >= 1 (``summarize_steps``).

Metrics, per output variable:

* ``mse_norm``: mean squared error in normalized space, i.e. divided by the
  variable's global std from stats.json (``dynamic.std``), as in the seed.
* ``acc_pct``: the seed's +/-5% accuracy, fraction of active cells with
  |pred - true| <= 0.05 |true|. Loose for absolute pressures / Kelvin
  temperatures (5% of 2e7 Pa is 10 bar), so also:
* ``acc_abs``: fraction with |pred - true| <= tol (defaults 5e5 Pa, 5 K).
* ``rel_change_err``: ||pred_t - true_t|| / ||true_t - true_0|| over active
  cells. Persistence (pred_t = true_0) scores exactly 1.0; lower is better.
  Where the truth has not changed (denominator 0) the value is 0.0 if the
  prediction is exact too, else NaN (undefined, skipped by the summaries).

Scalars (T, 5), ``schema.SCALAR_NAMES`` order: ``acc_pct`` (0/1 per step and
scalar), ``rel_err`` = |pred - true| / |true| (same zero guard), and
``mse_norm`` after the stats.json transform (signed_log1p) and z-score.
A prediction that is NaN (a baseline that does not predict scalars) counts as
wrong for accuracies and gives NaN errors.

Uncertainty bands (low, high) of the same shapes: ``coverage`` (fraction of active cells with
low <= true <= high), ``width`` (mean of high - low over active cells) and ``rms_err`` per step,
and ``spread_error_rank_corr``, Spearman's rank correlation between the band's width and the
absolute error over active cells and steps t >= 1 (does a wider band mark a larger error?).
Scalars: ``covered`` (0/1), ``width`` and ``abs_err`` per step.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from voxel_ode import schema
from voxel_ode.utils import signed_log1p

GRID_METRICS = ("rel_change_err", "acc_abs", "acc_pct", "mse_norm")
SCALAR_METRICS = ("acc_pct", "rel_err", "mse_norm")


def _active_values(arr: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(T, Z, Y, X) -> (T, n_active) float64, so sums do not lose precision."""
    return np.asarray(arr)[:, np.asarray(active) > 0.5].astype(np.float64)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0/0 = 0 and x/0 = NaN (undefined rather than infinite)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    out[(~ok) & (num == 0)] = 0.0
    return out


def mse_normalized(pred, true, active, std: float) -> np.ndarray:
    """Per-step mean of ((pred - true) / std)^2 over active cells; pred/true (T, Z, Y, X)."""
    p, t = _active_values(pred, active), _active_values(true, active)
    return np.mean(((p - t) / float(std)) ** 2, axis=1)


def within_pct(pred, true, rel: float = 0.05):
    """Where |pred - true| <= rel * |true| (the seed's +/-5%). numpy arrays or torch tensors
    (training's evaluation counts the same hits on tensors); NaN compares False."""
    return abs(pred - true) <= rel * abs(true)


def within_abs(pred, true, tol):
    """Where |pred - true| <= tol (physical units); numpy arrays or torch tensors."""
    return abs(pred - true) <= tol


def accuracy_pct(pred, true, active, rel: float = 0.05) -> np.ndarray:
    """Per-step fraction of active cells with |pred - true| <= rel * |true| (the seed's +/-5%)."""
    p, t = _active_values(pred, active), _active_values(true, active)
    return np.mean(within_pct(p, t, rel), axis=1)


def accuracy_abs(pred, true, active, tol: float) -> np.ndarray:
    """Per-step fraction of active cells with |pred - true| <= tol (physical units)."""
    p, t = _active_values(pred, active), _active_values(true, active)
    return np.mean(within_abs(p, t, tol), axis=1)


def relative_change_error(pred, true, active) -> np.ndarray:
    """Per-step ||pred_t - true_t|| / ||true_t - true_0|| over active cells (persistence = 1)."""
    p, t = _active_values(pred, active), _active_values(true, active)
    num = np.sqrt(np.sum((p - t) ** 2, axis=1))
    den = np.sqrt(np.sum((t - t[:1]) ** 2, axis=1))
    return _safe_ratio(num, den)


def grid_metrics(
    pred_grid,
    true_grid,
    active,
    dynamic_std,
    tol_pressure: float = schema.DEFAULT_PRESSURE_TOL_PA,
    tol_temperature: float = schema.DEFAULT_TEMPERATURE_TOL_K,
) -> dict:
    """{variable: {metric: (T,) array}} for Pressure and Temperature.

    ``dynamic_std`` is stats["dynamic"]["std"] (one per variable).
    """
    pred_grid, true_grid = np.asarray(pred_grid), np.asarray(true_grid)
    if pred_grid.shape != true_grid.shape:
        raise ValueError(f"prediction {pred_grid.shape} and truth {true_grid.shape} differ in shape")
    tols = {"Pressure": tol_pressure, "Temperature": tol_temperature}
    out = {}
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        p, t = pred_grid[:, c], true_grid[:, c]
        out[name] = {
            "rel_change_err": relative_change_error(p, t, active),
            "acc_abs": accuracy_abs(p, t, active, tols[name]),
            "acc_pct": accuracy_pct(p, t, active),
            "mse_norm": mse_normalized(p, t, active, dynamic_std[c]),
        }
    return out




def band_metrics(low, high, pred, true, active) -> dict:
    """{variable: {"coverage", "width", "rms_err": (T,), "spread_error_rank_corr": float}} of a
    rollout's bands; arrays (T, 2, Z, Y, X)."""
    out = {}
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        lo, hi = _active_values(low[:, c], active), _active_values(high[:, c], active)
        p, t = _active_values(pred[:, c], active), _active_values(true[:, c], active)
        err = np.abs(p - t)
        out[name] = {"coverage": np.mean((lo <= t) & (t <= hi), axis=1), "width": np.mean(hi - lo, axis=1),
                     "rms_err": np.sqrt(np.mean(err ** 2, axis=1)),
                     "spread_error_rank_corr": rank_correlation((hi - lo)[1:], err[1:])}
    return out


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two equally shaped arrays (ties share their mean rank); NaN
    when either is constant."""
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def scalar_band_metrics(low, high, pred, true) -> dict:
    """{scalar: {"covered", "width", "abs_err", "abs_true": (T,)}} of the field scalars' bands; arrays (T, 5)."""
    lo, hi, p, t = (np.asarray(x, np.float64) for x in (low, high, pred, true))
    return {name: {"covered": ((lo[:, i] <= t[:, i]) & (t[:, i] <= hi[:, i])).astype(np.float64),
                   "width": hi[:, i] - lo[:, i], "abs_err": np.abs(p[:, i] - t[:, i]), "abs_true": np.abs(t[:, i])}
            for i, name in enumerate(schema.SCALAR_NAMES)}


_TRANSFORMS = {"none": lambda x: x, "signed_log1p": signed_log1p, "log10": np.log10}


def scalar_metrics(pred_scalar, true_scalar, scalar_stats: dict | None = None) -> dict:
    """{scalar name: {metric: (T,) array}}; ``scalar_stats`` is stats["scalars"] (for mse_norm)."""
    p = np.asarray(pred_scalar, np.float64)
    t = np.asarray(true_scalar, np.float64)
    out = {}
    for i, name in enumerate(schema.SCALAR_NAMES):
        err = np.abs(p[:, i] - t[:, i])
        with np.errstate(invalid="ignore"):
            acc = within_pct(p[:, i], t[:, i]).astype(np.float64)  # NaN compares False
        m = {"acc_pct": acc, "rel_err": _safe_ratio(err, np.abs(t[:, i]))}
        if scalar_stats is not None:
            f = _TRANSFORMS[scalar_stats["transform"][i]]
            mean, std = scalar_stats["mean"][i], scalar_stats["std"][i]
            m["mse_norm"] = ((f(p[:, i]) - mean) / std - (f(t[:, i]) - mean) / std) ** 2
        out[name] = m
    return out


def finite_mean(x) -> float:
    """Mean of the finite values (NaN when there are none)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def summarize_steps(per_step: dict) -> dict:
    """{var: {metric: array}} -> {var: {metric: {"last": v, "mean": v}}} over predicted steps t >= 1."""
    out = {}
    for var, metrics in per_step.items():
        out[var] = {}
        for name, values in metrics.items():
            values = np.asarray(values, np.float64)
            out[var][name] = {"last": finite_mean(values[-1:]), "mean": finite_mean(values[1:])}
    return out


def to_jsonable(obj):
    """numpy arrays / floats -> lists / floats, NaN and inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
