"""`voxel-ode rollout` and `voxel-ode evaluate`: flags and what they print."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxel_ode import schema
from voxel_ode.inference import bands
from voxel_ode.inference.evaluate import evaluate
from voxel_ode.inference.predict import predict_file
from voxel_ode.model import checkpoint, precision
from voxel_ode.model.precision import AMP_CHOICES, AMP_HELP

def add_rollout_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prepped_sim_path", help="simulation to roll out (prepped; a raw v2.4 file is detected too)")
    src.add_argument("--raw_sim_path", help="a raw v2.4 file, normalized with the checkpoint's stats")
    parser.add_argument("--stats_path", help=checkpoint.STATS_PATH_HELP)
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--save_path", default="./predictions.h5",
                        help="predictions file to write (an .xdmf for ParaView goes next to it)")
    for name in checkpoint.ARCH_FLAGS:  # seed flags: accepted, checked against the checkpoint
        parser.add_argument(f"--{name}", type=int, default=None, help="checked against the checkpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help=AMP_HELP)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="run the local path in tiles of this size (halo = receptive field)")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG pictures here")
    parser.add_argument("--xdmf", action=argparse.BooleanOptionalAction, default=True,
                        help="write an XDMF next to predictions.h5 for ParaView")
    parser.add_argument("--bands", metavar="JSON", default=None,
                        help="uncertainty bands (voxel-ode bands; default: CKPT's .bands.json when it exists)")
    parser.add_argument("--save_truth", action="store_true", help="also copy the source's outputs into truth/")
    parser.add_argument("--fill_value", type=float, default=None, help="raw files: value marking inactive cells")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_rollout(args) -> int:
    predict_file(args.ckpt_path, args.raw_sim_path or args.prepped_sim_path, args.save_path, args.stats_path,
                 device=precision.pick_device(args.device), amp=args.amp, tile=args.tile, plots_dir=args.plots,
                 xdmf=args.xdmf, save_truth=args.save_truth, fill_value=args.fill_value,
                 progress=not args.no_progress, arch_flags={n: getattr(args, n) for n in checkpoint.ARCH_FLAGS},
                 bands_path=args.bands)
    return 0


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepped_root", required=True, help="output folder of prep (stats.json, train/, test/)")
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--split", default="test", choices=schema.SPLITS, help="simulations to roll out and score")
    parser.add_argument("--out", default="./evaluation",
                        help="folder for metrics.json, metrics_per_step.csv, predictions/ and plots/")
    parser.add_argument("--plots", action="store_true", help="write PNG pictures under OUT/plots")
    parser.add_argument("--linear_baseline", action="store_true",
                        help="also fit (or load OUT/linear_baseline.npz) and score a linear per-voxel model")
    parser.add_argument("--tol_pressure", type=float, default=schema.DEFAULT_PRESSURE_TOL_PA,
                        help="Pa: a cell counts as right in the 'acc +/-tol P' row when this close to the truth")
    parser.add_argument("--tol_temperature", type=float, default=schema.DEFAULT_TEMPERATURE_TOL_K,
                        help="K: the same for the 'acc +/-tol T' row")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help=AMP_HELP)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="run the local path in tiles of this size (default: the whole grid at once)")
    parser.add_argument("--bands", metavar="JSON", default=None,
                        help="uncertainty bands (voxel-ode bands; default: CKPT's .bands.json when it exists)")
    parser.add_argument("--no_predictions", action="store_true", help="do not write predictions/*.h5")
    parser.add_argument("--xdmf", action=argparse.BooleanOptionalAction, default=True,
                        help="write an XDMF next to each predictions file for ParaView")
    parser.add_argument("--stats_path", help=checkpoint.STATS_PATH_HELP)
    parser.add_argument("--max_sims", type=int, default=None,
                        help="evaluate only the first N simulations of the split (default: all)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_evaluate(args) -> int:
    evaluate(args.prepped_root, args.ckpt_path, args.out, split=args.split, device=precision.pick_device(args.device),
             tile=args.tile, amp=args.amp, plots=args.plots, linear_baseline=args.linear_baseline,
             tol_pressure=args.tol_pressure,
             tol_temperature=args.tol_temperature, save_predictions=not args.no_predictions, xdmf=args.xdmf,
             max_sims=args.max_sims, progress=not args.no_progress, bands_path=args.bands,
             stats_path=args.stats_path)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def add_bands_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepped_root", required=True, help="output folder of prep --n_calibration K (calibration/)")
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--coverage", type=float, default=bands.DEFAULT_COVERAGE,
                        help="share of the truth each band is to hold (0.9: a 5-95%% band)")
    parser.add_argument("--out", default=None, help=f"bands file to write (default: CKPT with {bands.SUFFIX})")
    parser.add_argument("--stats_path", help=checkpoint.STATS_PATH_HELP)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto", help=AMP_HELP)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="run the local path in tiles of this size (default: the whole grid at once)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_bands(args) -> int:
    result = bands.calibrate(args.prepped_root, args.ckpt_path, args.out, coverage=args.coverage,
                             device=precision.pick_device(args.device), amp=args.amp, tile=args.tile,
                             progress=not args.no_progress, stats_path=args.stats_path)
    print(f"bands: {len(result['calibration_runs'])} calibration runs, coverage {result['coverage']:.0%}")
    for var, entry in result["grid"].items():
        w = entry["weights"]
        print(f"bands: {var}: sigma = {w[0]:g} |change| + {w[1]:g} |model - prior| + {w[2]:g} |front| + {w[3]:g} "
              f"RMS change; factor for a new run {entry['run_factor']:.2f}; calibration width / RMS error "
              f"{entry['width_over_rms']:.2f}")
    for name, entry in (result["scalars"] or {}).items():
        print(f"bands: {name}: relative score x (t / T)^{entry['power']:g}, quantile {entry['quantile']:.3g}, "
              f"factor for a new run {entry['run_factor']:.2f}, mean relative width {entry['relative_width']:.3g}")
    for var, entry in result["held_out_coverage"].items():
        print(f"bands: {var}: coverage of a left-out calibration run (its band and factor from the others): "
              f"{entry['last']:.3f} at the last step, {entry['mean']:.3f} over the steps")
    if result["scalars"] is None:
        print("bands: no scalar bands (the model predicts no field scalars)")
    print(f"wrote {result['path']}")
    return 0
