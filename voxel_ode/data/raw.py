"""Raw v2.4 files (a simulator's export, or a synth engine's): the one place that reads and writes them.

A raw file holds the schema's datasets (``schema.raw_path``: ``Input/<static grid>``,
``Input/ParamsScalar``, ``Output/<dynamic grid or field scalar>``) and free-form file
attributes. What its numbers mean (units, the time of the first report, which ``ParamsScalar``
entry is what) is declared next to the files in ``description.json`` (``data/description.py``).

Reading: ``check_structure`` looks at metadata only (names, shapes, dtypes); ``read_inputs``
reads the static grids, ParamsScalar and field scalars with fill values and NaN/Inf cleaned;
``step_reader`` streams the dynamic grids one report at a time. A problem is a
``DatasetProblem`` naming the dataset, which callers turn into "file: dataset: what" lines.
Writing: ``write_raw`` (both synth engines).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import files, schema
from voxel_ode.data import checks, description
from voxel_ode.utils import UserError

# Bytes one run takes in memory per cell, roughly, with T reports: the static grids (float32),
# the priors' march (float64 fields of every report) and the packed or predicted grids.
BYTES_PER_CELL, BYTES_PER_CELL_AND_REPORT = 48, 28
MEMORY_LIMIT_VARIABLE = "VOXEL_ODE_MAX_MEMORY_GB"


def memory_limit_bytes() -> float:
    """What one run may take: $VOXEL_ODE_MAX_MEMORY_GB, else 3/4 of this machine's memory."""
    given = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if given:
        try:
            return float(given) * 1e9
        except ValueError:
            raise UserError(f"{MEMORY_LIMIT_VARIABLE}: {given!r} is not a number of GB") from None
    try:
        return 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64e9


def open_raw(path) -> h5py.File:
    """A raw file opened for reading: a regular file only (files.regular_file), read-only."""
    return h5py.File(files.regular_file(path), "r")


def _indirection(f: h5py.File, path: str) -> str | None:
    """Why a dataset's data would come from outside the file (refused: reading stays inside the
    input), or None. External links, virtual datasets and external raw storage can point anywhere."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        link = f.get("/".join(parts[:depth]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return f"an external link to another file ({link.filename}): refused, reading stays inside the file"
    obj = f[path]
    if obj.is_virtual:
        return "a virtual dataset (its data lives in other files): refused, reading stays inside the file"
    if obj.external:
        return "stored in external raw files: refused, reading stays inside the file"
    return None


def _size_problem(grid, n_t) -> str | None:
    """A grid too large for this machine, said before anything is read or allocated."""
    cells = float(np.prod(grid))
    need = cells * (BYTES_PER_CELL + BYTES_PER_CELL_AND_REPORT * max(int(n_t or 1), 1))
    limit = memory_limit_bytes()
    if need > limit:
        return (f"grid {tuple(grid)} with {n_t} reports needs about {need / 1e9:.3g} GB, more than the "
                f"{limit / 1e9:.3g} GB allowed (set {MEMORY_LIMIT_VARIABLE} to raise it)")
    return None

# ---------------------------------------------------------------------------
# Validation + packing of one simulation
# ---------------------------------------------------------------------------
class DatasetProblem(Exception):
    def __init__(self, dataset: str, what: str):
        super().__init__(f"{dataset}: {what}")
        self.dataset, self.what = dataset, what


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def has_outputs(f: h5py.File) -> bool:
    """Whether a raw file holds simulated outputs (else it is the input of a forecast)."""
    return schema.OUTPUT_GROUP in f


def check_structure(f: h5py.File, n_timesteps: int | None, inputs_only: bool = False
                    ) -> tuple[list[tuple[str, str]], tuple | None, int | None]:
    """Shape/dtype problems from metadata only: [(dataset, what)], grid (Z, Y, X), T.
    ``inputs_only``: a forecast's file, Input/ only (``n_timesteps``: the reports to forecast)."""
    problems = []
    datasets = {}
    outputs = () if inputs_only else schema.DYNAMIC_NAMES + schema.SCALAR_NAMES
    for name in schema.RAW_STATIC_NAMES + (schema.PARAMS_SCALAR,) + outputs:
        path = schema.raw_path(name)
        obj = f.get(path)
        if obj is None:
            problems.append((path, "missing dataset"))
        elif not isinstance(obj, h5py.Dataset):
            problems.append((path, "is a group, expected a dataset"))
        elif obj.dtype.kind not in "fiub":
            problems.append((path, f"dtype {obj.dtype} is not numeric"))
        elif _indirection(f, path):
            problems.append((path, _indirection(f, path)))
        else:
            datasets[name] = obj
    # The static grid shape is IsActive's (the mask defines the grid); others must match it.
    grid = None
    ref = "IsActive" if "IsActive" in datasets else next((n for n in schema.RAW_STATIC_NAMES if n in datasets), None)
    if ref is not None:
        grid = datasets[ref].shape
        if len(grid) != 3:
            problems.append((schema.raw_path(ref), f"shape {grid}, expected 3 dims (Z, Y, X)"))
            grid = None
    for name in schema.RAW_STATIC_NAMES:
        if name in datasets and grid is not None and datasets[name].shape != grid:
            problems.append((schema.raw_path(name), f"shape {datasets[name].shape} differs from the grid {grid} of Input/IsActive"))
    if schema.PARAMS_SCALAR in datasets and datasets[schema.PARAMS_SCALAR].shape != (schema.N_PARAMS,):
        problems.append((schema.raw_path(schema.PARAMS_SCALAR),
                         f"shape {datasets[schema.PARAMS_SCALAR].shape}, expected ({schema.N_PARAMS},)"))
    n_t = None
    for name in schema.DYNAMIC_NAMES:
        if name not in datasets:
            continue
        shape, path = datasets[name].shape, schema.raw_path(name)
        if len(shape) != 4:
            problems.append((path, f"shape {shape}, expected 4 dims (T, Z, Y, X)"))
            continue
        if grid is not None and shape[1:] != grid:
            problems.append((path, f"grid {shape[1:]} differs from the static grid {grid}"))
        if n_t is None:
            n_t = shape[0]
        elif shape[0] != n_t:
            problems.append((path, f"has T={shape[0]} steps but Output/{schema.DYNAMIC_NAMES[0]} has T={n_t}"))
    if n_t is not None:
        if n_timesteps is not None and n_t != n_timesteps:
            problems.append((schema.raw_path(schema.DYNAMIC_NAMES[0]), f"has T={n_t} steps, expected {n_timesteps}"))
        if n_t < 2:
            problems.append((schema.raw_path(schema.DYNAMIC_NAMES[0]), f"has T={n_t} steps, need at least 2"))
        for name in schema.SCALAR_NAMES:
            if name in datasets and datasets[name].shape != (n_t,):
                problems.append((schema.raw_path(name), f"shape {datasets[name].shape}, expected ({n_t},) to match T of Output/Pressure"))
    n_t = n_timesteps if inputs_only else n_t
    if grid is not None and _size_problem(grid, n_t):
        problems.append((schema.raw_path("IsActive"), _size_problem(grid, n_t)))
    return problems, grid, n_t


