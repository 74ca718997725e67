"""`voxel-ode demo`: the whole chain on this machine, on data it generates itself.

synth -> prep -> train -> evaluate, everything under one folder:

    OUT/raw/            synthetic v2.4 simulations
    OUT/prepped/        packed files, stats.json, patch index
    OUT/checkpoints/    best_step*.pt, last.pt, metrics.jsonl
    OUT/eval/           metrics.json, metrics_per_step.csv, predictions/*.h5 + .xdmf, plots/*.png

The sizes below are chosen for a 2-core laptop CPU: the full demo takes about
10 minutes, `--quick` about 2. Each stage reuses its output when the folder
already holds a finished one made with the same settings (delete OUT to start
over), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from voxel_ode import schema
from voxel_ode.utils import UserError, write_json_atomic


@dataclass
class DemoConfig:
    n_sims: int
    n_test: int
    grid: tuple
    train_minutes: float
    base_channels: int
    depth: int
    batch_size: int
    rollout_steps: int
    lr: float
    max_steps: int = 100_000
    eval_every: int = 250
    seed: int = 0


FULL = DemoConfig(n_sims=40, n_test=5, grid=(32, 16, 16), train_minutes=6.0, base_channels=24, depth=4,
                  batch_size=4, rollout_steps=3, lr=2e-3)
# quick: a fixed number of steps (not a time budget) so the result does not depend on machine speed,
# and no test-split evaluation during training (the demo evaluates the final model anyway)
QUICK = DemoConfig(n_sims=24, n_test=4, grid=(24, 12, 12), train_minutes=4.0, base_channels=16, depth=3,
                   batch_size=4, rollout_steps=2, lr=3e-3, max_steps=300, eval_every=0)


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo makes")
    parser.add_argument("--quick", action="store_true", help="smoke version: smaller data, ~2 minutes")
    parser.add_argument("--n_sims", type=int, default=None, help="number of synthetic simulations (default 40, quick 24)")
    parser.add_argument("--grid", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="grid of the synthetic simulations (default 32 16 16, quick 24 12 12)")
    parser.add_argument("--train_minutes", type=float, default=None, help="training wall-time budget (default 6; quick stops after 300 steps)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop training after this many steps (default: the time budget; quick 300)")
    parser.add_argument("--workers", type=int, default=2, help="processes for synth and prep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG pictures")


def demo_config(args) -> DemoConfig:
    cfg = QUICK if args.quick else FULL
    cfg = DemoConfig(**asdict(cfg))
    if args.n_sims is not None:
        cfg.n_sims = args.n_sims
    if args.grid is not None:
        cfg.grid = tuple(args.grid)
    if args.train_minutes is not None:
        cfg.train_minutes = args.train_minutes
    if getattr(args, "max_steps", None) is not None:
        cfg.max_steps = args.max_steps
    cfg.seed = args.seed
    cfg.grid = tuple(cfg.grid)
    if cfg.n_sims < cfg.n_test + 1:
        raise UserError(f"--n_sims must be at least {cfg.n_test + 1} ({cfg.n_test} test + 1 train simulations)")
    return cfg


def _stage_done(marker: Path, settings: dict) -> bool:
    """True when ``marker`` records a finished stage made with the same settings."""
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()) == settings
    except json.JSONDecodeError:
        return False


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_demo(args) -> int:
    from voxel_ode.data.prep import prep
    from voxel_ode.inference.rollout import evaluate
    from voxel_ode.synth.voxel import generate_dataset
    from voxel_ode.training.train import train

    cfg = demo_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw, prepped, ckpts, evaldir = out / "raw", out / "prepped", out / "checkpoints", out / "eval"
    start = time.time()
    print(f"voxel-ode demo: {cfg.n_sims} synthetic simulations on a {'x'.join(map(str, cfg.grid))} grid, "
          f"{cfg.train_minutes:g} min of training, everything in {out}/")

    settings = {"n_sims": cfg.n_sims, "grid": list(cfg.grid), "seed": cfg.seed}
    _banner(f"1/4 synth: {cfg.n_sims} simulations -> {raw}/")
    if _stage_done(raw / ".demo_done.json", settings):
        print("reusing the simulations already there")
    else:
        generate_dataset(raw, cfg.n_sims, grid=cfg.grid, seed=cfg.seed, workers=args.workers)
        write_json_atomic(raw / ".demo_done.json", settings)

    # the channel list too: prepped data of an older version (other derived channels, no thermal
    # prior) is redone
    settings = {**settings, "n_test": cfg.n_test, "input_channels": list(schema.INPUT_CHANNELS)}
    _banner(f"2/4 prep -> {prepped}/")
    if _stage_done(prepped / ".demo_done.json", settings):
        print("reusing the prepped data already there")
    else:
        # The demo trains on whole-grid samples (the grid is small), so one patch
        # covering the grid is enough for the patch index.
        summary = prep(raw, prepped, patch_size=cfg.grid, stride=cfg.grid, n_test=cfg.n_test,
                       min_active_frac=0.0, workers=args.workers)
        print(f"prepped {len(summary['train'])} train + {len(summary['test'])} test simulations")
        write_json_atomic(prepped / ".demo_done.json", settings)

    _banner(f"3/4 train: {cfg.train_minutes:g} min on whole-grid samples, {cfg.rollout_steps}-step rollout training")
    result = train(
        prepped_root=str(prepped), save_dir=str(ckpts), sample_mode="full",
        base_channels=cfg.base_channels, depth=cfg.depth, receptive_field_radius=2,
        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=50, max_steps=cfg.max_steps,
        time_budget_min=cfg.train_minutes, rollout_steps=cfg.rollout_steps,
        rollout_curriculum_steps=200, aug_xy_rot=True, aug_flip=True, noise_std=0.0,
        eval_every=cfg.eval_every, log_every=50, ckpt_every=1000,
        seed=cfg.seed, device="cpu",
    )
    # the final model, not the "best" one: that is picked on the test split, which the
    # evaluation below then reports on (a test-set choice would flatter the numbers)
    ckpt = result["last_checkpoint"]

    _banner(f"4/4 evaluate {Path(ckpt).name} (the final model): rollouts of the {cfg.n_test} test simulations "
            f"-> {evaldir}/")
    summary = evaluate(prepped, ckpt, evaldir, split="test", device="cpu", plots=not args.no_plots,
                       linear_baseline=True)
    minutes = (time.time() - start) / 60
    print(f"\ndone in {minutes:.1f} min. Look at:")
    print(f"  {evaldir / 'metrics.json'}            metrics per simulation and step")
    print(f"  {evaldir / 'plots'}/                  error curves, P/T slices, field scalars (PNG)")
    print(f"  {evaldir / 'predictions'}/            predictions (*.h5) + ParaView files (*.xdmf)")
    print(f"  {ckpt}   the model evaluated above: the final one, step {result['steps']}")
    if result.get("best_checkpoint"):
        print(f"  ({result['best_checkpoint']} was picked on the test split during training; "
              "it is not evaluated here)")
    write_json_atomic(out / "demo_summary.json", {"config": asdict(cfg), "minutes": minutes,
                                                   "checkpoint": str(ckpt), "evaluation": summary})
    return 0
