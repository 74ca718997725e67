"""`voxel-ode synth`: its flags and the dispatch to an engine (``synth.voxel`` or ``synth.open_darts``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from voxel_ode import schema
from voxel_ode.synth import open_darts, voxel
from voxel_ode.utils import UserError


def add_synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory for v2.4_0001.h5, ...")
    parser.add_argument("--n", type=int, default=20, help="number of simulations")
    parser.add_argument("--grid", type=int, nargs=3, default=list(voxel.DEFAULT_GRID), metavar=("Z", "Y", "X"),
                        help="grid size; the real one is 326 70 76")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--substeps", type=int, default=voxel.DEFAULT_SUBSTEPS, help="implicit time steps per year")
    parser.add_argument("--n_steps", type=int, default=schema.N_TIMESTEPS,
                        help="yearly reports including t=0 (the v2.4 schema has 30)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing v2.4_*.h5 files in --out")
    parser.add_argument("--engine", choices=("voxel", "darts"), default="voxel",
                        help="simulator: voxel-ode's own, or open-darts 2.0.0 (pip install 'voxel-ode[darts]'; "
                             "--n_steps = yearly reports after t=0, --substeps unused)")


def run_synth(args) -> int:
    if getattr(args, "engine", "voxel") == "darts":
        return _run_darts(args)
    if args.n < 1:
        raise UserError(f"--n: must be >= 1, got {args.n}")
    if any(g < m for g, m in zip(args.grid, voxel.MIN_GRID)):
        raise UserError(f"--grid: {args.grid} too small, need at least {list(voxel.MIN_GRID)} (Z Y X)")
    if args.substeps < 1 or args.n_steps < 2 or args.workers < 1:
        raise UserError("--substeps/--workers: must be >= 1, --n_steps >= 2")
    out = checked_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    paths = voxel.generate_dataset(out, args.n, tuple(args.grid), args.seed, args.workers, n_steps=args.n_steps,
                                   substeps=args.substeps)
    stale = [p for p in sorted(out.glob(schema.RAW_FILE_GLOB)) if p not in set(paths)]
    print(f"wrote {len(paths)} simulations {tuple(args.grid)} x {args.n_steps} to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    if stale:
        print(f"note: {len(stale)} other {schema.RAW_FILE_GLOB} files were already in {out} and were left there")
    return 0


def _run_darts(args) -> int:
    """``voxel-ode synth --engine darts``: the same checks as the voxel engine's, then open-darts runs."""
    open_darts.require_darts()
    if args.n < 1:
        raise UserError(f"--n: must be >= 1, got {args.n}")
    if any(g < m for g, m in zip(args.grid, open_darts.MIN_GRID)):
        raise UserError(f"--grid: {args.grid} too small for --engine darts, need at least "
                        f"{list(open_darts.MIN_GRID)} (Z Y X)")
    if args.n_steps < 1 or args.workers < 1:
        raise UserError("--workers: must be >= 1, --n_steps >= 1 (yearly reports)")
    out = checked_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    paths = open_darts.generate_dataset(out, args.n, tuple(args.grid), args.seed, args.workers, n_steps=args.n_steps)
    print(f"wrote {len(paths)} open-darts simulations {tuple(args.grid)} x {args.n_steps} yearly reports to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def checked_out_dir(out, overwrite: bool) -> Path:
    """--out of both engines: a directory (or nothing yet) that holds no run files unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out: exists and is not a directory")
    existing = sorted(out.glob(schema.RAW_FILE_GLOB)) if out.is_dir() else []
    if existing and not overwrite:
        raise UserError(f"{out}: --out: already holds {len(existing)} {schema.RAW_FILE_GLOB} files; "
                        "use --overwrite or an empty directory")
    return out