def clean(a: np.ndarray, fill_value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values with fill / non-finite set to 0, non-finite mask, fill-or-non-finite mask)."""
    nonfinite = ~np.isfinite(a)
    bad = nonfinite | (a == fill_value) if fill_value is not None else nonfinite
    return np.where(bad, np.float32(0), a), nonfinite, bad


def read_dataset(ds: h5py.Dataset, sel=()):
    try:
        return ds[sel]
    except OSError as err:
        raise DatasetProblem(ds.name.lstrip("/"), f"read error, file truncated or corrupt? ({one_line(err)})") from None


def resolved_inputs(f, path, grid, fill_value, desc, inputs_only: bool = False):
    """read_inputs plus the run's resolved description (description.resolve), permeability in m^2.
    ``inputs_only``: a forecast's file, no field scalars and no reports (its start is t = 0)."""
    statics, params, scalars, raw_active, mask = read_inputs(f, grid, fill_value, with_scalars=not inputs_only)
    # a forecast has no first report to compare with Input/Pressure0 (a declared year1 stays valid)
    first_pressure = None if inputs_only else \
        read_dataset(f[schema.raw_path("Pressure")], 0).astype(np.float32)[mask]
    physics = description.resolve(desc or description.Description(), params, statics["PermX"][mask],
                                  statics["Pressure0"][mask], first_pressure, path)
    for name in ("PermX", "PermY", "PermZ"):
        statics[name] = statics[name] * np.float32(physics.permeability_factor)
    return statics, params, scalars, raw_active, mask, physics


def scalars_at_start(scalars):
    """The field scalars at t = 0 of a run whose first report is the end of year 1: the first
    report's rates, nothing produced yet."""
    initial = scalars[:1].copy()
    for name in schema.CUMULATIVE_SCALARS:
        initial[0, schema.SCALAR_NAMES.index(name)] = 0.0
    return initial


def step_reader(dyn, grid, fill_value, raw_active, initial_state, warnings):
    """read_step(t) -> (dynamic grids (N_DYNAMIC, Z, Y, X) float32, fill-or-non-finite mask) of
    prepped step t; step 0 is ``initial_state`` where given (then step t is report t - 1).
    Range warnings go to ``warnings``, once per channel."""
    warned = set()
    shift = int(initial_state is not None)

    def read_step(t):
        if shift and t == 0:
            return initial_state, np.zeros(grid, bool)
        t -= shift
        step = np.empty((len(dyn),) + tuple(grid), np.float32)
        bad_any = np.zeros(grid, bool)
        for c, ds in enumerate(dyn):
            cleaned, nonfinite, bad = clean(read_dataset(ds, t).astype(np.float32), fill_value)
            n = int((nonfinite & raw_active).sum())
            if n:
                raise DatasetProblem(ds.name.lstrip("/"), f"NaN/Inf in {n} active cells at t={t}")
            error, warn = checks.range_problems(schema.DYNAMIC_NAMES[c], cleaned, raw_active & ~bad, f" at t={t}")
            if error:
                raise DatasetProblem(*error.split(": ", 1))
            if warn and c not in warned:
                warned.add(c)
                warnings.extend(warn)
            step[c] = cleaned
            bad_any |= bad
        return step, bad_any

    return read_step


