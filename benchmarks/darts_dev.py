"""The benchmark of record: open-darts output (../shared/darts-dev/, 30 runs, a simulator voxel-ode
did not write), used as a user would: prep (first 5 runs test), train on a CPU budget, evaluate.

For each description setting (``full``: benchmarks/descriptions/darts-dev.json; ``none``: nothing
declared, so prep infers the permeability unit and the time origin and calibrates the priors'
constants on two training runs; ``uncalibrated``: nothing declared and ``--no_calibration``, so no
priors) and
each model configuration (``default``, ``seed``), prints the last-report table (year 30) of the
model, persistence and the linear baseline, and per test run the relative change error and the
+/-5 bar / +/-5 K accuracy next to persistence's.

    python benchmarks/darts_dev.py --out bench_out/darts --minutes 20
    python benchmarks/darts_dev.py --out bench_out/darts --report      # tables of an earlier run

Trainings run one after another, one thread each, unless --parallel N (N at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "darts-dev" / "data"
DESCRIPTIONS = {"full": REPO / "benchmarks" / "descriptions" / "darts-dev.json", "none": None, "uncalibrated": None}
COMMON = ["--base_channels", "24", "--depth", "4", "--receptive_field_radius", "2", "--batch_size", "4",
          "--lr", "2e-3", "--warmup_steps", "100", "--eval_every", "0", "--eval_max_batches", "5", "--log_every", "50",
          "--ckpt_every", "100000", "--aug_xy_rot", "--aug_flip", "--device", "cpu", "--quiet", "--num_threads", "1"]
CONFIGS = {
    "default": ["--sample_mode", "full", "--rollout_steps", "3", "--rollout_curriculum_steps", "300",
                "--noise_std", "0.0"],
    # the seed's model: patches, its norm, no whole-field path, z-scored steps, no priors
    "seed": ["--sample_mode", "patch", "--norm", "spatial", "--no_global_context", "--delta_norm", "zscore",
             "--no_priors", "--rollout_steps", "1", "--noise_std", "0.01"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/darts", help="working folder (prepped data, checkpoints, results)")
    ap.add_argument("--data", default=str(DATA), help="folder of the open-darts v2.4 files")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per configuration")
    ap.add_argument("--descriptions", nargs="+", default=list(DESCRIPTIONS), choices=list(DESCRIPTIONS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--max_steps", type=int, default=1_000_000, help="training steps per configuration, at most")
    ap.add_argument("--parallel", type=int, default=1, help="trainings at a time (one thread each)")
    ap.add_argument("--runs", nargs="+", default=None, metavar="DESCRIPTION:CONFIG",
                    help="only these pairs (e.g. full:default none:seed) instead of every pair")
    ap.add_argument("--n_test", type=int, default=5, help="test runs (the first by name; the rest train)")
    ap.add_argument("--n_calibration", type=int, default=0,
                    help="runs after the test runs kept aside to calibrate the uncertainty bands (voxel-ode bands)")
    ap.add_argument("--report", action="store_true", help="only print the tables of an earlier run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    runs = [tuple(r.split(":")) for r in args.runs] if args.runs else \
        [(d, c) for d in args.descriptions for c in args.configs]
    args.descriptions = sorted({d for d, _ in runs})
    if not args.report:
        for d in args.descriptions:
            prep_data(Path(args.data), out / f"prepped_{d}", DESCRIPTIONS[d], calibrate=d != "uncalibrated",
                      n_test=args.n_test, n_calibration=args.n_calibration)
        train_all(out, runs, args.minutes, args.parallel, args.max_steps)
        for d, c in runs:
            evaluate_run(out, d, c)
    for d, c in runs:
        print(report(out, d, c))
    return 0


def prep_data(data: Path, prepped: Path, description, calibrate: bool = True, n_test: int = 5,
              n_calibration: int = 0) -> None:
    """prep (once); ``description``: a file, or None for what ``data`` holds (description.json or nothing)."""
    if (prepped / "stats.json").exists():
        return
    cmd = [sys.executable, "-m", "voxel_ode.cli", "prep", "--input_root", str(data), "--out_root", str(prepped),
           "--n_test", str(n_test), "--n_calibration", str(n_calibration)] + (["--description", str(description)] if description else []) + \
        ([] if calibrate else ["--no_calibration"])
    t0 = time.time()
    subprocess.run(cmd, check=True, env=_one_thread())
    print(f"prep {prepped.name}: {time.time() - t0:.0f} s", flush=True)


def train_all(out: Path, runs, minutes: float, parallel: int, max_steps: int = 1_000_000) -> None:
    pending = [r for r in runs if not (out / f"ckpt_{r[0]}_{r[1]}" / "last.pt").exists()]
    while pending:
        batch, pending = pending[:max(parallel, 1)], pending[max(parallel, 1):]
        procs = []
        for d, c in batch:
            cmd = [sys.executable, str(REPO / "scripts" / "train_ddp.py"), "--prepped_root", str(out / f"prepped_{d}"),
                   "--save_dir", str(out / f"ckpt_{d}_{c}"), "--max_steps", str(max_steps), "--time_budget_min",
                   str(minutes), *COMMON, *CONFIGS[c]]
            log = open(out / f"train_{d}_{c}.log", "w")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_one_thread()), log))
        for proc, log in procs:
            if proc.wait() != 0:
                raise SystemExit(f"training failed, see {log.name}")


def evaluate_run(out: Path, d: str, c: str) -> None:
    from voxel_ode.inference.evaluate import evaluate

    evaluate(out / f"prepped_{d}", out / f"ckpt_{d}_{c}" / "last.pt", out / f"eval_{d}_{c}", split="test",
             device="cpu", plots=True, linear_baseline=True)


def report(out: Path, d: str, c: str) -> str:
    """The summary table and the per-run last-report figures of one evaluation."""
    from voxel_ode.inference.evaluate import format_table

    folder = out / f"eval_{d}_{c}"
    metrics = json.loads((folder / "metrics.json").read_text())
    steps = _last_step(out / f"ckpt_{d}_{c}" / "metrics.jsonl")
    lines = [f"\n== description {d}, config {c} ({steps} training steps)", format_table(metrics["summary"]),
             "per test run, last report: rel. change error P / T, acc +/-5 bar, acc +/-5 K (model | persistence)"]
    for run, entry in sorted(metrics["per_sim"].items()):
        model, persist = entry["model"]["grid"], entry["persistence"]["grid"]
        cell = lambda g: (f"{g['Pressure']['rel_change_err'][-1]:.3f} / {g['Temperature']['rel_change_err'][-1]:.3f}, "  # noqa: E731
                          f"{g['Pressure']['acc_abs'][-1]:.3f}, {g['Temperature']['acc_abs'][-1]:.3f}")
        lines.append(f"  {Path(run).name}: {cell(model)} | {cell(persist)}")
    return "\n".join(lines)


def _last_step(path: Path) -> int:
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps) if steps else 0


def _one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


if __name__ == "__main__":
    sys.exit(main())
