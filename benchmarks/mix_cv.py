"""Cross-validated error of the fitted pressure mix alone (voxel_ode/mix_fit.py).

The fidelity benchmark's 5 test runs are too few to choose how the mix head is fitted (one run
decides the mean), so this splits the TRAINING runs into folds, fits on the others and scores
each held-out run at its last step (relative error of the change since t = 0, the fidelity
metric). Compared on the same folds:
  single:   one head, as `train` fits it;
  restarts: the weights of N heads from different random starts averaged;
  bagging:  the same, each head fitted on its own bootstrap sample of the runs;
  floor:    the best mix of the family for each held-out run at its last step (point u on a
            grid of 0.05, gain and cold share by least squares): what a perfect params -> mix
            map would reach;
  floor at the head's u: the same with the point the single head gives that run.
The single head's (u, gain, cold share) and the floor's are printed per run.

    python benchmarks/mix_cv.py --prepped_root bench_out/fidelity9/prepped --folds 5 --heads 4

With --fit_sizes N1 N2 ... it measures instead how the single head's error falls with the number
of training runs: a fixed random 40 of the training runs are held out, heads are fitted on the
first N of the others (two random starts each) and scored on the held-out 40 and on the test
split (the fidelity benchmark's 5 runs when --prepped_root is a bigger set of the same seed):

    python benchmarks/mix_cv.py --prepped_root bench_out/data205/prepped --fit_sizes 32 80 160
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from voxel_ode import mix_fit, schema
from voxel_ode.dataset import Normalizer
from voxel_ode.model import ModelConfig, VoxelAutoRegressor


def fitted_head(terms, seed, iters, l1, run_weights=None):
    torch.manual_seed(seed)
    model = VoxelAutoRegressor(ModelConfig(base_channels=4, depth=1))  # only its response head is used
    mix_fit.fit_head(model, terms, iters, l1, run_weights=run_weights)
    return model


def last_step_errors(models, terms):
    """[runs] last-step error of the mix with the weights averaged over ``models``."""
    with torch.no_grad():
        w = torch.stack([m.pressure_mix_weights(terms["conditioning"]) for m in models]).mean(0)
        return mix_fit.mix_rel_errors(w, terms)[terms["last"]].numpy()


def best_mix(run, points=np.linspace(0, 4, 81)):
    """(error, u, gain, cold share) of the best mix of one run at its last step among ``points``."""
    gram, cross, norm2 = run["gram"].numpy(), run["cross"].numpy()[-1], run["norm2"].numpy()[-1]
    k = len(schema.RESPONSE_NAMES)
    best = (np.inf, np.nan, np.nan, np.nan)
    for u in points:
        hat = np.maximum(0, 1 - np.abs(u - np.arange(k)))
        a = np.zeros((2 * k, 2))
        a[:k, 0], a[k:, 1] = hat, hat  # weights = a @ (gain, cold share)
        m, b = a.T @ gram @ a, a.T @ cross
        gc = np.linalg.lstsq(m, b, rcond=None)[0]
        err = np.sqrt(max(gc @ m @ gc - 2 * gc @ b + norm2, 0.0) / norm2)
        if err < best[0]:
            best = (err, u, *gc)
    return best


def head_mix(model, terms):
    """(u, gain, cold share) the model's head gives at the last row of ``terms``."""
    from voxel_ode.model import _gain

    with torch.no_grad():
        hat, log_gain, cold = model._pressure_mix(terms["conditioning"][-1:])
    point = (hat * torch.arange(hat.shape[1])).sum()  # the interpolation's weights sum to 1 around u
    return point.item(), _gain(log_gain).item(), cold.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--heads", type=int, default=4, help="N for restarts and bagging")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--l1", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the per-run errors here (JSON)")
    ap.add_argument("--fit_sizes", type=int, nargs="+", default=None,
                    help="instead of the folds: fit on this many runs, score on 40 held-out runs and the test split")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    norm = Normalizer(json.loads((Path(a.prepped_root) / schema.STATS_FILE).read_text()))
    runs = [mix_fit.pressure_mix_terms(p, norm) for p in mix_fit.train_files(a.prepped_root)]
    if a.fit_sizes:
        return fit_size_scaling(a, runs, norm)
    rng = np.random.default_rng(a.seed)
    fold_of = rng.permutation(len(runs)) % a.folds
    kinds = ("single", f"restarts x{a.heads}", f"bagging x{a.heads}", "floor", "floor at the head's u")
    errors = {k: np.full(len(runs), np.nan) for k in kinds}
    mixes = {}
    t0 = time.time()
    for fold in range(a.folds):
        held = np.flatnonzero(fold_of == fold)
        fit_terms = mix_fit.stack_terms([r for r, f in zip(runs, fold_of) if f != fold])
        test = mix_fit.stack_terms([runs[i] for i in held])
        n_fit = len(runs) - len(held)
        restarts = [fitted_head(fit_terms, 1000 * fold + h, a.iters, a.l1) for h in range(a.heads)]
        bagged = [fitted_head(fit_terms, 1000 * fold + h, a.iters, a.l1,
                              torch.from_numpy(rng.multinomial(n_fit, np.full(n_fit, 1 / n_fit))).double())
                  for h in range(a.heads)]
        errors["single"][held] = last_step_errors(restarts[:1], test)
        errors[kinds[1]][held] = last_step_errors(restarts, test)
        errors[kinds[2]][held] = last_step_errors(bagged, test)
        for i in held:
            head = head_mix(restarts[0], mix_fit.stack_terms([runs[i]]))
            floor = best_mix(runs[i])
            errors["floor"][i], errors["floor at the head's u"][i] = floor[0], best_mix(runs[i], [head[0]])[0]
            mixes[i] = (head, floor[1:])
        print(f"fold {fold + 1}/{a.folds} done ({time.time() - t0:.0f} s)", flush=True)

    print(f"\n{len(runs)} training runs, {a.folds} folds, {a.iters} iterations, L1 {a.l1}: "
          "last-step error of the mix alone on held-out runs")
    print("| mix head(s) | mean | median | 90th pct | max |\n|---|---|---|---|---|")
    for name, e in errors.items():
        print(f"| {name} | {e.mean():.3f} | {np.median(e):.3f} | {np.percentile(e, 90):.3f} | {e.max():.3f} |")
    print("\nper run, worst first: single head's error (u, gain, cold share) | floor's error (u, gain, cold share)")
    names = [p.name.split(".prepped")[0] for p in mix_fit.train_files(a.prepped_root)]
    for i in np.argsort(errors["single"])[::-1]:
        (u, g, c), (bu, bg, bc) = mixes[i]
        print(f"{names[i]} {errors['single'][i]:.3f} ({u:.2f}, {g:.2f}, {c:.2f}) | "
              f"{errors['floor'][i]:.3f} ({bu:.2f}, {bg:.2f}, {bc:.2f})")
    if a.out:
        Path(a.out).write_text(json.dumps({k: v.tolist() for k, v in errors.items()}))


