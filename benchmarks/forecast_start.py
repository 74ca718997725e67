"""A forecast's t = 0 field scalars against the simulator's report (data/start_scalars.py).

For each set: prep's fit on its training runs (every run after the first N_TEST by name), then
each test run's first report against the estimate a forecast of its inputs alone makes (its
Output/ deleted): with the fit, and with the fallback (prescribed rates, c_w (T - 273.15) in W).
With ``--ckpt NAME=CKPT[@STATS]`` each test run is also forecast from its inputs alone by that
model (bf16 where the CPU runs it fast) with either start, and its energy produced by the last
report and its mean energy rates compared with the simulator's.

    OMP_NUM_THREADS=1 python benchmarks/forecast_start.py \\
        --set darts-dev=../shared/darts-dev/data:benchmarks/descriptions/darts-dev.json \\
        --set set3=bench_out/conventions/set3/raw --ckpt set3=CKPT@PREPPED/stats.json
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

from voxel_ode import schema
from voxel_ode.data import description, pack, start_scalars

N_TEST = 10
COLUMNS = ("FieldEnergyInjectionRate", "FieldEnergyProductionRate", "FieldWaterInjectionRate",
           "FieldWaterProductionRate")


def inputs_only(path: Path, desc, scratch: Path, n_reports: int) -> dict:
    """The forecast start of the run's inputs alone (pack.prepare_forecast of a copy without Output/)."""
    copy = scratch / path.name
    shutil.copy(path, copy)
    with h5py.File(copy, "a") as f:
        del f[schema.OUTPUT_GROUP]
    sim = pack.prepare_forecast(copy, desc, n_reports)
    copy.unlink()
    return sim


def forecast_energy(model, sim, record, truth) -> list[float]:
    """[relative error of the energy produced by the last report, mean |relative error| of the
    produced and of the injected energy rate over the reports] of a forecast started by ``record``."""
    from voxel_ode.inference.rollout import ModelStepper, run_stepper

    stepper = ModelStepper(model["model"], model["normalizer"], precision=model["precision"])
    stepper.start_enthalpy = record
    _, scalar = run_stepper(stepper, sim if record else {k: v for k, v in sim.items() if k != "delivered_rates"},
                            progress=False)
    out = [scalar[-1, 2] / truth[-1, 2] - 1.0]
    for name in ("FieldEnergyProductionRate", "FieldEnergyInjectionRate"):
        i = schema.SCALAR_NAMES.index(name)
        out.append(float(np.mean(np.abs(scalar[1:, i] / truth[1:, i] - 1.0))))
    return out


def score_set(raw: Path, desc_path: Path, n_test: int, ckpt=None) -> dict:
    desc = description.load(desc_path)
    runs = sorted(raw.glob("*.h5"))
    test, train = runs[:n_test], runs[n_test:]
    record = start_scalars.fit([pack.scan_sim(str(p), desc=desc)[1]["start"] for p in train])
    model = None
    if ckpt:
        from voxel_ode.model import checkpoint, precision

        path, _, stats = ckpt.partition("@")
        net, normalizer, _, _ = checkpoint.load_for_inference(path, stats or None)
        model = {"model": net, "normalizer": normalizer, "precision": precision.choose("auto", "cpu")}
    index = [schema.SCALAR_NAMES.index(n) for n in COLUMNS]
    errors = {"fit": [], "no fit": [], "forecast fit": [], "forecast no fit": []}
    with tempfile.TemporaryDirectory() as scratch:
        for path in test:
            truth = pack.prepare_arrays(str(path), desc=desc)["outputs_scalar"]
            sim = inputs_only(path, desc, Path(scratch), len(truth))
            fitted = start_scalars.estimate(sim["static"], record, sim["delivered_rates"])
            plain = start_scalars.estimate(sim["static"])
            errors["fit"].append(np.abs(fitted[index] / truth[0][index] - 1.0))
            errors["no fit"].append(np.abs(plain[index] / truth[0][index] - 1.0))
            if model:
                errors["forecast fit"].append(forecast_energy(model, sim, record, truth))
                errors["forecast no fit"].append(forecast_energy(model, sim, None, truth))
    return {"record": record, **{k: np.array(v) for k, v in errors.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", required=True, metavar="NAME=RAW_DIR[:DESCRIPTION]",
                    help="a set of raw runs (description: RAW_DIR/description.json unless given)")
    ap.add_argument("--n_test", type=int, default=N_TEST)
    ap.add_argument("--ckpt", action="append", default=[], metavar="NAME=CKPT[@STATS]",
                    help="also forecast the set's test runs with this checkpoint (STATS: a stats.json agreeing with it)")
    args = ap.parse_args(argv)
    print("| set | water rates (training error prescribed / delivered / none) | enthalpy form (left-out error) | "
          "relative error, mean (max) over test runs: " + ", ".join(COLUMNS) + " | without the fit |")
    print("|---|---|---|---|---|")
    ckpts = dict(c.split("=", 1) for c in args.ckpt)
    forecasts = []
    for entry in args.set:
        name, _, rest = entry.partition("=")
        raw, _, desc = rest.partition(":")
        result = score_set(Path(raw), Path(desc) if desc else Path(raw) / "description.json", args.n_test,
                           ckpts.get(name))
        if ckpts.get(name):
            forecasts.append((name, result))
        r = result["record"]
        cells = lambda e: ", ".join(f"{m:.3f} ({x:.3f})" for m, x in zip(e.mean(0), e.max(0)))
        water = r.get("water_rate_relative_error", {})
        print(f"| {name} | {r.get('water_rates', 'prescribed')} ("
              + " / ".join(f"{water.get(k, float('nan')):.3f}" for k in ("prescribed", "delivered", "none"))
              + f") | {r['form']} ({r.get('left_out_relative_error', float('nan')):.4f}) | "
              f"{cells(result['fit'])} | {cells(result['no fit'])} |", flush=True)
    if forecasts:
        print("\n| set | forecast from the inputs alone | energy produced by the last report, rel. error mean "
              "(max abs) | produced energy rate, mean abs rel. error | injected energy rate |\n|---|---|---|---|---|")
    for name, result in forecasts:
        for label in ("forecast fit", "forecast no fit"):
            e = result[label]
            print(f"| {name} | {'fitted start' if label == 'forecast fit' else 'fallback start'} | "
                  f"{e[:, 0].mean():+.3f} ({np.abs(e[:, 0]).max():.3f}) | {e[:, 1].mean():.3f} | {e[:, 2].mean():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
