"""Calibration on blocks of cells (the shortcut for grids above calibration.MAX_CELLS active cells),
checked where the cell-by-cell fit is affordable: the open-darts development set without a
description, fitted cell by cell and on blocks; found constants, time, and each held-out
training run's prior-alone year-30 error with the constants each fit found.

    python benchmarks/calibration_blocks.py --blocks 1,1,1 2,1,1 2,2,2 4,2,2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voxel_ode import schema  # noqa: E402
from voxel_ode.data import calibrate, description, pack  # noqa: E402


def prior_errors(desc, paths) -> list[tuple[float, float]]:
    """Per run, year-30 relative change error of the pressure and the thermal prior alone."""
    out = []
    for path in paths:
        arrays = pack.prepare_arrays(path, desc=desc)
        active = arrays["static"][schema.STATIC_NAMES.index("IsActive")] > 0.5
        grid = arrays["outputs_grid"].astype(np.float64)
        priors = arrays["priors"][-1].astype(np.float64)
        p_change = (grid[-1, 0] - grid[0, 0])[active]
        p_prior = np.sinh(priors[schema.PRIOR_NAMES.index("PressurePrior")])[active] * schema.PRESSURE_PRIOR_SCALE_PA
        t_change = (grid[-1, 1] - grid[0, 1])[active]
        gap = arrays["static"][schema.STATIC_NAMES.index(schema.INJECTION_GAP)][active]
        t_prior = priors[schema.PRIOR_NAMES.index("ThermalPrior")][active] * gap
        out.append((np.linalg.norm(p_prior - p_change) / np.linalg.norm(p_change),
                    np.linalg.norm(t_prior - t_change) / np.linalg.norm(t_change)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "darts-dev" / "data"))
    ap.add_argument("--blocks", nargs="+", default=["1,1,1", "2,1,1", "2,2,2"], help="fz,fy,fx per fit")
    ap.add_argument("--n_test", type=int, default=5, help="the first runs by name: never used")
    ap.add_argument("--heldout", type=int, default=6, help="training runs scored (not the calibration picks)")
    args = ap.parse_args(argv)
    paths = sorted(str(p) for p in Path(args.data).glob("v2.4_*.h5"))
    train = paths[args.n_test:]
    print("| blocks | cells (m) | c_t (1/Pa) | boundary | rock heat | offset K | P / T fit error | s | "
          "held-out prior-alone P / T (per run) |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for spec in args.blocks:
        blocks = tuple(int(v) for v in spec.split(","))
        start = time.process_time()
        desc, report = calibrate.calibrate_description(description.Description(), train, progress=False, blocks=blocks)
        seconds = time.process_time() - start
        if not report["used"]:
            print(f"| {spec} | not used: {report['warnings']} | | | | | | {seconds:.0f} | |")
            continue
        picked = set(report["runs"])
        heldout = [p for p in train if Path(p).name not in picked][:args.heldout]
        errors = np.array(prior_errors(desc, heldout))
        v = {k: q["value"] for k, q in desc.quantities.items()}
        cells = " x ".join(f"{v[k]:.3g}" for k in description.CELL_SIZE_QUANTITIES)
        fit_p = np.mean([r["pressure_error"] for r in report["runs"].values()])
        fit_t = np.mean([r["temperature_error"] or np.nan for r in report["runs"].values()])
        per_run = ", ".join(f"{p:.3f}/{t:.3f}" for p, t in errors)
        print(f"| {spec} | {cells} | {v['TotalCompressibility']:.3g} | {desc.lateral_boundary} x "
              f"{v.get('BoundaryMultiplier', 0):.3g} | {v.get('RockHeatCapacityVolumetric', float('nan')):.3g} | "
              f"{v.get('InjectionTemperatureOffset', float('nan')):+.1f} | {fit_p:.3f} / {fit_t:.3f} | {seconds:.0f} | "
              f"mean {errors[:, 0].mean():.3f} / {errors[:, 1].mean():.3f} ({per_run}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
