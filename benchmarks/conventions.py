"""Simulator conventions nobody tuned for: open-darts sets drawn at random from wide ranges.

Each set draws, from ``--seed`` (fixed before any result was looked at), a grid, cell sizes
(dx = dy 20-100 m, dz 2-20 m), a total injection rate range within 5-100 kg/s, the lateral
boundary (closed, or side cells with 10-10,000x pore volume), the permeability unit (mD or m2),
the time origin (Output[0] = the initial state, or the end of year 1) and a random ParamsScalar
order; then makes ``--runs`` open-darts runs in those conventions (``voxel-ode synth --engine
darts``, which writes the matching description.json) and runs the development set's protocol on
them (benchmarks/darts_dev.py: prep with the first ``--n_test`` runs as test, train the default
configuration, evaluate) with the description ("full") and without it ("none": prep infers and
calibrates).

    python benchmarks/conventions.py draw                                   # print the sets
    python benchmarks/conventions.py make --python /path/to/venv-with-open-darts/bin/python --workers 2
    python benchmarks/conventions.py run --max_steps 594 --minutes 60
    python benchmarks/conventions.py report
    python benchmarks/conventions.py run --sets 5 --only 3 4 --into bench_out/conv8   # new code, beside the old

Everything goes under ``--out`` (default bench_out/conventions/set<k>/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darts_dev  # noqa: E402  (the development set's protocol: prep, train, evaluate, report)

SEED = 20261207  # fixed on Dec 7 2026 before any set was made or scored
N_SETS, N_RUNS, N_TEST = 3, 25, 10
GRID = {"Z": (24, 48), "Y": (12, 24), "X": (14, 28)}  # cells; the development set is 48 x 20 x 24
CELL_XY, CELL_Z = (20.0, 100.0), (2.0, 20.0)  # m
RATE = (5.0, 100.0)  # kg/s, total injection
MULTIPLIER = (10.0, 10_000.0)  # side cells' pore volume; drawn log-uniform, or a closed box


def draw_set(rng: np.random.Generator) -> dict:
    """One set of conventions (what synth --engine darts takes as flags)."""
    grid = [int(rng.integers(lo, hi + 1)) for lo, hi in GRID.values()]
    dx = float(np.round(rng.uniform(*CELL_XY), 1))
    low = float(np.round(rng.uniform(RATE[0], 60.0), 1))
    high = float(np.round(min(RATE[1], low + rng.uniform(10.0, 40.0)), 1))
    closed = bool(rng.random() < 0.3)
    return {
        "grid": grid, "cell_size": [dx, dx, float(np.round(rng.uniform(*CELL_Z), 1))],
        "injection_rate": [low, high],
        "lateral_boundary": "closed" if closed else "pore_volume",
        "boundary_multiplier": None if closed else float(np.round(np.exp(rng.uniform(*np.log(MULTIPLIER))), 0)),
        "perm_unit": str(rng.choice(["mD", "m2"])), "first_report": str(rng.choice(["year1", "initial"])),
    }


def draw_sets(seed: int = SEED, n: int = N_SETS) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"seed": seed + 1 + k, **draw_set(rng)} for k in range(n)]


def synth_flags(s: dict) -> list[str]:
    flags = ["--grid", *map(str, s["grid"]), "--seed", str(s["seed"]), "--cell_size", *map(str, s["cell_size"]),
             "--injection_rate", *map(str, s["injection_rate"]), "--lateral_boundary", s["lateral_boundary"],
             "--perm_unit", s["perm_unit"], "--first_report", s["first_report"], "--params_order", "random"]
    if s["boundary_multiplier"] is not None:
        flags += ["--boundary_multiplier", str(s["boundary_multiplier"])]
    return flags


def make(out: Path, sets: list[dict], python: str, workers: int, runs: int, only=None) -> None:
    """The runs of every set (or of the sets ``only``; kept where finished) and a copy of each set
    without its description."""
    for k, s in enumerate(sets):
        if only is not None and k not in only:
            continue
        folder = out / f"set{k}"
        raw = folder / "raw"
        if not (raw / "description.json").exists() or len(list(raw.glob("v2.4_*.h5"))) < runs:
            t0 = time.time()
            subprocess.run([python, "-m", "voxel_ode.cli", "synth", "--engine", "darts", "--out", str(raw), "--n",
                            str(runs), "--n_steps", "30", "--workers", str(workers), "--overwrite", *synth_flags(s)],
                           check=True, env=darts_dev._one_thread())
            print(f"set{k}: {runs} runs in {time.time() - t0:.0f} s", flush=True)
        bare = folder / "raw_bare"  # the same files, nothing declared
        bare.mkdir(exist_ok=True)
        for f in raw.glob("v2.4_*.h5"):
            if not (bare / f.name).exists():
                (bare / f.name).symlink_to(f.resolve())
        (folder / "conventions.json").write_text(json.dumps(s, indent=1) + "\n")


def run(out: Path, sets: list[dict], minutes: float, max_steps: int, parallel: int, n_test: int,
        descriptions=("full", "none"), only=None, into: Path | None = None) -> None:
    """The protocol on the sets ``only`` (all by default), their runs read from ``out``, results
    written under ``into`` (default ``out``: a re-run of new code beside the old results)."""
    for k, _ in enumerate(sets):
        if only is not None and k not in only:
            continue
        folder = (into or out) / f"set{k}"
        folder.mkdir(parents=True, exist_ok=True)
        raws = {"full": out / f"set{k}" / "raw", "none": out / f"set{k}" / "raw_bare"}
        for d in descriptions:
            darts_dev.prep_data(raws[d], folder / f"prepped_{d}", None, n_test=n_test)
        runs = [(d, "default") for d in descriptions]
        darts_dev.train_all(folder, runs, minutes, parallel, max_steps)
        for d, c in runs:
            if not (folder / f"eval_{d}_{c}" / "metrics.json").exists():
                darts_dev.evaluate_run(folder, d, c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("draw", "make", "run", "report"))
    ap.add_argument("--out", default="bench_out/conventions")
    ap.add_argument("--seed", type=int, default=SEED, help="draws the sets (fixed before looking at results)")
    ap.add_argument("--sets", type=int, default=N_SETS)
    ap.add_argument("--runs", type=int, default=N_RUNS, help="open-darts runs per set")
    ap.add_argument("--n_test", type=int, default=N_TEST, help="test runs per set (first by name)")
    ap.add_argument("--python", default=sys.executable, help="a Python with open-darts (make)")
    ap.add_argument("--workers", type=int, default=1, help="open-darts runs at a time (make)")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per configuration (run)")
    ap.add_argument("--max_steps", type=int, default=594, help="training steps per configuration (run)")
    ap.add_argument("--parallel", type=int, default=1, help="trainings at a time (run)")
    ap.add_argument("--descriptions", nargs="+", default=["full", "none"], choices=["full", "none"],
                    help="with the set's description, without it, or both (run)")
    ap.add_argument("--only", type=int, nargs="+", help="these sets only, by number (make, run, report)")
    ap.add_argument("--into", help="results folder (run, report; default --out, where the runs are)")
    args = ap.parse_args(argv)
    into = Path(args.into) if args.into else None
    out, sets = Path(args.out), draw_sets(args.seed, args.sets)
    if args.step == "draw":
        print(json.dumps(sets, indent=1))
    elif args.step == "make":
        make(out, sets, args.python, args.workers, args.runs, args.only)
    elif args.step == "run":
        run(out, sets, args.minutes, args.max_steps, args.parallel, args.n_test, args.descriptions, args.only, into)
    else:
        for k, s in enumerate(sets):
            if args.only is not None and k not in args.only:
                continue
            print(f"\n#### set{k}: {json.dumps(s)}")
            for d in ("full", "none"):
                if ((into or out) / f"set{k}" / f"eval_{d}_default" / "metrics.json").exists():
                    print(darts_dev.report((into or out) / f"set{k}", d, "default"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
