#!/usr/bin/env python
"""How far can the physics priors go? Per-simulation best fits of the two mixes to the truth.

    python benchmarks/prior_oracle.py --prepped_root PREPPED [--split test] [--eval_json EVAL/metrics.json]

The default model writes the pressure change since t = 0 as a mix of the well
responses (plus a learned residual) and the temperature change as the heat-front
prior (plus a residual). This fits each prior to each simulation's own truth, with
knowledge the model never has, and reports the relative change error that leaves
(``||fit - true|| / ||true||`` over active cells, the evaluation's metric):

* pressure: least squares of the change since t = 0 on the response channels,
  separately at each year (the model's weights may change with time too);
* temperature, the thermal prior the model uses (``priors`` channels 0-2 in the prepped
  file): gain g and position u of ``g * gap * hat-interpolation(theta, u)`` between
  the neighbouring flow fields' shares theta (open / 1 % / closed), fitted to all
  years at once (g in closed form, u on a grid of 41 points);
* temperature, the sigmoid front the thermal prior replaced (for comparison): gain
  g, slope s, centre c and arrival exponent a of
  ``g * gap * sigmoid(s (ln t - c - a ln10 log10 arrival))``, all years at once.

A model that reaches the oracle error predicts the mix as well as it can be
predicted from these channels; below it needs its residual head; far above it,
the mix's inputs (params, time, the whole-field path) do not tell the weights.
With ``--eval_json`` the model's own errors (``voxel-ode evaluate`` output) are
printed beside them. ``--linear_map`` also fits the best *linear* map from the
normalized params to the pressure weights on the train split (ridge ``--ridge``,
each run's error weighted by its own change) and reports its error on ``--split``:
whether a simple function of the params would predict the weights.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from voxel_ode import schema
from voxel_ode.data_prep import load_stats
from voxel_ode.dataset import Normalizer
from voxel_ode.rollout import load_prepped_sim

ACTIVE = schema.STATIC_NAMES.index("IsActive")


def rel_err(pred, true) -> float:
    return float(np.linalg.norm(pred - true) / max(np.linalg.norm(true), 1e-30))


def pressure_oracle(sim, years) -> dict[int, float]:
    static, grid = sim["static"], sim["outputs_grid"]
    active = static[ACTIVE] > 0.5
    basis = np.stack([static[schema.STATIC_NAMES.index(n)][active] for n in schema.RESPONSE_NAMES], 1)
    out = {}
    for y in years:
        change = (grid[y, 0] - grid[0, 0])[active].astype(np.float64)
        w, *_ = np.linalg.lstsq(basis, change, rcond=None)
        out[y] = rel_err(basis @ w, change)
    return out


def _mix_problem(path, year, normalizer):
    """(normalized params + 1, response basis [cells, R], true change [cells]) of one run."""
    sim = load_prepped_sim(path)
    static, grid = sim["static"], sim["outputs_grid"]
    active = static[ACTIVE] > 0.5
    basis = np.stack([static[schema.STATIC_NAMES.index(n)][active] for n in schema.RESPONSE_NAMES], 1)
    x = np.r_[np.asarray(normalizer.normalize_params(sim["params_scalar"]), np.float64), 1.0]
    return x, basis.astype(np.float64), (grid[year, 0] - grid[0, 0])[active].astype(np.float64)


def linear_map_errors(root: Path, split: str, year: int, ridge: float, max_sims) -> list[float]:
    """Fit weights = B @ params on the train split (one B for all runs), return errors on ``split``."""
    normalizer = Normalizer(load_stats(root))
    train = [_mix_problem(p, year, normalizer) for p in sorted(glob.glob(str(root / "train" / f"*{schema.PREPPED_SUFFIX}")))]
    n_x, n_r = train[0][0].size, train[0][1].shape[1]
    lhs, rhs = np.zeros((n_r * n_x,) * 2), np.zeros(n_r * n_x)
    for x, basis, change in train:
        design = np.kron(basis, x[None])  # column r * n_x + j: basis[:, r] * x[j]
        scale = 1.0 / max(change @ change, 1e-30)  # every run counts by its relative error
        lhs += scale * design.T @ design
        rhs += scale * design.T @ change
    penalty = np.full(n_r * n_x, ridge)
    penalty[n_x - 1::n_x] = 0.0  # the constant weights are not shrunk
    B = np.linalg.solve(lhs + np.diag(penalty), rhs).reshape(n_r, n_x)
    paths = sorted(glob.glob(str(root / split / f"*{schema.PREPPED_SUFFIX}")))[:max_sims]
    return [rel_err(basis @ (B @ x), change) for x, basis, change in (_mix_problem(p, year, normalizer) for p in paths)]


def front_oracle(sim, years, tol_k: float) -> tuple[dict[int, float], dict[int, float], np.ndarray]:
    static, grid = sim["static"], sim["outputs_grid"]
    active = static[ACTIVE] > 0.5
    z = np.log10(np.maximum(static[schema.STATIC_NAMES.index(schema.THERMAL_ARRIVAL)][active], 1e-3))
    gap = static[schema.STATIC_NAMES.index(schema.INJECTION_GAP)][active].astype(np.float64)
    t = np.arange(1, grid.shape[0])
    truth = np.stack([(grid[y, 1] - grid[0, 1])[active] for y in t]).astype(np.float64)

    def prior(p):
        g, s, c, a = p
        return g * gap[None] / (1.0 + np.exp(-s * (np.log(t)[:, None] - c - a * np.log(10.0) * z[None])))

    fits = [least_squares(lambda p: (prior(p) - truth).ravel(), [1.0, s0, c0, 1.0], max_nfev=300)
            for s0 in (0.5, 1.5, 4.0) for c0 in (-1.0, 0.0, 1.0)]  # a few starts: the fit is not convex
    best = min(fits, key=lambda r: r.cost)
    fit = prior(best.x)
    errs = {y: rel_err(fit[y - 1], truth[y - 1]) for y in years}
    accs = {y: float(np.mean(np.abs(fit[y - 1] - truth[y - 1]) <= tol_k)) for y in years}
    return errs, accs, best.x


def thermal_prior_oracle(sim, years, tol_k: float) -> tuple[dict[int, float], dict[int, float], tuple]:
    static, grid = sim["static"], sim["outputs_grid"]
    active = static[ACTIVE] > 0.5
    gap = static[schema.STATIC_NAMES.index(schema.INJECTION_GAP)][active].astype(np.float64)
    theta = sim["priors"][:, :schema.N_THERMAL_PRIOR][:, :, active].astype(np.float64)  # [T, K, cells]
    truth = np.stack([(grid[y, 1] - grid[0, 1])[active] for y in range(grid.shape[0])]).astype(np.float64)
    k = theta.shape[1]
    best = None
    for u in np.linspace(0.0, k - 1.0, 41):
        w = np.maximum(0.0, 1.0 - np.abs(u - np.arange(k)))
        shape = gap[None] * np.einsum("k,tkc->tc", w, theta)
        g = float((shape * truth).sum() / max((shape * shape).sum(), 1e-30))
        cost = float(((g * shape - truth) ** 2).sum())
        if best is None or cost < best[0]:
            best = (cost, u, g, g * shape)
    _, u, g, fit = best
    errs = {y: rel_err(fit[y], truth[y]) for y in years}
    accs = {y: float(np.mean(np.abs(fit[y] - truth[y]) <= tol_k)) for y in years}
    return errs, accs, (u, g)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", required=True)
    ap.add_argument("--split", default="test", choices=schema.SPLITS)
    ap.add_argument("--max_sims", type=int, default=None)
    ap.add_argument("--years", type=int, nargs="+", default=[1, 29])
    ap.add_argument("--eval_json", default=None, help="metrics.json of `voxel-ode evaluate` on the same split")
    ap.add_argument("--linear_map", action="store_true", help="also: best linear params -> pressure weights map")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    args = ap.parse_args()

    files = sorted(glob.glob(str(Path(args.prepped_root) / args.split / f"*{schema.PREPPED_SUFFIX}")))[: args.max_sims]
    if not files:
        raise SystemExit(f"prior_oracle: no {schema.PREPPED_SUFFIX} files under {args.prepped_root}/{args.split}")
    model = json.loads(Path(args.eval_json).read_text())["per_sim"] if args.eval_json else {}
    tol = schema.DEFAULT_TEMPERATURE_TOL_K
    head = ["simulation"] + [f"P oracle y{y}" for y in args.years] + [f"T sigmoid oracle y{y}" for y in args.years] \
        + [f"T prior oracle y{y}" for y in args.years] + [f"T prior oracle ±{tol:g} K y{y}" for y in args.years] \
        + ["prior fit u, g"]
    if model:
        head += [f"model {v} y{y}" for v in ("P", "T") for y in args.years]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rows = []
    for path in files:
        sim = load_prepped_sim(path)
        name = Path(path).name[: -len(schema.PREPPED_SUFFIX)]
        years = [y for y in args.years if y < sim["outputs_grid"].shape[0]]
        p = pressure_oracle(sim, years)
        sigmoid, _, _ = front_oracle(sim, years, tol)
        t, acc, fit = thermal_prior_oracle(sim, years, tol)
        row = [p[y] for y in years] + [sigmoid[y] for y in years] + [t[y] for y in years] + [acc[y] for y in years]
        cells = [name] + [f"{v:.2f}" for v in row] + [", ".join(f"{v:.2f}" for v in fit)]
        if model and name in model:
            grid = model[name]["model"]["grid"]
            mrow = [grid[v]["rel_change_err"][y] for v in ("Pressure", "Temperature") for y in years]
            row += mrow
            cells += [f"{v:.2f}" for v in mrow]
        rows.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    if len({len(r) for r in rows}) == 1:
        mean = np.mean(rows, axis=0)
        n_fixed = 4 * len(years)
        cells = ["mean"] + [f"{v:.3f}" for v in mean[:n_fixed]] + ["-"] + [f"{v:.3f}" for v in mean[n_fixed:]]
        print("| " + " | ".join(cells) + " |")
    if args.linear_map:
        print("\nlinear params -> pressure weights, fitted on train, relative change error on " + args.split)
        for y in args.years:
            for lam in args.ridge:
                e = linear_map_errors(Path(args.prepped_root), args.split, y, lam, args.max_sims)
                print(f"  year {y}, ridge {lam:g}: " + ", ".join(f"{v:.2f}" for v in e) + f" (mean {np.mean(e):.3f})")


if __name__ == "__main__":
    main()
