"""`voxel-ode demo`: the whole chain on this machine (flags; the work is voxel_ode/demo.py)."""

from __future__ import annotations

import argparse

from voxel_ode.demo import demo_config, run_demo


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


def run(args) -> int:
    cfg = demo_config(args.quick, args.n_sims, args.grid, args.train_minutes, args.max_steps, args.seed)
    run_demo(args.out, cfg, workers=args.workers)
    return 0
