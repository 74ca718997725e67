"""A forecast's t = 0 field scalars against the simulator's report (data/start_scalars.py).

For each set: prep's fit on its training runs (every run after the first N_TEST by name), then
each test run's first report against the estimate a forecast of its inputs alone makes (its
Output/ deleted): with the fit, and with the fallback (prescribed rates, c_w (T - 273.15) in W).

    OMP_NUM_THREADS=1 python benchmarks/forecast_start.py \\
        --set darts-dev=../shared/darts-dev/data:benchmarks/descriptions/darts-dev.json \\
        --set set3=bench_out/conventions/set3/raw
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxel_ode import schema  # noqa: E402
from voxel_ode.data import description, pack, start_scalars  # noqa: E402

N_TEST = 10
COLUMNS = ("FieldEnergyInjectionRate", "FieldEnergyProductionRate", "FieldWaterInjectionRate",
           "FieldWaterProductionRate")


def forecast_start(path: Path, desc, scratch: Path, record) -> tuple[np.ndarray, np.ndarray]:
    """(estimate with ``record``, estimate without a fit) of the run's t = 0 scalars from its inputs alone."""
    copy = scratch / path.name
    shutil.copy(path, copy)
    with h5py.File(copy, "a") as f:
        del f[schema.OUTPUT_GROUP]
    sim = pack.prepare_forecast(copy, desc, 2)
    copy.unlink()
    delivered = None if sim["delivered_rates"] is None else sim["delivered_rates"][0]
    return start_scalars.estimate(sim["static"], record, delivered), start_scalars.estimate(sim["static"])


def score_set(raw: Path, desc_path: Path, n_test: int) -> dict:
    desc = description.load(desc_path)
    runs = sorted(raw.glob("*.h5"))
    test, train = runs[:n_test], runs[n_test:]
    record = start_scalars.fit([pack.scan_sim(str(p), desc=desc)[1]["start"] for p in train])
    index = [schema.SCALAR_NAMES.index(n) for n in COLUMNS]
    errors = {"fit": [], "no fit": []}
    with tempfile.TemporaryDirectory() as scratch:
        for path in test:
            truth = pack.prepare_arrays(str(path), desc=desc)["outputs_scalar"][0][index]
            fitted, plain = forecast_start(path, desc, Path(scratch), record)
            errors["fit"].append(np.abs(fitted[index] / truth - 1.0))
            errors["no fit"].append(np.abs(plain[index] / truth - 1.0))
    return {"record": record, **{k: np.array(v) for k, v in errors.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", required=True, metavar="NAME=RAW_DIR[:DESCRIPTION]",
                    help="a set of raw runs (description: RAW_DIR/description.json unless given)")
    ap.add_argument("--n_test", type=int, default=N_TEST)
    args = ap.parse_args(argv)
    print("| set | water rates (training error prescribed / delivered) | enthalpy form (left-out error) | "
          "relative error, mean (max) over test runs: " + ", ".join(COLUMNS) + " | without the fit |")
    print("|---|---|---|---|---|")
    for entry in args.set:
        name, _, rest = entry.partition("=")
        raw, _, desc = rest.partition(":")
        result = score_set(Path(raw), Path(desc) if desc else Path(raw) / "description.json", args.n_test)
        r = result["record"]
        cells = lambda e: ", ".join(f"{m:.3f} ({x:.3f})" for m, x in zip(e.mean(0), e.max(0)))  # noqa: E731
        water = r.get("water_rate_relative_error", {})
        print(f"| {name} | {r.get('water_rates', 'prescribed')} ({water.get('prescribed', float('nan')):.3f} / "
              f"{water.get('delivered', float('nan')):.3f}) | {r['form']} ({r['left_out_relative_error']:.4f}) | "
              f"{cells(result['fit'])} | {cells(result['no fit'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
