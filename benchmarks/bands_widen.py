"""Do the uncertainty bands widen on runs unlike the training runs? Forecasts (Input/ only) of raw
runs with every well's rate scaled by each --factors value (1 = as simulated; 2, 3 lie outside the
training runs' range of total injection), rolled out with the checkpoint's bands: per run and
factor, at the last year, the mean band width over active cells and its ratio to the mean
predicted change since t = 0, for P and T. No truth exists for the scaled runs, so this measures
only whether the band grows faster than the prediction (it should where the model extrapolates).
With --simulated, the same scaled runs simulated by open-darts (``voxel-ode synth --engine darts
--base RUN.h5 --plan plan.csv`` with rows ``x<factor>,<factor>`` of columns ``name,scale_rates``,
one folder per run, in --runs' order) are predicted as well, with their truth: the band's coverage
and the RMS error at the last year, next to the width.

    python benchmarks/bands_widen.py --ckpt bench_out/bands/ckpt_full_default/last.pt \\
        --runs ../shared/darts-dev/data/v2.4_0000.h5 ../shared/darts-dev/data/v2.4_0001.h5 --factors 1 2 3 \
        [--simulated bench_out/widen/run0000 bench_out/widen/run0001]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import h5py  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voxel_ode import schema  # noqa: E402
from voxel_ode.inference.predict import predict_file  # noqa: E402


def scaled_forecast(src: Path, dst: Path, factor: float) -> Path:
    """``src`` with its Output/ removed and Input/InjRate times ``factor``."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f[schema.OUTPUT_GROUP]
        rate = f[f"{schema.INPUT_GROUP}/InjRate"]
        rate[...] = rate[()] * factor
    return dst


def widths(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        active = f["static/IsActive"][()] > 0
        grid = f["predicted/outputs_grid"][()]
        width = f["predicted/band_width"][-1][:, active]
        out_of_range = json.loads(f.attrs["out_of_range"])
    change = np.abs(grid[-1][:, active] - grid[0][:, active])
    return {var: {"width": float(width[c].mean()), "change": float(change[c].mean()),
                  "width_over_change": float(width[c].mean() / max(change[c].mean(), 1e-12))}
            for c, var in enumerate(schema.DYNAMIC_NAMES)} | {"out_of_range": len(out_of_range)}


def against_truth(path: Path, truth_path: Path, ckpt) -> dict:
    """Coverage of the band and RMS error at the last step, per variable, of the predictions file
    ``path`` of the simulated run ``truth_path`` (read as the checkpoint's data was prepared)."""
    from voxel_ode.inference.rollout import load_sim
    from voxel_ode.model.checkpoint import load_for_inference

    truth = load_sim(truth_path, desc=load_for_inference(ckpt, None, "cpu")[2].description)["outputs_grid"][-1]
    with h5py.File(path, "r") as f:
        active = f["static/IsActive"][()] > 0
        pred, true = f["predicted/outputs_grid"][-1][:, active], truth[:, active]
        low, high = f["predicted/band_low"][-1][:, active], f["predicted/band_high"][-1][:, active]
    return {var: {"coverage": float(np.mean((low[c] <= true[c]) & (true[c] <= high[c]))),
                  "rms_error": float(np.sqrt(np.mean((pred[c] - true[c]) ** 2))),
                  "width": float(np.mean(high[c] - low[c]))} for c, var in enumerate(schema.DYNAMIC_NAMES)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint with a bands file next to it")
    ap.add_argument("--runs", nargs="+", required=True, help="raw v2.4 files (the test runs)")
    ap.add_argument("--factors", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    ap.add_argument("--simulated", nargs="+", type=Path, default=None,
                    help="per run, a folder of its scaled runs simulated (x<factor>.h5)")
    args = ap.parse_args(argv)
    print(f"{'run':<14}{'factor':>7}{'P width (bar)':>15}{'P width/change':>16}{'T width (K)':>13}"
          f"{'T width/change':>16}{'inputs out of range':>21}")
    with tempfile.TemporaryDirectory() as tmp:
        for run in map(Path, args.runs):
            for factor in args.factors:
                src = scaled_forecast(run, Path(tmp) / f"{run.stem}_x{factor:g}.h5", factor)
                pred = predict_file(args.ckpt, src, Path(tmp) / "pred.h5", device="cpu", progress=False,
                                    xdmf=False)
                w = widths(pred)
                print(f"{run.stem:<14}{factor:>7g}{w['Pressure']['width'] / 1e5:>15.3f}"
                      f"{w['Pressure']['width_over_change']:>16.3f}{w['Temperature']['width']:>13.3f}"
                      f"{w['Temperature']['width_over_change']:>16.3f}{w['out_of_range']:>21d}", flush=True)
        for run, folder in zip(args.runs, args.simulated or []):
            for factor in args.factors:
                truth = folder / f"x{factor:g}.h5"
                if not truth.exists():
                    continue
                r = against_truth(predict_file(args.ckpt, truth, Path(tmp) / "pred.h5", device="cpu",
                                               progress=False, xdmf=False), truth, args.ckpt)
                print(f"simulated {Path(run).stem} x{factor:g}: " + "; ".join(
                    f"{v[0]} coverage {r[v]['coverage']:.3f}, width {r[v]['width'] / u:.3g}, RMS error "
                    f"{r[v]['rms_error'] / u:.3g} {unit}" for v, u, unit in (("Pressure", 1e5, "bar"),
                                                                        ("Temperature", 1.0, "K"))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
