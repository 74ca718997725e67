"""`voxel-ode sweep`: flags; the work is inference/sweep.py, the plan's format inference/scenarios.py."""

from __future__ import annotations

import argparse
import sys

from voxel_ode.data.plan import PlanError
from voxel_ode.inference.sweep import run_sweep
from voxel_ode.inference.sweep_table import DEFAULT_BREAKTHROUGH_K, DEFAULT_OBJECTIVE
from voxel_ode.model import checkpoint, precision
from voxel_ode.model.precision import AMP_CHOICES, AMP_HELP

PLAN_HELP = """\
plan file, one scenario per row: a .csv with a header row or a .json list of objects. Columns:
name (required, unique); rate_<well> (the well's total kg/s, + injection, - production);
scale_rates (multiplies every rate); shut (wells, ';' between them: rate 0);
add_well / move_well (name:x:y:z0:z1:rate, the rate split over the column's active cells
z0..z1 by PermX; move_well may leave out the rate to keep it);
param:<Quantity> (a quantity the checkpoint's description declares as a ParamsScalar entry,
in its declared unit). Empty cells: no change. Wells are named I1.., P1.. (printed at the start)."""

EPILOG = """\
The out folder gets scenarios.csv (one row per scenario, best first), scenarios.json (every
per-year series), sweep.png and scenarios/<name>.json per finished scenario: a rerun with the
same checkpoint, base and plan skips the finished ones; another plan on the folder is refused.

example plan.csv:
  name,scale_rates,rate_I1,shut,param:InjectionTemperature
  base,,,,
  half,0.5,,,
  strong_I1,,40,,
  no_P2,,,P2,
  warm,,,,320
"""


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = type("Formatter", (argparse.RawDescriptionHelpFormatter, parser.formatter_class), {})
    parser.epilog = EPILOG
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--base", required=True, metavar="RUN.h5",
                        help="base run: a raw v2.4 file (its Input/ is used; Output/ may be absent)")
    parser.add_argument("--plan", required=True, metavar="PLAN.csv|PLAN.json", help=PLAN_HELP)
    parser.add_argument("--out", required=True, metavar="FOLDER", help="folder for everything the sweep writes")
    parser.add_argument("--objective", default=DEFAULT_OBJECTIVE,
                        help="table column to rank by, higher is better; --objective=-NAME (or --minimize): "
                             "lower is better. e.g. energy_total, production_temperature_drop, breakthrough_year, "
                             "dp_peak_P1")
    parser.add_argument("--minimize", action="store_true", help="rank by the objective's lowest value")
    parser.add_argument("--breakthrough_k", type=float, default=DEFAULT_BREAKTHROUGH_K,
                        help="K: thermal breakthrough = the first year the production temperature is this "
                             "much below year 0's")
    parser.add_argument("--save_predictions", action="store_true",
                        help="also write each scenario's predictions (OUT/predictions/<name>.h5 + XDMF)")
    parser.add_argument("--stats_path", help=checkpoint.STATS_PATH_HELP)
    parser.add_argument("--bands", metavar="JSON", default=None,
                        help="uncertainty bands (voxel-ode bands; default: CKPT's .bands.json when it exists)")
    parser.add_argument("--keep_inputs", action="store_true",
                        help="keep each scenario's raw inputs-only file (OUT/inputs/<name>.h5)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes deriving the next scenarios' physics priors while the model runs")
    parser.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                        help="torch.compile the model once for the sweep (5-25 s, then ~1.5x faster per "
                             "scenario on a CPU); auto: when 20 or more scenarios are to run")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help=AMP_HELP)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_sweep_command(args) -> int:
    try:
        run_sweep(args.ckpt_path, args.base, args.plan, args.out, objective=args.objective, minimize=args.minimize,
                  save_predictions=args.save_predictions, device=precision.pick_device(args.device), amp=args.amp,
                  workers=max(1, args.workers), breakthrough_k=args.breakthrough_k, keep_inputs=args.keep_inputs,
                  progress=not args.no_progress, bands_path=args.bands, compile_model=args.compile,
                  stats_path=args.stats_path)
    except PlanError as err:
        if len(err.lines) == 1:
            raise
        for line in err.lines:  # every bad row, one line each
            print(f"voxel-ode sweep: error: {line}", file=sys.stderr)
        return 1
    return 0
