"""Do the uncertainty bands widen on runs unlike the training runs? Forecasts (Input/ only) of raw
runs with every well's rate scaled by each --factors value (1 = as simulated; 2, 3 lie outside the
training runs' range of total injection), rolled out with the checkpoint's bands: per run and
factor, at the last year, the mean band width over active cells and its ratio to the mean
predicted change since t = 0, for P and T. No truth exists for the scaled runs, so this measures
only whether the band grows faster than the prediction (it should where the model extrapolates).

    python benchmarks/bands_widen.py --ckpt bench_out/bands/ckpt_full_default/last.pt \\
        --runs ../shared/darts-dev/data/v2.4_0000.h5 ../shared/darts-dev/data/v2.4_0001.h5 --factors 1 2 3
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint with a bands file next to it")
    ap.add_argument("--runs", nargs="+", required=True, help="raw v2.4 files (the test runs)")
    ap.add_argument("--factors", nargs="+", type=float, default=[1.0, 2.0, 3.0])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