def read_inputs(f, grid, fill_value, with_scalars: bool = True):
    """(static grids by name with fill / non-finite set to 0, ParamsScalar, field scalars (T, 5) or
    None without them, raw IsActive == 1, mask of active cells valid in every static) of a raw file."""
    statics, bad_static = {}, np.zeros(grid, bool)
    raw_active_values = read_dataset(f[schema.raw_path("IsActive")]).astype(np.float32)
    ok = (raw_active_values == 0) | (raw_active_values == 1)
    if fill_value is not None:
        ok |= raw_active_values == fill_value
    if not ok.all():
        wrong = raw_active_values[~ok]
        raise DatasetProblem(schema.raw_path("IsActive"), f"{wrong.size} cells are neither 0 nor 1 (e.g. {wrong[0]!r})")
    raw_active = raw_active_values == 1
    for name in schema.RAW_STATIC_NAMES:
        cleaned, nonfinite, bad = clean(read_dataset(f[schema.raw_path(name)]).astype(np.float32), fill_value)
        n = int((nonfinite & raw_active).sum())
        if n:
            raise DatasetProblem(schema.raw_path(name), f"NaN/Inf in {n} active cells")
        statics[name] = cleaned
        bad_static |= bad
    params = read_dataset(f[schema.raw_path(schema.PARAMS_SCALAR)]).astype(np.float32)
    if not np.isfinite(params).all():
        raise DatasetProblem(schema.raw_path(schema.PARAMS_SCALAR), "NaN/Inf values")
    if not with_scalars:
        return statics, params, None, raw_active, raw_active & ~bad_static
    scalars = np.stack([read_dataset(f[schema.raw_path(n)]).astype(np.float64) for n in schema.SCALAR_NAMES], axis=1)
    for i, name in enumerate(schema.SCALAR_NAMES):
        if not np.isfinite(scalars[:, i]).all():
            raise DatasetProblem(schema.raw_path(name), "NaN/Inf values")
    return statics, params, scalars, raw_active, raw_active & ~bad_static


def structure_problems(path, n_timesteps) -> list[str]:
    try:
        with open_raw(path) as f:
            return [f"{path}: {d}: {w}" for d, w in check_structure(f, n_timesteps)[0]]
    except UserError as err:
        return [str(err)]
    except Exception as err:
        return [f"{path}: (file): not a readable HDF5 file (truncated or not HDF5: {one_line(err)})"]


def grid_and_steps(path) -> tuple[tuple, int]:
    with open_raw(path) as f:
        _, grid, n_t = check_structure(f, None)
    return grid, n_t


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
# the datasets of a raw file, in the order they are written
DATASET_NAMES = schema.RAW_STATIC_NAMES + (schema.PARAMS_SCALAR,) + schema.DYNAMIC_NAMES + schema.SCALAR_NAMES


def run_file_name(index: int) -> str:
    """File name of run ``index``: v2.4_0001.h5, ... (sorted by name = sorted by index)."""
    return f"{schema.SCHEMA_VERSION}_{index:04d}.h5"


def write_raw(path, arrays: dict, attrs: dict, dynamic_chunks=None) -> Path:
    """Write the schema's datasets from ``arrays`` (in their own dtypes) and the file attributes
    ``attrs`` atomically, byte-reproducibly (no HDF5 timestamps). ``dynamic_chunks``: store the
    dynamic grids gzip-compressed in chunks of at most this shape (open-darts: the dev set's layout)."""
    path = Path(path)
    with files.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in DATASET_NAMES:
                data = arrays[name]
                kw = {}
                if dynamic_chunks is not None and name in schema.DYNAMIC_NAMES:
                    kw = {"chunks": tuple(min(c, s) for c, s in zip(dynamic_chunks, data.shape)), "compression": "gzip"}
                f.create_dataset(schema.raw_path(name), data=data, track_times=False, **kw)
            for key, value in attrs.items():
                f.attrs[key] = value
    return path


def write_simulation(path, arrays: dict, dynamic_chunks=None) -> Path:
    """One run as a synth engine's ``simulate`` returns it: the schema's arrays plus ``"_attrs"``
    (the file attributes). Keys starting with "_" other than that are not written."""
    return write_raw(path, arrays, arrays["_attrs"], dynamic_chunks)
