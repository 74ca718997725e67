"""Fidelity benchmark: does the trained surrogate predict what the simulator does?

A fixed synthetic dataset (seed 1234, 40 train + 5 test simulations, the seed's
split) and a fixed CPU budget per trained configuration. On the 5 test
simulations it reports, at the last step and averaged over steps, the relative
error of the change since t=0 (persistence = 1.0 exactly), accuracy within
+/-5 bar / +/-5 K, the seed's +/-5 % accuracy and the normalized MSE, for:

  persistence   the state never changes
  linear        per-voxel ridge least squares on the model inputs + 26 params
  seed          the seed's configuration: purely local model, spatial norm,
                pooled z-score targets, one-step training on patches (it shares
                this version's inputs: pressure-change channel, time feature,
                scalar targets as ratios)
  default       this project's defaults: whole-field path, per-voxel norm,
                robust (asinh) change targets, pressure from the pressure prior and
                temperature from the thermal prior (a linear pressure march and a linear
                heat-transport solve in prep; a network residual on pressure only),
                rollout training on whole grids

The two trained configurations run at the same time, one core each
(torch.set_num_threads(1)), so each gets the same CPU budget.

    python benchmarks/fidelity.py --out bench_out/fidelity --minutes 60

--steps N trains a fixed number of steps instead (to compare runs made when the machine was
busier or idler, or a change that costs time per step).
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
sys.path.insert(0, str(REPO))

CONFIGS = {
    "seed": ["--sample_mode", "patch", "--norm", "spatial", "--no_global_context", "--delta_norm", "zscore",
             "--no_priors",
             "--rollout_steps", "1", "--noise_std", "0.01"],
    "default": ["--sample_mode", "full", "--rollout_steps", "3", "--rollout_curriculum_steps", "300",
                "--noise_std", "0.0"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/fidelity")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per configuration")
    ap.add_argument("--steps", type=int, default=0,
                    help="train this many steps instead of --minutes (compares runs on machines of different speed)")
    ap.add_argument("--n_sims", type=int, default=45)
    ap.add_argument("--grid", type=int, nargs=3, default=(32, 16, 16))
    ap.add_argument("--base_channels", type=int, default=24)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--report", action="store_true", help="only print the table of an earlier run's fidelity.json")
    args = ap.parse_args()
    if args.report:
        print(markdown_table(json.loads((Path(args.out) / "fidelity.json").read_text())))
        return 0

    from voxel_ode.inference.evaluate import evaluate, format_table

    out = Path(args.out)
    prepped = make_data(out, args.n_sims, n_test=5, grid=tuple(args.grid), seed=1234)

    procs = {}
    if args.steps > 0:
        budget = ["--max_steps", str(args.steps), "--time_budget_min", "0"]
    else:
        budget = ["--max_steps", "1000000", "--time_budget_min", str(args.minutes)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in args.configs:
        cmd = [sys.executable, str(REPO / "scripts" / "train_ddp.py"), "--prepped_root", str(prepped),
               "--save_dir", str(out / f"ckpt_{name}"), "--base_channels", str(args.base_channels),
               "--depth", str(args.depth), "--receptive_field_radius", "2", "--batch_size", "4",
               "--lr", "2e-3", "--warmup_steps", "100", "--eval_every", "500",
               "--log_every", "100", "--ckpt_every", "100000", "--aug_xy_rot", "--aug_flip",
               *budget, "--device", "cpu", "--quiet", *CONFIGS[name]]
        log = open(out / f"train_{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print("started:", " ".join(cmd), flush=True)
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            print(f"training {name} failed, see {log.name}")
            return 1

    results = {}
    for name in args.configs:
        ckpt = out / f"ckpt_{name}" / "last.pt"  # not best_step*: that one is chosen on the test split
        summary = evaluate(prepped, ckpt, out / f"eval_{name}", split="test", device="cpu", plots=True,
                           linear_baseline=(name == args.configs[0]))
        results[name] = summary
        print(f"\n== {name} ({ckpt})\n{format_table(summary)}", flush=True)

    table = {"persistence": results[args.configs[0]]["persistence"]}
    if "linear" in results[args.configs[0]]:
        table["linear"] = results[args.configs[0]]["linear"]
    for name in args.configs:
        table[name] = results[name]["model"]
    (out / "fidelity.json").write_text(json.dumps(table, indent=2))
    print("\n" + markdown_table(table))
    return 0


def make_data(out: Path, n_sims: int, n_test: int, grid, seed: int) -> Path:
    """Synthesize ``out/raw`` and prep it into ``out/prepped`` (the first ``n_test`` runs -> test),
    unless a prepped set is already there; returns the prepped folder."""
    from voxel_ode.data.prep import prep
    from voxel_ode.synth.voxel import generate_dataset

    raw, prepped = out / "raw", out / "prepped"
    if not (prepped / "stats.json").exists():
        t0 = time.time()
        generate_dataset(raw, n_sims, grid=grid, seed=seed, workers=2)
        print(f"synth: {time.time() - t0:.0f} s", flush=True)
        # patches of half the grid's depth for the seed's patch training (stride = half a patch)
        patch = (grid[0] // 2, grid[1], grid[2])
        stride = (max(1, patch[0] // 2), grid[1], grid[2])
        prep(raw, prepped, patch_size=patch, stride=stride, n_test=n_test, min_active_frac=0.05, workers=2)
    return prepped


def markdown_table(table: dict) -> str:
    methods = list(table)
    metrics = list(next(iter(table.values())))
    lines = ["| metric | " + " | ".join(f"{m} (last / mean)" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for metric in metrics:
        cells = []
        for m in methods:
            v = table[m].get(metric) or {}
            cells.append(" / ".join("-" if v.get(k) is None else f"{v[k]:.3g}" for k in ("last", "mean")))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
