"""`voxel-ode synth`: its flags and the dispatch to an engine (``synth.voxel`` or ``synth.open_darts``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from voxel_ode import schema
from voxel_ode.synth import open_darts, voxel
from voxel_ode.synth.darts_conventions import N_PARAMS, Conventions, random_params_order
from voxel_ode.utils import UserError

# --engine darts only: the conventions a dataset is made and written in (darts_conventions.Conventions)
DARTS_FLAGS = ("cell_size", "injection_rate", "lateral_boundary", "boundary_multiplier", "perm_unit",
               "first_report", "params_order", "injector_limit", "producer_limit")


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
                             "--n_steps = simulated years, see --first_report; --substeps unused)")
    _add_darts_args(parser.add_argument_group(
        "conventions of --engine darts (default: the open-darts development set's; description.json declares them)"))
    _add_plan_args(parser.add_argument_group(
        "--engine darts on a sweep's plan: each scenario of --plan on one base run, simulated into OUT/<name>.h5"))


def _add_plan_args(group) -> None:
    group.add_argument("--plan", metavar="PLAN.csv|PLAN.json",
                       help="a voxel-ode sweep plan (see voxel-ode sweep --help); rows may use rate_<well>, "
                            "scale_rates and shut (a shut well is not opened); wells are named as the sweep names "
                            "them (I1.., P1.. in C order of their first cell)")
    group.add_argument("--base", metavar="RUN.h5",
                       help="base run: a v2.4 file made by open-darts in these conventions (e.g. darts-dev's): its "
                            "Input/ grids, ParamsScalar and wells (read off InjRate)")
    group.add_argument("--base_seed", type=int, metavar="S",
                       help="instead of --base: the run drawn as synth --engine darts --seed S draws run "
                            "--base_index on --grid")
    group.add_argument("--base_index", type=int, metavar="I", help="with --base_seed: the run's index (1 = v2.4_0001)")


def _add_darts_args(group) -> None:
    dev = Conventions()
    group.add_argument("--cell_size", type=float, nargs=3, metavar=("DX", "DY", "DZ"),
                       help=f"cell sizes in m, any aspect (default: {' '.join(f'{v:g}' for v in dev.cell_size)})")
    group.add_argument("--injection_rate", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="range of each run's total injection rate in kg/s; production is 0.9-1.1 x injection "
                            f"(default: {' '.join(f'{v:g}' for v in dev.injection_rate)})")
    group.add_argument("--lateral_boundary", metavar="{pore_volume,closed}",
                       help="the box's lateral sides: pore_volume = side cells with --boundary_multiplier x their "
                            "pore volume (an aquifer's storage); closed = no flow through them, and production = "
                            "injection. open-darts here cannot make fixed_pressure (default: pore_volume)")
    group.add_argument("--boundary_multiplier", type=float, metavar="N",
                       help=f"pore volume factor of the side cells, pore_volume only "
                            f"(default: {dev.boundary_multiplier:g})")
    group.add_argument("--perm_unit", choices=("mD", "m2"),
                       help="unit of Input/PermX/Y/Z in the files (ParamsScalar keeps log10 mD) (default: mD)")
    group.add_argument("--first_report", choices=("year1", "initial"),
                       help="what Output[0] is: year1 = the end of year 1 (--n_steps reports); initial = the "
                            "initial state, equal to Input/Pressure0 (--n_steps + 1 reports) (default: year1)")
    group.add_argument("--injector_limit", type=float, metavar="BAR",
                       help="the injectors' maximum bottomhole pressure, in bar over fresh-water hydrostatic "
                            f"at the box bottom (default: {dev.injector_limit:g})")
    group.add_argument("--producer_limit", type=float, metavar="BAR",
                       help=f"the producers' minimum bottomhole pressure in bar (default: {dev.producer_limit:g})")
    group.add_argument("--params_order", nargs="+", metavar="I",
                       help=f"order of the {N_PARAMS} ParamsScalar entries: ParamsScalar[i] of a file = dev-set entry "
                            f"I_i; {N_PARAMS} integers (a permutation of 0..{N_PARAMS - 1}) or 'random' (drawn from "
                            "--seed) (default: the dev set's order)")


def run_synth(args) -> int:
    if getattr(args, "engine", "voxel") == "darts":
        return _run_darts(args)
    given = [f"--{name}" for name in DARTS_FLAGS if getattr(args, name, None) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: only with --engine darts (the voxel engine draws cell sizes, rates "
                        "and boundary strength per run and writes its own conventions)")
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
    conventions = darts_conventions(args)
    if args.plan or args.base or args.base_seed is not None or args.base_index is not None:
        return _run_darts_plan(args, conventions)
    out = checked_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    paths = open_darts.generate_dataset(out, args.n, tuple(args.grid), args.seed, args.workers, n_steps=args.n_steps,
                                        conventions=conventions)
    print(f"wrote {len(paths)} open-darts simulations {tuple(args.grid)} x {args.n_steps} yearly reports to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _run_darts_plan(args, conventions: Conventions) -> int:
    """``synth --engine darts --plan``: one open-darts run per plan row on the base run."""
    if not args.plan:
        raise UserError("--base/--base_seed/--base_index: only with --plan")
    if bool(args.base) == (args.base_seed is not None or args.base_index is not None):
        raise UserError("--plan: give the base run as --base RUN.h5 or as --base_seed S --base_index I (one of them)")
    if args.base:
        base = {"file": args.base}
    elif args.base_seed is None or args.base_index is None:
        raise UserError("--base_seed and --base_index go together")
    else:
        base = {"seed": args.base_seed, "index": args.base_index}
    start = time.perf_counter()
    done = open_darts.simulate_plan(args.out, base, args.plan, n_steps=args.n_steps, grid=tuple(args.grid),
                                    workers=args.workers, conventions=conventions, overwrite=args.overwrite)
    print(f"wrote {len(done)} open-darts scenarios to {args.out} in {time.perf_counter() - start:.1f} s "
          f"({', '.join(f'{name} {secs:.1f} s' for name, (_, secs) in done.items())})")
    return 0


def darts_conventions(args) -> Conventions:
    """The Conventions the flags ask for (unset flags: the dev set's); UserError on bad values."""
    dev = Conventions()
    boundary = args.lateral_boundary or dev.lateral_boundary
    if boundary == "closed" and args.boundary_multiplier is not None:
        raise UserError("--boundary_multiplier: only with --lateral_boundary pore_volume (a closed side has none)")
    return Conventions(
        cell_size=tuple(args.cell_size) if args.cell_size else dev.cell_size,
        injection_rate=tuple(args.injection_rate) if args.injection_rate else dev.injection_rate,
        lateral_boundary=boundary,
        boundary_multiplier=dev.boundary_multiplier if args.boundary_multiplier is None else args.boundary_multiplier,
        permeability_unit=args.perm_unit or dev.permeability_unit,
        first_report=args.first_report or dev.first_report,
        params_order=_params_order(args.params_order, args.seed) if args.params_order else dev.params_order,
        injector_limit=dev.injector_limit if args.injector_limit is None else args.injector_limit,
        producer_limit=dev.producer_limit if args.producer_limit is None else args.producer_limit)


def _params_order(values, seed) -> tuple:
    if values == ["random"]:
        return random_params_order(seed)
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UserError(f"--params_order: give {N_PARAMS} integers or 'random', got {' '.join(values)}") from None


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
