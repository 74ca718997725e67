"""Uncertainty bands scored over many calibration / test splits of the same held-out runs.

`voxel-ode bands` + `evaluate` score one split: 5 calibration runs, 5 test runs. A run's pressure
error is nearly one offset of its whole field and its size varies from run to run by ~1.8x (one
standard deviation of its log, on every set measured), so the coverage of 5 test runs moves with
which runs they are. This script rolls out every run of one prepped folder that the checkpoint
never trained on (default test/), once, then for each split fits the bands on ``--n_calibration``
of them (``bands.fit``, the code `voxel-ode bands` runs) and scores them on the others
(``evaluate.band_scores`` and ``summarize_bands``, the code `evaluate` runs). The first split is
the fixed protocol (the last runs by name calibrate, the first are the test runs); the others are
drawn with ``--seed``.

    python benchmarks/bands_splits.py --prepped_root bench_out/d13/prepped_full \\
        --ckpt_path bench_out/d13/ckpt_full_default/best_step594.pt --splits 12 --out bench_out/bands_dd.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxel_ode import schema  # noqa: E402
from voxel_ode.data import prepped  # noqa: E402
from voxel_ode.inference import bands, evaluate  # noqa: E402
from voxel_ode.inference.rollout import ModelStepper, run_stepper  # noqa: E402
from voxel_ode.model import checkpoint, precision  # noqa: E402
from voxel_ode.utils import plain_json  # noqa: E402

VARIABLES = ("Pressure", "Temperature", "scalars")
TARGET = (0.85, 0.95)


def roll_out(prepped_root: Path, ckpt_path, folder: str, amp: str, stats_path=None) -> list[dict]:
    model, normalizer, stats, _ = checkpoint.load_for_inference(ckpt_path, stats_path, "cpu")
    trained = {Path(p).name for p in stats.get("train_sims") or []}
    paths = sorted((prepped_root / folder).glob("*" + schema.PREPPED_SUFFIX))
    if any(p.name in trained for p in paths):
        raise SystemExit(f"{prepped_root / folder}: runs the checkpoint trained on")
    stepper = ModelStepper(model, normalizer, device="cpu", precision=precision.choose(amp, "cpu"))
    runs = []
    for path in tqdm(paths, desc="rollouts"):
        sim = prepped.load_prepped_sim(path)
        grid, scalar = run_stepper(stepper, sim, progress=False)
        grid_run, scalar_run = bands.rolled_out(sim, grid, scalar)
        runs.append({"name": path.name, "sim": sim, "grid": grid, "scalar": scalar, "grid_run": grid_run,
                     "scalar_run": scalar_run})
    return runs


def score_split(runs: list[dict], calibration: list[int], coverage: float) -> dict:
    """{variable: {"coverage", "width_over_rms": {"last", "mean"}}, "held_out": bands' own left-out
    estimate} of the bands fitted on the runs ``calibration``, scored on the others."""
    cal = [runs[i] for i in calibration]
    fitted = {**bands.fit([r["grid_run"] for r in cal], [r["scalar_run"] for r in cal], coverage),
              "coverage": coverage}
    per_sim = {r["name"]: evaluate.band_scores(fitted, r["sim"], r["grid"], r["scalar"])[1]
               for i, r in enumerate(runs) if i not in calibration}
    summary = evaluate.summarize_bands(per_sim)
    return {**{v: summary[v] for v in VARIABLES if v in summary}, "held_out": fitted["held_out_coverage"],
            "weights": {v: fitted["grid"][v]["weights"] for v in schema.DYNAMIC_NAMES},
            "run_factor": {v: fitted["grid"][v]["run_factor"] for v in schema.DYNAMIC_NAMES},
            "calibration": [runs[i]["name"] for i in calibration]}


def draw_splits(n_runs: int, n_calibration: int, count: int, seed: int) -> list[list[int]]:
    splits = [list(range(n_runs - n_calibration, n_runs))]  # the fixed protocol first
    rng = np.random.default_rng(seed)
    while len(splits) < count:
        split = sorted(int(i) for i in rng.choice(n_runs, n_calibration, replace=False))
        if split not in splits:
            splits.append(split)
    return splits


def report(results: list[dict]) -> str:
    head = ("| band | fixed split: coverage year 30 / mean | width/RMS year 30 / mean | over the splits: "
            "coverage year 30, mean +/- sd (min) | coverage mean over years | splits in [0.85, 0.95] "
            "(year 30 and mean) | width/RMS year 30, median |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for v in VARIABLES:
        if v not in results[0]:
            continue
        last = np.array([r[v]["coverage"]["last"] for r in results])
        mean = np.array([r[v]["coverage"]["mean"] for r in results])
        width = np.array([r[v]["width_over_rms"]["last"] for r in results])
        fixed = results[0][v]
        inside = np.mean((last >= TARGET[0]) & (last <= TARGET[1]) & (mean >= TARGET[0]) & (mean <= TARGET[1]))
        lines.append(f"| {v} | {fixed['coverage']['last']:.3f} / {fixed['coverage']['mean']:.3f} | "
                     f"{fixed['width_over_rms']['last']:.2f} / {fixed['width_over_rms']['mean']:.2f} | "
                     f"{last.mean():.3f} +/- {last.std():.3f} ({last.min():.3f}) | "
                     f"{mean.mean():.3f} +/- {mean.std():.3f} ({mean.min():.3f}) | {inside:.2f} | "
                     f"{np.median(width):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", required=True)
    ap.add_argument("--ckpt_path", required=True)
    ap.add_argument("--folder", default="test", help="the prepped runs to split (never trained on)")
    ap.add_argument("--n_calibration", type=int, default=5)
    ap.add_argument("--splits", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coverage", type=float, default=bands.DEFAULT_COVERAGE)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--out", help="JSON of every split's figures")
    ap.add_argument("--stats_path", help="a stats.json agreeing with the checkpoint's (e.g. the prepped root's, re-run)")
    args = ap.parse_args(argv)
    runs = roll_out(Path(args.prepped_root), args.ckpt_path, args.folder, args.amp, args.stats_path)
    if len(runs) <= args.n_calibration:
        raise SystemExit(f"{len(runs)} runs: need more than --n_calibration {args.n_calibration}")
    results = [score_split(runs, split, args.coverage)
               for split in tqdm(draw_splits(len(runs), args.n_calibration, args.splits, args.seed), desc="splits")]
    print(report(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(plain_json(results), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
