"""Score trained checkpoints on many independent simulations, not just the fidelity benchmark's 5.

The fidelity benchmark tests on the seed's split: 5 runs. One run there moves the mean by
~0.02 (docs/benchmarks.md), so its year-29 figures are not enough to say whether a model
meets a 0.10 target. This script draws N more simulations from the same generator with
another seed (independent of every training run), preps them (N test runs + 5 unused train
runs, because prep computes statistics from a train split; the checkpoints bring their own),
rolls every checkpoint out on them and prints the year-29 relative change errors of P and T
(mean, median, 90th percentile, max over the runs) and the field scalars' +-5 % accuracy; the
first row is the pressure prior alone (prep's linear pressure march, no network).

    python benchmarks/heldout_eval.py --ckpts bench_out/fidelity10/ckpt_default/last.pt \\
        bench_out/fidelity12/ckpt_default/last.pt --out bench_out/heldout40 --n 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # fidelity.make_data


def year29_errors(per_sim: dict, var: str) -> np.ndarray:
    return np.array([s["model"]["grid"][var]["rel_change_err"][-1] for s in per_sim.values()])


def prior_errors(prepped: Path) -> np.ndarray:
    """Year-29 relative change error of the pressure prior itself on every test run."""
    import h5py

    from voxel_ode import schema

    errors = []
    for path in sorted((prepped / "test").glob(f"*{schema.PREPPED_SUFFIX}")):
        with h5py.File(path, "r") as f:
            active = f[schema.PREPPED_STATIC][schema.STATIC_NAMES.index("IsActive")] > 0.5
            pressure = f[schema.PREPPED_OUTPUTS_GRID][:, 0].astype(np.float64)
            prior = f[schema.PREPPED_PRIORS][-1, schema.PRIOR_NAMES.index(schema.PRESSURE_PRIOR_NAMES[0])]
        change = (pressure[-1] - pressure[0])[active]
        predicted = np.sinh(prior.astype(np.float64))[active] * schema.PRESSURE_PRIOR_SCALE_PA
        errors.append(np.linalg.norm(predicted - change) / np.linalg.norm(change))
    return np.array(errors)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpts", nargs="+", required=True)
    ap.add_argument("--out", default="bench_out/heldout40")
    ap.add_argument("--n", type=int, default=40, help="independent test simulations")
    ap.add_argument("--seed", type=int, default=4321, help="the fidelity benchmark's data uses 1234")
    ap.add_argument("--grid", type=int, nargs=3, default=(32, 16, 16))
    a = ap.parse_args(argv)

    from fidelity import make_data
    from voxel_ode.inference.evaluate import evaluate

    out = Path(a.out)
    prepped = make_data(out, a.n + 5, n_test=a.n, grid=tuple(a.grid), seed=a.seed)
    print(f"year 29 on {a.n} independent simulations (seed {a.seed}): relative change error "
          "mean / median / 90th pct / max; field scalars within +-5 % (all steps)\n")
    print("| checkpoint | P | T | scalars +-5 % | NaN |\n|---|---|---|---|---|")
    e = prior_errors(prepped)
    print(f"| pressure prior alone | {e.mean():.3f} / {np.median(e):.3f} / {np.percentile(e, 90):.3f} / {e.max():.3f} "
          "| - | - | - |", flush=True)
    for ckpt in a.ckpts:
        # one folder per checkpoint, named after its last path parts: a later call keeps earlier results
        eval_dir = out / ("eval_" + "_".join(Path(ckpt).with_suffix("").parts[-3:]))
        summary = evaluate(prepped, ckpt, eval_dir, split="test", plots=False, save_predictions=False,
                           xdmf=False, progress=False)
        per_sim = json.loads((eval_dir / "metrics.json").read_text())["per_sim"]
        errors = [year29_errors(per_sim, var) for var in ("Pressure", "Temperature")]
        cells = [f"{e.mean():.3f} / {np.median(e):.3f} / {np.percentile(e, 90):.3f} / {e.max():.3f}" for e in errors]
        bad = not all(np.isfinite(e).all() for e in errors)
        scalars = summary["model"]["acc +/-5% scalars"]["mean"]
        print(f"| {ckpt} | {cells[0]} | {cells[1]} | {scalars:.3f} | {'yes' if bad else 'no'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
