"""The prepped file (``*.prepped.h5``, one per run): the one place that writes and reads it.

Layout (schema.PREPPED_*): /static (N_STATIC, Z, Y, X) float32, /params_scalar (26,),
/outputs_grid (T, 2, Z, Y, X) float32 in Pa and K, /outputs_scalar (T, 5) float64, /priors
(T, N_PRIORS, Z, Y, X) float16; attributes source, run_name, first_report, fill_value,
schema_version. docs/design.md has the details.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from voxel_ode import files, schema
from voxel_ode.utils import UserError

DEFAULT_CHUNK_EDGE = 16  # measured in benchmarks/bench_prep.py (docs/benchmarks.md, "Prep cost")


COMPRESSIONS = ("none", "lzf", "gzip")


def chunk_shape(grid: Sequence[int], edge: int) -> tuple[int, int, int]:
    """HDF5 chunk (cz, cy, cx) near ``edge`` that splits each axis into equal chunks.

    HDF5 stores edge chunks whole, so 16 on 70 cells would store 80; 14 stores exactly 70.
    """
    return tuple(math.ceil(n / math.ceil(n / edge)) for n in grid)


def compression_opts(compression) -> dict:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}  # level 1: the fastest gzip
    return {"compression": compression} if compression else {}


def preparation_record(description: dict, priors: bool) -> dict:
    """What decides a packed run's inputs beyond its own raw file: the schema, the channels, the
    dataset description prep used (declared and calibrated entries) and whether it derived the
    physics priors. A checkpoint is applied only to data with the record it was trained on
    (model/checkpoint.check_data). Stored in every packed file and, as stats.json's
    "description" and "priors", for the whole dataset."""
    return {"schema_version": schema.SCHEMA_VERSION, "static": list(schema.STATIC_NAMES),
            "priors_channels": list(schema.PRIOR_NAMES), "priors": bool(priors), "description": description}


def read_preparation(f: h5py.File, path) -> dict:
    """The preparation record of an open packed run (UserError when it has none: an older prep)."""
    try:
        return json.loads(f.attrs.get("preparation"))
    except (TypeError, ValueError):
        raise UserError(f"{path}: @preparation: missing (prepped by an older voxel-ode: run `voxel-ode prep` "
                        "again)") from None


def write_packed(out, path, static_stack, year_priors, params, scalars, physics, fill_value, ce, opts,
                 description: dict, delivered_rates=None):
    """The packed file's datasets and attributes besides the outputs grid (written while streaming);
    ``description``: the dataset description prep used, as a dict; ``delivered_rates``: (T, 2) or None."""
    out.attrs["preparation"] = json.dumps(preparation_record(description, year_priors is not None), sort_keys=True)
    if year_priors is None:  # stats.json says so ("priors": false); zeros keep one layout
        year_priors = np.zeros((len(scalars), schema.N_PRIORS) + static_stack.shape[1:], np.float16)
    out.create_dataset(schema.PREPPED_STATIC, data=static_stack, chunks=(schema.N_STATIC, *ce), **opts)
    out.create_dataset(schema.PREPPED_PRIORS, data=year_priors, chunks=(1, schema.N_PRIORS, *ce), **opts)
    out.create_dataset(schema.PREPPED_PARAMS, data=params)
    out.create_dataset(schema.PREPPED_OUTPUTS_SCALAR, data=scalars)
    if delivered_rates is not None:
        out.create_dataset(schema.PREPPED_DELIVERED_RATES, data=np.asarray(delivered_rates, np.float64))
    out.attrs["source"] = os.path.abspath(path)
    out.attrs["run_name"] = Path(path).name[: -len(".h5")] if path.endswith(".h5") else Path(path).name
    out.attrs["first_report"] = physics.first_report
    if fill_value is not None:
        out.attrs["fill_value"] = float(fill_value)
    out.attrs["schema_version"] = schema.SCHEMA_VERSION


def run_name(path: Path) -> str:
    return path.name[: -len(".h5")] if path.name.endswith(".h5") else path.stem


PREPPED_NEEDED = (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID,
                  schema.PREPPED_OUTPUTS_SCALAR, schema.PREPPED_PRIORS)


def check_prepped_files(paths) -> None:
    """Open every prepped file training will read (metadata only: cheap) so a truncated or
    foreign one is one line naming it before any work, not a traceback from a reader later."""
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                missing = [n for n in PREPPED_NEEDED if n not in f]
                static = f[schema.PREPPED_STATIC] if not missing else None
                grid = f[schema.PREPPED_OUTPUTS_GRID] if not missing else None
                shapes = (static.shape, grid.shape) if not missing else None
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"{path}: (file): cannot open the prepped run (truncated or not HDF5? "
                            f"{' '.join(str(err).split())[:160]})") from None
        if missing:
            raise UserError(f"{path}: /{missing[0]}: missing (not a prepped file, or prepped by an older voxel-ode)")
        if shapes[0][0] != schema.N_STATIC or shapes[1][1:] != (schema.N_DYNAMIC,) + tuple(shapes[0][1:]):
            raise UserError(f"{path}: /{schema.PREPPED_STATIC}: shapes {shapes[0]} and {shapes[1]} do not fit "
                            f"{schema.N_STATIC} static channels and (T, {schema.N_DYNAMIC}, Z, Y, X)")


def read_priors(f: h5py.File, steps: slice, box=(slice(None),) * 3) -> np.ndarray:
    """The stored priors of ``steps`` in ``box`` (a UserError for a file prepped without them)."""
    if schema.PREPPED_PRIORS not in f:
        raise UserError(f"{f.filename}: /{schema.PREPPED_PRIORS}: missing (prepped by an older "
                        "voxel-ode: run `voxel-ode prep` again)")
    return f[schema.PREPPED_PRIORS][(steps, slice(None)) + tuple(box)].astype(np.float32)


# ---------------------------------------------------------------------------
# Loading one simulation into memory
# ---------------------------------------------------------------------------
def load_prepped_sim(path) -> dict:
    """Arrays of one prepped file: static, params_scalar, outputs_grid, priors, outputs_scalar, source."""
    path = files.regular_file(path)
    try:
        with h5py.File(path, "r") as f:
            for name in (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID):
                if name not in f:
                    raise UserError(f"{path}: /{name}: missing (not a prepped file?)")
            sim = {
                "static": f[schema.PREPPED_STATIC][()].astype(np.float32),
                "params_scalar": f[schema.PREPPED_PARAMS][()].astype(np.float32),
                "outputs_grid": f[schema.PREPPED_OUTPUTS_GRID][()].astype(np.float32),
                "source": str(path),
                "preparation": read_preparation(f, path),
            }
            if schema.PREPPED_PRIORS not in f:
                raise UserError(f"{path}: /{schema.PREPPED_PRIORS}: missing (prepped by an older voxel-ode: "
                                "run `voxel-ode prep` again)")
            sim["priors"] = f[schema.PREPPED_PRIORS][()]  # float16: 416 MB on the full grid
            if schema.PREPPED_OUTPUTS_SCALAR in f:
                sim["outputs_scalar"] = f[schema.PREPPED_OUTPUTS_SCALAR][()].astype(np.float64)
            if schema.PREPPED_DELIVERED_RATES in f:  # prepped before it was written: the model's own rates
                sim["delivered_rates"] = f[schema.PREPPED_DELIVERED_RATES][()].astype(np.float64)
    except OSError as err:
        raise UserError(f"{path}: -: cannot open as HDF5 ({err})") from None
    if sim["static"].shape[0] != schema.N_STATIC:
        raise UserError(f"{path}: /{schema.PREPPED_STATIC}: {sim['static'].shape[0]} channels, expected {schema.N_STATIC}")
    if not (sim["static"][schema.STATIC_NAMES.index("IsActive")] > 0.5).any():
        # nothing to predict: the field scalars would come from the model alone
        raise UserError(f"{path}: /{schema.PREPPED_STATIC}: no active cell (prep refuses such runs)")
    return sim


def split_runs(root, split: str) -> tuple[list[str], int]:
    """(paths of a split's prepped runs relative to root, sorted; the first one's T)."""
    root = Path(root)
    paths = sorted(str(p.relative_to(root)) for p in (root / split).glob(f"*{schema.PREPPED_SUFFIX}"))
    if not paths:
        raise UserError(f"{root / split}: *{schema.PREPPED_SUFFIX}: no prepped simulations")
    with h5py.File(root / paths[0], "r") as f:
        n_t = f[schema.PREPPED_OUTPUTS_GRID].shape[0]
    return paths, n_t
