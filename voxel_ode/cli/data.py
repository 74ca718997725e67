"""`voxel-ode prep` and `voxel-ode inspect`: flags and the lines they print."""

from __future__ import annotations

import argparse

from voxel_ode import schema
from voxel_ode.data import description, index, inspect, prepped
from voxel_ode.data.prep import DEFAULT_N_TEST, prep

# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def add_prep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_root", required=True, help=f"folder with raw {schema.RAW_FILE_GLOB} files")
    parser.add_argument("--out_root", required=True, help="output folder (train/, test/, calibration/, stats.json, index_*.jsonl)")
    parser.add_argument("--patch_size", type=int, nargs=3, default=list(index.DEFAULT_PATCH), metavar=("Z", "Y", "X"),
                        help="cells of one training patch (the patch index lists their origins)")
    parser.add_argument("--stride", type=int, nargs=3, default=list(index.DEFAULT_STRIDE), metavar=("Z", "Y", "X"),
                        help="cells between the origins of neighbouring patches")
    parser.add_argument("--n_test", type=int, default=DEFAULT_N_TEST, help="first N runs by sorted name go to test")
    parser.add_argument("--n_calibration", type=int, default=0,
                        help="the N runs after the test runs go to calibration/: never trained on, they "
                             "calibrate the uncertainty bands (voxel-ode bands)")
    parser.add_argument("--min_active_frac", type=float, default=index.DEFAULT_MIN_ACTIVE_FRAC,
                        help="skip patches with a smaller fraction of active cells (0 keeps all)")
    parser.add_argument("--fill_value", type=float, default=None,
                        help="value marking inactive cells in the raw export (e.g. -999); such cells count as inactive")
    parser.add_argument("--skip_bad", action="store_true", help="skip bad files with a warning instead of stopping")
    parser.add_argument("--workers", type=int, default=1, help="simulations processed in parallel")
    parser.add_argument("--n_timesteps", type=int, default=None,
                        help=f"expected T (default: from the first file; the real data has {schema.N_TIMESTEPS})")
    parser.add_argument("--chunk_edge", type=int, default=prepped.DEFAULT_CHUNK_EDGE, help="HDF5 chunk edge (cells) of packed grids")
    parser.add_argument("--compression", choices=prepped.COMPRESSIONS, default="none", help="HDF5 compression of packed grids")
    parser.add_argument("--cell_size", type=float, nargs=3, default=None, metavar=("DX", "DY", "DZ"),
                        help="cell sizes in m (overrides the description's CellSizeX/Y/Z; the physics priors need them)")
    parser.add_argument("--description", default=None, metavar="JSON",
                        help="the dataset description (units, time of the first report, physical constants; "
                             f"voxel_ode/description.py). Default: INPUT_ROOT/{description.FILE_NAME} if present, "
                             "else nothing declared (then the priors' constants are calibrated)")
    parser.add_argument("--no_calibration", action="store_true",
                        help="where the description lacks cell sizes or the lateral boundary, compute no physics "
                             "priors instead of fitting them on training runs (default: fit; physics/calibration.py)")


def run_prep(args) -> int:
    summary = prep(args.input_root, args.out_root, patch_size=args.patch_size, stride=args.stride,
                   n_test=args.n_test, n_calibration=args.n_calibration, min_active_frac=args.min_active_frac, fill_value=args.fill_value,
                   skip_bad=args.skip_bad, workers=args.workers, n_timesteps=args.n_timesteps,
                   chunk_edge=args.chunk_edge, compression=args.compression, cell_size=args.cell_size,
                   description_path=args.description, calibrate=not args.no_calibration)
    p = summary["patches"]
    print(f"prep: description: {summary['description_source']}; physics priors: "
          f"{'yes' if summary['priors'] else 'no (cell sizes or the lateral boundary neither declared nor calibrated)'}")
    for item, note in summary["physics"].items():  # the first run's; every run's are in stats.json
        print(f"prep:   {item}: {note}")
    print(f"prep: {len(summary['train'])} train, {len(summary['test'])} test, "
          f"{len(summary['calibration'])} calibration simulations, "
          f"{len(summary['skipped'])} skipped -> {summary['out_root']}")
    print(f"prep: {p['origins_per_sim']} patch origins per simulation and step "
          f"(patch {p['patch_size']}, stride {p['stride']})")
    for split in schema.SPLITS:
        tot = p["total"][split]
        share = f" ({100 * p['kept'][split] / tot:.1f}%)" if tot else ""
        print(f"prep: {split}: kept {p['kept'][split]} of {tot} patches with active fraction >= "
              f"{p['min_active_frac']}{share}")
    print(f"prep: {summary['raw_bytes'] / 1e6:.0f} MB raw in {summary['seconds']:.1f} s "
          f"({summary['mb_per_s']:.0f} MB/s)")
    return 0


def add_inspect_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="raw v2.4 .h5 or packed .prepped.h5 file")
    parser.add_argument("--fill_value", type=float, default=None, help="value marking inactive cells in a raw file")
    parser.add_argument("--n_timesteps", type=int, default=None, help="expected T (default: any)")
    parser.add_argument("--description", default=None, metavar="JSON",
                        help=f"dataset description of a raw file (default: {description.FILE_NAME} next to it)")


def run_inspect(args) -> int:
    return inspect.inspect_file(args.file, args.fill_value, args.n_timesteps, args.description)