def fit_size_scaling(a, runs, norm, n_held=40, starts=2):
    if len(runs) < n_held + max(a.fit_sizes):
        raise SystemExit(f"--fit_sizes: {len(runs)} training runs, need {n_held} held out + {max(a.fit_sizes)}")
    order = np.random.default_rng(a.seed).permutation(len(runs))
    held, pool = order[:n_held], order[n_held:]
    held_terms = mix_fit.stack_terms([runs[i] for i in held])
    test_files = sorted((Path(a.prepped_root) / "test").glob(f"*{schema.PREPPED_SUFFIX}"))
    test_terms = mix_fit.stack_terms([mix_fit.pressure_mix_terms(p, norm) for p in test_files])
    floor = np.mean([best_mix(runs[i])[0] for i in held])
    print(f"{len(runs)} training runs, {n_held} held out (floor of the mix family on them: {floor:.3f}), "
          f"{len(test_files)} test runs; last-step error of the single head's mix alone")
    print("| fitted on | start | held-out mean | held-out median | test mean | test per run |\n|---|---|---|---|---|---|")
    for n in a.fit_sizes:
        fit_terms = mix_fit.stack_terms([runs[i] for i in pool[:n]])
        for start in range(starts):
            model = fitted_head(fit_terms, start, a.iters, a.l1)
            e_held, e_test = last_step_errors([model], held_terms), last_step_errors([model], test_terms)
            print(f"| {n} | {start} | {e_held.mean():.3f} | {np.median(e_held):.3f} | {e_test.mean():.3f} | "
                  f"{', '.join(f'{e:.3f}' for e in e_test)} |", flush=True)


if __name__ == "__main__":
    main()
