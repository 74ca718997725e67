"""Data prep: raw v2.4 HDF5 -> packed ``*.prepped.h5``, ``stats.json`` and patch indices.

Also ``voxel-ode inspect FILE`` (layout, ranges, active fraction, problems).

How it works
------------
Phase 1 (parallel over simulations, ``--workers``): each simulation is checked
(structure first, from metadata only; then its values while streaming one time
step at a time), packed into a temporary file under ``out_root/.partial-*`` and
summarised into small partial statistics (count / mean / M2 per channel, merged
with Chan's parallel formula, which stays exact in float64 even for Pressure
~1e7 Pa where plain sums of squares lose digits).

Phase 2 (main process): the good simulations are split by sorted name (first
``n_test`` -> test), the packed files are moved into ``train/`` / ``test/``, and
the indices and ``stats.json`` are written last, so a folder without
``stats.json`` is visibly unfinished. A failed run removes its temporary files
and leaves any earlier finished output untouched.

Active cells (the mask used everywhere): raw ``IsActive == 1`` and every channel
is finite and differs from ``fill_value`` (statics, and the dynamic grids at every
step). NaN/Inf at a raw-active cell is an error, not a silent mask.

See docs/design.md for the file layouts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.physics import calibration
from voxel_ode.data import checks
from voxel_ode.data import description
from voxel_ode.physics import priors as well_response
from voxel_ode.utils import UserError, atomic_path, signed_log1p, write_json_atomic

STATS_FORMAT = 1
DEFAULT_PATCH = (32, 32, 32)
DEFAULT_STRIDE = (8, 8, 8)
DEFAULT_N_TEST = 5
DEFAULT_MIN_ACTIVE_FRAC = 0.05
DEFAULT_CHUNK_EDGE = 16  # measured in benchmarks/bench_prep.py (docs/benchmarks.md, "Prep")
COMPRESSIONS = ("none", "lzf", "gzip")
# |delta| quantiles come from a random subsample of active cells, at most this many per sim and channel.
DELTA_SAMPLES_PER_SIM = 100_000
QUANTILES = (0.5, 0.9, 0.99)
# Static channels that may get a log10 transform (strictly positive, > 3 decades over active cells).
# Pressure0/Temperature0 stay linear like the dynamic Pressure/Temperature they start.
LOG_CANDIDATES = tuple(
    f.name for f in schema.RAW_STATIC_FIELDS
    if f.kind == "continuous" and f.name not in ("Pressure0", "Temperature0")
)
LOG_DECADES = 3.0
# Params that are >= 0 with positive values over more than a factor 100 are scale-like
# (support strengths, compressibilities): equal ratios should be equal steps. Linear
# z-scoring put a log-uniform boundary-support strength of 0.001-0.013 all within 0.05
# standard deviations, so the network could not tell closed from weakly supported runs
# (docs/benchmarks.md, "Demo and fidelity").
PARAM_LOG_DECADES = 2.0
MIN_STD = 1e-12


# ---------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------
def axis_origins(n: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis: 0, s, 2s, ... and the last one snapped to ``n - p``.

    The patch is clipped to the axis length when the axis is shorter than it.
    """
    p = min(patch, n)
    starts = list(range(0, n - p + 1, stride))
    if starts[-1] != n - p:  # cover the far edge too
        starts.append(n - p)
    return starts


def effective_patch(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
    return tuple(min(int(p), int(n)) for p, n in zip(patch, shape))


def patch_origins(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int]]:
    """All (z0, y0, x0) patch origins, z outermost. 326x70x76, 32^3, stride 8 -> 38*6*7 = 1596."""
    zs, ys, xs = (axis_origins(n, p, s) for n, p, s in zip(shape, patch, stride))
    return [(z, y, x) for z in zs for y in ys for x in xs]


def patch_active_fractions(mask: np.ndarray, patch, stride) -> tuple[np.ndarray, np.ndarray]:
    """(origins (N, 3) int, active fraction (N,)) for every patch origin, from a 3D summed-area table."""
    pz, py, px = effective_patch(mask.shape, patch)
    starts = [np.array(axis_origins(n, p, s)) for n, p, s in zip(mask.shape, patch, stride)]
    sat = np.zeros(tuple(n + 1 for n in mask.shape), np.int64)
    sat[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    z0, y0, x0 = starts
    z1, y1, x1 = z0 + pz, y0 + py, x0 + px

    def s(a, b, c):
        return sat[np.ix_(a, b, c)]

    count = (s(z1, y1, x1) - s(z0, y1, x1) - s(z1, y0, x1) - s(z1, y1, x0)
             + s(z0, y0, x1) + s(z0, y1, x0) + s(z1, y0, x0) - s(z0, y0, x0))
    grid = np.stack(np.meshgrid(z0, y0, x0, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid, count.reshape(-1) / float(pz * py * px)


# ---------------------------------------------------------------------------
# Streaming statistics
# ---------------------------------------------------------------------------
@dataclass
class Moments:
    """Count, mean, M2 (sum of squared deviations), min, max of one channel; mergeable."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = np.asarray(x, np.float64)
        mean = float(x.mean())
        self.merge(Moments(x.size, mean, float(np.square(x - mean).sum()), float(x.min()), float(x.max())))

    def merge(self, other: "Moments") -> None:
        if other.count == 0:
            return
        n = self.count + other.count
        d = other.mean - self.mean
        self.mean += d * other.count / n
        self.m2 += other.m2 + d * d * self.count * other.count / n
        self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


def _merged(parts: Iterable[Moments]) -> Moments:
    total = Moments()
    for m in parts:
        total.merge(m)
    return total


def _safe_std(std: float) -> float:
    return std if std >= MIN_STD else 1.0  # a constant channel: never divide by zero




def fault_boundary(fault_id: np.ndarray) -> np.ndarray:
    """1 where FaultId differs from one of the 6 face neighbours (neighbours inside the grid only)."""
    out = np.zeros(fault_id.shape, bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        diff = fault_id[tuple(lo)] != fault_id[tuple(hi)]
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out.astype(np.float32)


# ---------------------------------------------------------------------------
# Validation + packing of one simulation
# ---------------------------------------------------------------------------
class _Problem(Exception):
    def __init__(self, dataset: str, what: str):
        super().__init__(f"{dataset}: {what}")
        self.dataset, self.what = dataset, what


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def _check_structure(f: h5py.File, n_timesteps: int | None) -> tuple[list[tuple[str, str]], tuple | None, int | None]:
    """Shape/dtype problems from metadata only: [(dataset, what)], grid (Z, Y, X), T."""
    problems = []
    datasets = {}
    for name in schema.RAW_STATIC_NAMES + (schema.PARAMS_SCALAR,) + schema.DYNAMIC_NAMES + schema.SCALAR_NAMES:
        path = schema.raw_path(name)
        obj = f.get(path)
        if obj is None:
            problems.append((path, "missing dataset"))
        elif not isinstance(obj, h5py.Dataset):
            problems.append((path, "is a group, expected a dataset"))
        elif obj.dtype.kind not in "fiub":
            problems.append((path, f"dtype {obj.dtype} is not numeric"))
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
    return problems, grid, n_t


class _DynamicStats:
    """Streaming Pressure/Temperature and per-step change statistics over one mask."""

    def __init__(self, mask: np.ndarray, n_steps: int, seed: int):
        self.mask = mask
        self.flat_idx = np.flatnonzero(mask)
        self.state = [Moments() for _ in schema.DYNAMIC_NAMES]
        self.delta = [Moments() for _ in schema.DYNAMIC_NAMES]
        self.samples = [[] for _ in schema.DYNAMIC_NAMES]
        self.per_step = math.ceil(DELTA_SAMPLES_PER_SIM / max(n_steps - 1, 1))
        self.rng = np.random.default_rng(seed)
        self.prev = None

    def add(self, step: np.ndarray) -> None:
        """step: (2, Z, Y, X) cleaned values at one time."""
        values = step.reshape(step.shape[0], -1)[:, self.flat_idx]  # (2, n_active)
        for c in range(values.shape[0]):
            self.state[c].add(values[c])
        if self.prev is not None:
            delta = values - self.prev  # float32 difference of close values is exact
            n = delta.shape[1]
            pick = slice(None) if n <= self.per_step else self.rng.integers(0, n, self.per_step)
            for c in range(delta.shape[0]):
                self.delta[c].add(delta[c])
                self.samples[c].append(np.abs(delta[c][pick]).astype(np.float32))
        self.prev = values

    def result(self) -> dict:
        return {
            "state": self.state,
            "delta": self.delta,
            "delta_abs_samples": [np.concatenate(s) if s else np.zeros(0, np.float32) for s in self.samples],
        }


def chunk_shape(grid: Sequence[int], edge: int) -> tuple[int, int, int]:
    """HDF5 chunk (cz, cy, cx) near ``edge`` that splits each axis into equal chunks.

    HDF5 stores edge chunks whole, so 16 on 70 cells would store 80; 14 stores exactly 70.
    """
    return tuple(math.ceil(n / math.ceil(n / edge)) for n in grid)


def _compression_opts(compression) -> dict:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}  # level 1: the fastest gzip
    return {"compression": compression} if compression else {}


def _scan_sim(path, *, fill_value=None, n_timesteps=None, out_path=None, patch=DEFAULT_PATCH,
              stride=DEFAULT_STRIDE, chunk_edge=DEFAULT_CHUNK_EDGE, compression=None,
              desc=None) -> tuple[list[str], dict | None]:
    """Validate one raw file while streaming it; optionally pack it to ``out_path``.

    Returns (problems as one-line strings, summary dict or None). Nothing under
    ``out_path`` survives a problem.
    """
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # h5py raises OSError for truncated / non-HDF5 files
        return [f"{path}: (file): not a readable HDF5 file (truncated or not HDF5: {_one_line(err)})"], None
    try:
        with f:
            structure, grid, n_t = _check_structure(f, n_timesteps)
            if structure:
                return [f"{path}: {d}: {w}" for d, w in structure], None
            if out_path is None or isinstance(out_path, h5py.File):
                return [], _scan_values(f, path, grid, n_t, fill_value, out_path, patch, stride, chunk_edge,
                                        compression, desc)
            with atomic_path(out_path) as tmp:
                summary = _scan_values(f, path, grid, n_t, fill_value, tmp, patch, stride, chunk_edge, compression,
                                       desc)
            return [], summary
    except _Problem as err:
        return [f"{path}: {err.dataset}: {err.what}"], None
    except UserError as err:
        return [str(err) if str(err).startswith(path) else f"{path}: {err}"], None
    except OSError as err:  # a read failed half way (truncated data blocks)
        return [f"{path}: (file): read error, file truncated or corrupt? ({_one_line(err)})"], None


def _clean(a: np.ndarray, fill_value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values with fill / non-finite set to 0, non-finite mask, fill-or-non-finite mask)."""
    nonfinite = ~np.isfinite(a)
    bad = nonfinite | (a == fill_value) if fill_value is not None else nonfinite
    return np.where(bad, np.float32(0), a), nonfinite, bad


def _read(ds: h5py.Dataset, sel=()):
    try:
        return ds[sel]
    except OSError as err:
        raise _Problem(ds.name.lstrip("/"), f"read error, file truncated or corrupt? ({_one_line(err)})") from None


def _valid_cell_size(values) -> bool:
    return len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)


def with_cell_size(desc: description.Description, cell_size) -> description.Description:
    """``desc`` with ``prep --cell_size DX DY DZ`` (m) as its declared cell sizes."""
    if cell_size is None:
        return desc
    quantities = dict(desc.quantities)
    for name, value in zip(description.CELL_SIZE_QUANTITIES, cell_size):
        quantities[name] = {"value": float(value), "unit": "m"}
    return dataclasses.replace(desc, quantities=quantities, source=desc.source + " + --cell_size")


def declared_compressibility(values: dict) -> float | None:
    """Total compressibility (1/Pa) from resolved quantities: TotalCompressibility, else Rock +
    Fluid (either may be absent); None if none is given."""
    if "TotalCompressibility" in values:
        return values["TotalCompressibility"]
    if "RockCompressibility" in values or "FluidCompressibility" in values:
        return values.get("RockCompressibility", 0.0) + values.get("FluidCompressibility", 0.0)
    return None


def reservoir(statics: dict, physics: description.Physics, injection_gap) -> well_response.Reservoir | None:
    """The priors' inputs from a run's static grids (SI units) and declared physics; None when the
    description lacks what they need (cell sizes and the lateral boundary)."""
    if physics.cell_size is None or physics.lateral_boundary is None:
        return None
    v = physics.values
    compressibility = declared_compressibility(v) or well_response.GENERIC_COMPRESSIBILITY
    if "RockHeatCapacityVolumetric" in v:
        rock_heat = v["RockHeatCapacityVolumetric"]
    elif "RockHeatCapacity" in v and "RockDensity" in v:
        rock_heat = v["RockHeatCapacity"] * v["RockDensity"]
    else:
        rock_heat = well_response.GENERIC_ROCK_HEAT_PER_VOLUME
    return well_response.Reservoir(
        np.asarray(statics["IsActive"]) > 0.5, tuple(statics[n] for n in ("PermX", "PermY", "PermZ")),
        statics["Porosity"], statics["Temperature0"], statics["InjRate"], physics.cell_size,
        physics.lateral_boundary, v.get("BoundaryMultiplier", 0.0), compressibility, rock_heat,
        v.get("RockThermalConductivity", well_response.GENERIC_ROCK_CONDUCTIVITY), injection_gap,
        outside_heat_exchange=physics.outside_heat_exchange)


def _calibration_run(path, desc: description.Description, fill_value):
    """(calibration.Run, resolved physics) of one raw file: its static inputs in SI units and its
    true pressure change since t = 0 at every report."""
    with h5py.File(path, "r") as f:
        grid = f[schema.raw_path("IsActive")].shape
        statics, _, _, _, mask, physics = _resolved_inputs(f, path, grid, fill_value, desc)
        pressure = _read(f[schema.raw_path("Pressure")]).astype(np.float64)
    change = pressure[:, mask] - statics["Pressure0"][mask]
    change[:, ~np.isfinite(change).all(axis=0) | (np.abs(change) > 1e9).any(axis=0)] = 0.0  # fill values
    change = np.concatenate([np.zeros_like(change[:1]), change]) if physics.first_report == "year1" else change
    change[0] = 0.0
    perm = tuple(statics[n].astype(np.float64) for n in ("PermX", "PermY", "PermZ"))
    res = well_response.Reservoir(mask, perm, statics["Porosity"], statics["Temperature0"], statics["InjRate"],
                                  (1.0, 1.0, 1.0))
    return calibration.Run(res, change, physics.cell_size), physics


def calibrate_description(desc: description.Description, train_paths, fill_value=None, progress=True) -> description.Description:
    """``desc`` with what the priors lack (cell sizes, compressibility, lateral boundary) fitted on
    a few training runs (calibration.py); unchanged when it declares them or nothing fits."""
    cells = all(q in desc.quantities for q in description.CELL_SIZE_QUANTITIES)
    if (cells and desc.lateral_boundary) or not train_paths:
        return desc
    picks = sorted({train_paths[int(i)] for i in np.linspace(0, len(train_paths) - 1, calibration.N_RUNS).round()})
    runs, physics = [], None
    for path in picks:
        try:
            run, physics = _calibration_run(path, desc, fill_value)
            runs.append(run)
        except (UserError, _Problem, OSError, KeyError, ValueError):
            continue  # the scan names what is wrong with it
    if not runs:
        return desc
    if max(r.true_change.shape[1] for r in runs) > calibration.MAX_CELLS:
        tqdm.write(f"calibration: skipped, more than {calibration.MAX_CELLS} active cells per run (too slow); "
                   "declare the cell sizes and the lateral boundary (description.json) for physics priors",
                   file=sys.stderr)
        return desc
    v = physics.values
    boundary = (physics.lateral_boundary, v.get("BoundaryMultiplier", 0.0)) if physics.lateral_boundary else None
    with tqdm(desc="calibrate", unit="candidate", disable=not progress, leave=False) as bar:
        result = calibration.fit(runs, boundary, declared_compressibility(v), progress=bar.update)
    if result is None:
        tqdm.write("calibration: the pressure changes of the training runs fit no candidate; no physics priors",
                   file=sys.stderr)
        return desc
    dx, dy, dz = result.cell_size
    tqdm.write(f"calibration ({len(runs)} training runs, relative error {result.error:.2f}): cells "
               f"{dx:.3g} x {dy:.3g} x {dz:.3g} m, total compressibility {result.compressibility:.3g} /Pa, "
               f"lateral boundary {result.boundary} x {result.multiplier:g}", file=sys.stderr)
    return calibration.apply(desc, result, len(runs))


def derive_channels(statics: dict, scalars, physics: description.Physics, n_reports: int) -> tuple[dict, np.ndarray | None]:
    """The derived static grids (schema.DERIVED_STATIC_FIELDS) and the per-year priors
    (n_reports, N_PRIORS, Z, Y, X) float16, or None without the physics they need, of one run:
    static grids by name in SI units, field scalars (T, 5), its resolved description."""
    active = np.asarray(statics["IsActive"]) > 0.5
    t_inj = physics.values.get("InjectionTemperature")
    if t_inj is None:
        t_inj = well_response.injection_temperature(scalars)
    gap = np.zeros(active.shape, np.float32)
    if t_inj is not None:
        gap[active] = t_inj - np.asarray(statics["Temperature0"])[active]
    derived = {"FaultBoundary": fault_boundary(statics["FaultId"]), schema.INJECTION_GAP: gap}
    res = reservoir(statics, physics, gap)
    return derived, (None if res is None else well_response.priors(res, n_reports))


def _scan_values(f, path, grid, n_t, fill_value, out_path, patch, stride, chunk_edge, compression,
                 desc=None) -> dict:
    statics, params, scalars, raw_active, mask, physics = _resolved_inputs(f, path, grid, fill_value, desc)
    dyn = [f[schema.raw_path(n)] for n in schema.DYNAMIC_NAMES]
    # physical ranges before any solve: an impossible value must be what the user reads, not a
    # solver's failure on it
    warnings = _physical_problems(statics, mask, scalars, physics.cell_size)
    # A first report at the end of year 1: the run starts from its initial state (Input/*0), so a
    # rollout predicts every report, the first year included.
    prepend = physics.first_report == "year1"
    n_out = n_t + int(prepend)
    if prepend:
        scalars = np.concatenate([_initial_scalars(scalars), scalars])
    initial_state = np.stack([statics[n + "0"] for n in schema.DYNAMIC_NAMES]) if prepend else None
    read_step = _step_reader(dyn, grid, fill_value, raw_active, initial_state, warnings)
    seed = int.from_bytes(Path(path).name.encode()[-8:].rjust(8, b"\0"), "little") % (2**32)
    # out_path: a file name, an already open h5py.File (in-memory packing), or None (validate only)
    own_file = out_path is not None and not isinstance(out_path, h5py.File)
    out = h5py.File(out_path, "w") if own_file else out_path
    try:
        ce, opts = chunk_shape(grid, chunk_edge), _compression_opts(compression)
        grid_ds = None if out is None else out.create_dataset(
            schema.PREPPED_OUTPUTS_GRID, (n_out, schema.N_DYNAMIC) + tuple(grid), np.float32,
            chunks=(1, schema.N_DYNAMIC, *ce), **opts)
        stats, mask = _stream_dynamic(read_step, n_out, mask, seed, grid_ds)
        if not mask.any():
            raise _Problem(schema.raw_path("IsActive"), "no active cell left once the dynamic grids' fill values "
                                                        "are masked")
        statics["IsActive"] = mask.astype(np.float32)
        static_stack, year_priors = _derived(statics, scalars, physics, n_out)
        del statics
        static_raw, static_log = _static_moments(static_stack, mask)
        if out is not None:
            _write_packed(out, path, static_stack, year_priors, params, scalars, physics, fill_value, ce, opts)
    finally:
        if own_file:
            out.close()

    origins, fracs = patch_active_fractions(mask, patch, stride)
    return {
        "path": path, "grid": tuple(int(n) for n in grid), "n_timesteps": int(n_out),
        "n_active": int(mask.sum()), "n_raw_active": int(raw_active.sum()),
        "static_raw": static_raw, "static_log": static_log, "params": params, "scalars": scalars,
        "origins": origins, "active_fracs": fracs, "raw_bytes": os.path.getsize(path),
        "physics": physics.notes, "first_report": physics.first_report, "priors": year_priors is not None,
        "warnings": [f"{path}: {w}" for w in warnings],
        **stats.result(),
    }


def _resolved_inputs(f, path, grid, fill_value, desc):
    """_read_inputs plus the run's resolved description (description.resolve), permeability in m^2."""
    statics, params, scalars, raw_active, mask = _read_inputs(f, grid, fill_value)
    first_pressure = _read(f[schema.raw_path("Pressure")], 0).astype(np.float32)
    physics = description.resolve(desc or description.Description(), params, statics["PermX"][mask],
                                  statics["Pressure0"][mask], first_pressure[mask], path)
    for name in ("PermX", "PermY", "PermZ"):
        statics[name] = statics[name] * np.float32(physics.permeability_factor)
    return statics, params, scalars, raw_active, mask, physics


def _initial_scalars(scalars):
    """The field scalars at t = 0 of a run whose first report is the end of year 1: the first
    report's rates, nothing produced yet."""
    initial = scalars[:1].copy()
    for name in schema.CUMULATIVE_SCALARS:
        initial[0, schema.SCALAR_NAMES.index(name)] = 0.0
    return initial


def _step_reader(dyn, grid, fill_value, raw_active, initial_state, warnings):
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
            cleaned, nonfinite, bad = _clean(_read(ds, t).astype(np.float32), fill_value)
            n = int((nonfinite & raw_active).sum())
            if n:
                raise _Problem(ds.name.lstrip("/"), f"NaN/Inf in {n} active cells at t={t}")
            error, warn = checks.range_problems(schema.DYNAMIC_NAMES[c], cleaned, raw_active & ~bad, f" at t={t}")
            if error:
                raise _Problem(*error.split(": ", 1))
            if warn and c not in warned:
                warned.add(c)
                warnings.extend(warn)
            step[c] = cleaned
            bad_any |= bad
        return step, bad_any

    return read_step


def _derived(statics, scalars, physics, n_out):
    """(static stack (N_STATIC, Z, Y, X), priors or None) with the derived channels of one run."""
    try:
        derived, year_priors = derive_channels(statics, scalars, physics, n_out)
    except UserError:
        raise
    except Exception as err:  # a numerical failure must name the file, never be a traceback
        raise _Problem("(derived channels)", f"physics priors failed ({_one_line(err)}); check the "
                       "permeability, porosity and InjRate values and the dataset description") from None
    statics.update(derived)
    return np.stack([statics[n] for n in schema.STATIC_NAMES]), year_priors


def _write_packed(out, path, static_stack, year_priors, params, scalars, physics, fill_value, ce, opts):
    """The packed file's datasets and attributes besides the outputs grid (written while streaming)."""
    if year_priors is None:  # stats.json says so ("priors": false); zeros keep one layout
        year_priors = np.zeros((len(scalars), schema.N_PRIORS) + static_stack.shape[1:], np.float16)
    out.create_dataset(schema.PREPPED_STATIC, data=static_stack, chunks=(schema.N_STATIC, *ce), **opts)
    out.create_dataset(schema.PREPPED_PRIORS, data=year_priors, chunks=(1, schema.N_PRIORS, *ce), **opts)
    out.create_dataset(schema.PREPPED_PARAMS, data=params)
    out.create_dataset(schema.PREPPED_OUTPUTS_SCALAR, data=scalars)
    out.attrs["source"] = os.path.abspath(path)
    out.attrs["run_name"] = Path(path).name[: -len(".h5")] if path.endswith(".h5") else Path(path).name
    out.attrs["first_report"] = physics.first_report
    if fill_value is not None:
        out.attrs["fill_value"] = float(fill_value)
    out.attrs["schema_version"] = schema.SCHEMA_VERSION


def _read_inputs(f, grid, fill_value):
    """(static grids by name with fill / non-finite set to 0, ParamsScalar, field scalars (T, 5),
    raw IsActive == 1, mask of active cells valid in every static) of a raw file."""
    statics, bad_static = {}, np.zeros(grid, bool)
    raw_active_values = _read(f[schema.raw_path("IsActive")]).astype(np.float32)
    ok = (raw_active_values == 0) | (raw_active_values == 1)
    if fill_value is not None:
        ok |= raw_active_values == fill_value
    if not ok.all():
        wrong = raw_active_values[~ok]
        raise _Problem(schema.raw_path("IsActive"), f"{wrong.size} cells are neither 0 nor 1 (e.g. {wrong[0]!r})")
    raw_active = raw_active_values == 1
    for name in schema.RAW_STATIC_NAMES:
        cleaned, nonfinite, bad = _clean(_read(f[schema.raw_path(name)]).astype(np.float32), fill_value)
        n = int((nonfinite & raw_active).sum())
        if n:
            raise _Problem(schema.raw_path(name), f"NaN/Inf in {n} active cells")
        statics[name] = cleaned
        bad_static |= bad
    params = _read(f[schema.raw_path(schema.PARAMS_SCALAR)]).astype(np.float32)
    if not np.isfinite(params).all():
        raise _Problem(schema.raw_path(schema.PARAMS_SCALAR), "NaN/Inf values")
    scalars = np.stack([_read(f[schema.raw_path(n)]).astype(np.float64) for n in schema.SCALAR_NAMES], axis=1)
    for i, name in enumerate(schema.SCALAR_NAMES):
        if not np.isfinite(scalars[:, i]).all():
            raise _Problem(schema.raw_path(name), "NaN/Inf values")
    return statics, params, scalars, raw_active, raw_active & ~bad_static


def _stream_dynamic(read_step, n_t, mask, seed, grid_ds):
    """Statistics of the dynamic grids over the final mask (fill values in them make cells
    inactive too), writing each step to ``grid_ds`` when given: (_DynamicStats, final mask)."""
    stats = _DynamicStats(mask, n_t, seed)
    bad_dynamic = np.zeros(mask.shape, bool)
    for t in range(n_t):
        step, bad = read_step(t)
        bad_dynamic |= bad
        if grid_ds is not None:
            grid_ds[t] = step
        stats.add(step)
    final_mask = mask & ~bad_dynamic
    if not np.array_equal(final_mask, mask):
        stats = _DynamicStats(final_mask, n_t, seed)
        for t in range(n_t):
            stats.add(read_step(t)[0])
    return stats, final_mask


def _static_moments(static_stack, mask):
    static_raw, static_log = [], []
    for c in range(schema.N_STATIC):
        values = static_stack[c][mask].astype(np.float64)
        m = Moments()
        m.add(values)
        static_raw.append(m)
        lm = Moments()
        positive = values[values > 0]
        if positive.size == values.size:  # log only meaningful when every active value is > 0
            lm.add(np.log10(positive))
        static_log.append(lm)
    return static_raw, static_log


def _physical_problems(statics: dict, mask, scalars, cell_size) -> list[str]:
    """Warnings ("dataset: what") of one run's statics (SI units) and scalars; raises _Problem for the
    impossible. ``cell_size``: declared (m) or None."""
    error, warnings = checks.grid_problems(statics, mask, cell_size)
    if error:
        raise _Problem(*error.split(": ", 1))
    return warnings + checks.scalar_warnings(scalars)


def validate_raw(path, fill_value=None, n_timesteps=None, desc=None) -> list[str]:
    """Problems of one raw v2.4 file, each one line "file: dataset: what is wrong" (empty list = fine).

    Reads the whole file (one time step at a time) to find NaN/Inf in active cells. ``desc``: the
    dataset description (default: description.json next to the file, if any).
    """
    desc = desc if desc is not None else description.find(Path(path).parent)
    problems, _ = _scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, desc=desc)
    return problems


def prepare_arrays(path, fill_value=None, n_timesteps=None, desc=None) -> dict:
    """One raw v2.4 file -> the arrays prep would pack, in memory (no file written).

    Keys: static (N_STATIC, Z, Y, X) float32, params_scalar (26,) float32,
    outputs_grid (T, 2, Z, Y, X) float32, outputs_scalar (T, 5) float64,
    priors (T, N_PRIORS, Z, Y, X) float16 (see priors(); dataset.prior_pair gives float32 pairs).
    Raises UserError with the first problem of a bad file.
    """
    with h5py.File(f"prepare-arrays-{os.getpid()}-{id(path)}", "w", driver="core", backing_store=False) as mem:
        problems, _ = _scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, out_path=mem, desc=desc)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(problems[0] + more)
        return {key: mem[name][()] for key, name in (
            ("static", schema.PREPPED_STATIC), ("params_scalar", schema.PREPPED_PARAMS),
            ("outputs_grid", schema.PREPPED_OUTPUTS_GRID), ("outputs_scalar", schema.PREPPED_OUTPUTS_SCALAR),
            ("priors", schema.PREPPED_PRIORS))} | {"first_report": mem.attrs["first_report"]}


# ---------------------------------------------------------------------------
# Prep
# ---------------------------------------------------------------------------
def _process_sim(job: dict) -> tuple[str, list[str], dict | None]:
    """Worker entry point (top level so a process pool can pickle it)."""
    problems, summary = _scan_sim(
        job["path"], fill_value=job["fill_value"], n_timesteps=job["n_timesteps"], out_path=job["out_path"],
        patch=job["patch"], stride=job["stride"], chunk_edge=job["chunk_edge"], compression=job["compression"],
        desc=job["desc"],
    )
    return job["path"], problems, summary


def _transform_for(name: str, raw: Moments, log: Moments) -> str:
    if name in LOG_CANDIDATES and raw.count and raw.min > 0 and log.count == raw.count \
            and math.log10(raw.max / raw.min) > LOG_DECADES:
        return "log10"
    return "none"


def _vector_stats(values: np.ndarray, names: Sequence[str], allow_log: bool) -> dict:
    """mean/std per column of a (n, C) array; log10 for scale-like columns (see PARAM_LOG_DECADES).

    A log column's "floor" (half its smallest positive value) stands in for zeros, so a
    run with e.g. closed boundaries (strength 0) sits just below the weakest positive one.
    """
    transforms, floors, means, stds = [], [], [], []
    for c in range(values.shape[1]):
        col = values[:, c].astype(np.float64)
        positive = col[col > 0]
        use_log = (allow_log and col.min() >= 0 and positive.size >= 2
                   and math.log10(positive.max() / positive.min()) > PARAM_LOG_DECADES)
        floor = float(positive.min()) / 2 if use_log else None
        x = np.log10(np.maximum(col, floor)) if use_log else col
        transforms.append("log10" if use_log else "none")
        floors.append(floor)
        means.append(float(x.mean()))
        stds.append(_safe_std(float(x.std())))
    return {"names": list(names), "transform": transforms, "floor": floors, "mean": means, "std": stds}


def _signed_log1p_stats(values: np.ndarray, names: Sequence[str]) -> dict:
    x = signed_log1p(values.astype(np.float64))
    return {"names": list(names), "transform": ["signed_log1p"] * len(names),
            "mean": [float(v) for v in x.mean(axis=0)], "std": [_safe_std(float(v)) for v in x.std(axis=0)]}


def compute_stats(train: list[dict], rel_train: list[str], rel_test: list[str], fill_value, patches: dict) -> dict:
    """Combine the per-simulation partial statistics of the training split into the stats.json dict."""
    grid, n_t = train[0]["grid"], train[0]["n_timesteps"]
    if sum(s["n_active"] for s in train) == 0:
        raise UserError("stats: training split has no active cells")
    static = {"names": list(schema.STATIC_NAMES), "transform": [], "mean": [], "std": []}
    for c, name in enumerate(schema.STATIC_NAMES):
        if name == schema.INJECTION_GAP:
            # Signed and heavy-tailed (0-150 K): the Normalizer scales it like the temperature target.
            static["transform"].append("asinh")
            static["mean"].append(0.0)
            static["std"].append(1.0)
            continue
        raw = _merged(s["static_raw"][c] for s in train)
        log = _merged(s["static_log"][c] for s in train)
        tr = _transform_for(name, raw, log)
        m = log if tr == "log10" else raw
        static["transform"].append(tr)
        static["mean"].append(m.mean)
        static["std"].append(_safe_std(m.std))
    state = [_merged(s["state"][c] for s in train) for c in range(schema.N_DYNAMIC)]
    delta = [_merged(s["delta"][c] for s in train) for c in range(schema.N_DYNAMIC)]
    samples = [np.concatenate([s["delta_abs_samples"][c] for s in train]) for c in range(schema.N_DYNAMIC)]
    quantiles = {str(q): [float(np.quantile(samples[c], q)) if samples[c].size else 0.0
                          for c in range(schema.N_DYNAMIC)] for q in QUANTILES}
    scalars = np.concatenate([s["scalars"] for s in train])  # (n_train * T, 5)
    cumulative = [schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_SCALARS]
    increments = np.concatenate([np.diff(s["scalars"][:, cumulative], axis=0) for s in train])
    return {
        "format": STATS_FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "grid_shape": list(grid),
        "n_timesteps": n_t,
        "fill_value": fill_value,
        "train_sims": rel_train,
        "test_sims": rel_test,
        "static": static,
        "dynamic": {"names": list(schema.DYNAMIC_NAMES), "mean": [m.mean for m in state],
                    "std": [_safe_std(m.std) for m in state]},
        "delta": {"names": list(schema.DYNAMIC_NAMES), "mean": [m.mean for m in delta],
                  "std": [_safe_std(m.std) for m in delta], "abs_quantiles": quantiles,
                  "per_sim_rms": [[math.sqrt(s["delta"][c].m2 / s["delta"][c].count + s["delta"][c].mean ** 2)
                                   if s["delta"][c].count else 0.0 for c in range(schema.N_DYNAMIC)] for s in train]},
        "params": _vector_stats(np.stack([s["params"] for s in train]), schema.PARAM_NAMES, allow_log=True),
        "scalars": _signed_log1p_stats(scalars, schema.SCALAR_NAMES),
        "scalar_increments": _signed_log1p_stats(increments, schema.CUMULATIVE_SCALARS),
        "patches": patches,
        "priors": _all_or_none([s["priors"] for s in train], "physics priors"),
    }


def _all_or_none(flags, what) -> bool:
    if any(flags) and not all(flags):
        raise UserError(f"prep: {what} could be computed for some training runs only: declare the same "
                        "quantities for every run (voxel-ode inspect FILE --description D shows what each run gives)")
    return bool(flags and flags[0])


def _write_index(path: Path, sims: list[tuple[str, dict]], min_active_frac: float, patch) -> int:
    """One line per (sim, t, kept patch); returns the number of lines."""
    n_lines = 0
    with atomic_path(path) as tmp, open(tmp, "w", buffering=1 << 20) as out:
        for rel, s in sims:
            pz, py, px = effective_patch(s["grid"], patch)
            keep = s["active_fracs"] >= min_active_frac
            # The patch part of each line is the same for every t: format it once per sim.
            tails = [f'"z0": {z}, "z1": {z + pz}, "y0": {y}, "y1": {y + py}, "x0": {x}, "x1": {x + px}, '
                     f'"active_frac": {round(float(a), 4)}}}\n'
                     for (z, y, x), a in zip(s["origins"][keep].tolist(), s["active_fracs"][keep])]
            head = '{"sim_path": ' + json.dumps(rel) + ', "t": '
            for t in range(s["n_timesteps"] - 1):
                prefix = f"{head}{t}, "
                out.writelines(prefix + tail for tail in tails)
                n_lines += len(tails)
    return n_lines


def _run_name(path: Path) -> str:
    return path.name[: -len(".h5")] if path.name.endswith(".h5") else path.stem


def _structure_problems(path, n_timesteps) -> list[str]:
    try:
        with h5py.File(path, "r") as f:
            return [f"{path}: {d}: {w}" for d, w in _check_structure(f, n_timesteps)[0]]
    except Exception as err:
        return [f"{path}: (file): not a readable HDF5 file (truncated or not HDF5: {_one_line(err)})"]


def _grid_and_steps(path) -> tuple[tuple, int]:
    with h5py.File(path, "r") as f:
        _, grid, n_t = _check_structure(f, None)
    return grid, n_t


def _refuse_or_skip(problems: list[str], skip_bad: bool, skipped: list[str]) -> None:
    """Without --skip_bad a bad file stops the run with one line; with it, warn and go on."""
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    if not skip_bad:
        raise UserError(problems[0] + more)
    tqdm.write(f"warning: skipping {problems[0]}{more}", file=sys.stderr)
    skipped.append(problems[0] + more)


def prep(input_root, out_root, patch_size=DEFAULT_PATCH, stride=DEFAULT_STRIDE, n_test=DEFAULT_N_TEST,
         min_active_frac=DEFAULT_MIN_ACTIVE_FRAC, fill_value=None, skip_bad=False, workers=1,
         n_timesteps=None, chunk_edge=DEFAULT_CHUNK_EDGE, compression=None, progress=True, cell_size=None,
         description_path=None, calibrate=True) -> dict:
    """Raw v2.4 files in ``input_root`` -> packed files, stats.json and indices in ``out_root``.
    ``calibrate``: fit the constants the priors need and the description lacks on training runs.

    Returns a summary dict (sims per split, skipped files, patch counts, throughput).
    """
    start = time.perf_counter()
    input_root, out_root = Path(input_root), Path(out_root)
    patch_size, stride = tuple(int(v) for v in patch_size), tuple(int(v) for v in stride)
    compression = None if compression in (None, "none") else compression
    cell_size = None if cell_size is None else tuple(float(v) for v in cell_size)
    _check_prep_args(input_root, out_root, patch_size, stride, n_test, min_active_frac, workers, chunk_edge,
                     compression, cell_size)
    desc = with_cell_size(description.find(input_root, description_path), cell_size)
    raw_files = sorted(input_root.glob(schema.RAW_FILE_GLOB), key=lambda p: p.name)
    if not raw_files:
        raise UserError(f"{input_root}: no raw files matching {schema.RAW_FILE_GLOB}")
    skipped = []
    candidates, n_timesteps = _same_layout(raw_files, n_timesteps, skip_bad, skipped)
    if calibrate:  # the training split: every file after the first n_test, by name
        desc = calibrate_description(desc, [str(p) for p in candidates[n_test:]], fill_value, progress)

    # what a killed prep left (its .partial-PID folder, temporary stats/index files)
    checks.clean_leftovers(out_root, log=lambda msg: tqdm.write(msg, file=sys.stderr))
    partial = out_root / f".partial-{os.getpid()}"
    out_paths = {str(p): str(partial / (_run_name(p) + schema.PREPPED_SUFFIX)) for p in candidates}
    jobs = [{"path": str(p), "out_path": out_paths[str(p)], "fill_value": fill_value, "n_timesteps": n_timesteps,
             "patch": patch_size, "stride": stride, "chunk_edge": chunk_edge, "compression": compression,
             "desc": desc}
            for p in candidates]
    try:
        partial.mkdir(parents=True, exist_ok=True)
        good = _scan_all(jobs, workers, progress, skip_bad, skipped)
        if not good:
            raise UserError(f"{input_root}: no valid simulations ({len(skipped)} skipped)")
        names = sorted(good, key=lambda p: Path(p).name)
        n_test_eff = min(n_test, len(names))
        if len(names) - n_test_eff < 1:
            raise UserError(f"{input_root}: {len(names)} valid simulations leave none for training with --n_test {n_test}")
        splits = {"test": names[:n_test_eff], "train": names[n_test_eff:]}
        rel = _place_packed(out_root, splits, out_paths)
        patches = _write_indices(out_root, splits, rel, good, patch_size, stride, min_active_frac)
        stats = compute_stats([good[p] for p in splits["train"]], [rel[p] for p in splits["train"]],
                              [rel[p] for p in splits["test"]], fill_value, patches)
        stats.update(skipped=skipped, description=desc.to_dict(), description_source=desc.source,
                     physics={rel[p]: good[p]["physics"] for p in names})
        write_json_atomic(out_root / schema.STATS_FILE, stats)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

    seconds = time.perf_counter() - start
    raw_bytes = sum(s["raw_bytes"] for s in good.values())
    return {
        "out_root": str(out_root), "train": [rel[p] for p in splits["train"]], "test": [rel[p] for p in splits["test"]],
        "skipped": skipped, "patches": patches, "raw_bytes": raw_bytes, "seconds": seconds,
        "mb_per_s": raw_bytes / 1e6 / seconds if seconds > 0 else float("inf"),
        "description_source": desc.source, "priors": stats["priors"], "physics": good[names[0]]["physics"],
    }


def _check_prep_args(input_root, out_root, patch_size, stride, n_test, min_active_frac, workers, chunk_edge,
                     compression, cell_size) -> None:
    if len(patch_size) != 3 or len(stride) != 3 or min(patch_size) < 1 or min(stride) < 1:
        raise UserError(f"prep: --patch_size and --stride need 3 positive integers, got {patch_size} and {stride}")
    if not 0.0 <= min_active_frac <= 1.0:
        raise UserError(f"prep: --min_active_frac must be in [0, 1], got {min_active_frac}")
    if n_test < 0 or workers < 1 or chunk_edge < 1:
        raise UserError("prep: --n_test must be >= 0, --workers and --chunk_edge >= 1")
    if cell_size is not None and not _valid_cell_size(cell_size):
        raise UserError(f"prep: --cell_size needs 3 positive numbers (m), got {cell_size}")
    if compression is not None and compression not in COMPRESSIONS:
        raise UserError(f"prep: --compression must be one of {COMPRESSIONS}, got {compression!r}")
    if not input_root.is_dir():
        raise UserError(f"{input_root}: input_root is not a directory")
    if out_root.resolve() == input_root.resolve():
        raise UserError(f"{out_root}: out_root must differ from input_root")


def _same_layout(raw_files, n_timesteps, skip_bad, skipped) -> tuple[list, int | None]:
    """(files that pass the cheap metadata check, T). All must share the grid and T of the first
    good one (by sorted name), so a bad shape stops the run before any heavy work."""
    reference, candidates = None, []
    for p in raw_files:
        problems = _structure_problems(p, n_timesteps)
        if not problems:
            grid, n_t = _grid_and_steps(p)
            if reference is None:
                reference = (grid, n_t)
                n_timesteps = n_t
            elif grid != reference[0]:
                problems = [f"{p}: {schema.raw_path('Pressure')}: grid {grid} differs from {reference[0]} "
                            f"of {candidates[0].name}"]
        if problems:
            _refuse_or_skip(problems, skip_bad, skipped)
        else:
            candidates.append(p)
    return candidates, n_timesteps


def _scan_all(jobs, workers, progress, skip_bad, skipped) -> dict:
    """Scan and pack every job's file (in ``workers`` processes); {path: summary} of the good ones."""
    good = {}

    def handle(path, problems, summary):
        if problems:
            _refuse_or_skip(problems, skip_bad, skipped)
        else:
            for warning in summary["warnings"]:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            good[path] = summary

    # closed on error too: an error message then starts its own line, not the bar's
    with tqdm(total=len(jobs), desc="prep", unit="sim", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                handle(*_process_sim(job))
                bar.update()
            return good
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = [pool.submit(_process_sim, job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    handle(*fut.result())
                    bar.update()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return good


def _place_packed(out_root: Path, splits: dict, out_paths: dict) -> dict:
    """Move the packed files into out_root/{train,test}/; {raw path: relative packed path}. The
    folder is unfinished from here until stats.json appears."""
    for stale in [out_root / schema.STATS_FILE] + [out_root / schema.INDEX_FILE.format(split=s) for s in schema.SPLITS]:
        stale.unlink(missing_ok=True)
    rel = {}
    for split, paths in splits.items():
        (out_root / split).mkdir(parents=True, exist_ok=True)
        keep = set()
        for p in paths:
            fname = _run_name(Path(p)) + schema.PREPPED_SUFFIX
            os.replace(out_paths[p], out_root / split / fname)
            rel[p] = f"{split}/{fname}"
            keep.add(fname)
        for old in (out_root / split).glob("*" + schema.PREPPED_SUFFIX):
            if old.name not in keep:  # left over from an earlier run with other inputs
                old.unlink()
    return rel


def _write_indices(out_root, splits, rel, good, patch_size, stride, min_active_frac) -> dict:
    """Patch indices of both splits; the stats' "patches" section."""
    ref = good[splits["train"][0]]
    n_origins = len(ref["origins"])
    kept, total = {}, {}
    for split in schema.SPLITS:
        sims = [(rel[p], good[p]) for p in splits[split]]
        kept[split] = _write_index(out_root / schema.INDEX_FILE.format(split=split), sims, min_active_frac, patch_size)
        total[split] = n_origins * (ref["n_timesteps"] - 1) * len(sims)
    return {"patch_size": list(effective_patch(ref["grid"], patch_size)), "stride": list(stride),
            "min_active_frac": min_active_frac, "origins_per_sim": n_origins, "kept": kept, "total": total}


def load_stats(path) -> dict:
    """Read stats.json (a file, or the prepped root holding it) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / schema.STATS_FILE
    try:
        with open(path) as f:
            stats = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: stats: file not found (did prep finish?)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: stats: not valid JSON ({err})") from None
    if not isinstance(stats, dict) or stats.get("format") != STATS_FORMAT:
        raise UserError(f"{path}: format: expected format {STATS_FORMAT}, got {stats.get('format') if isinstance(stats, dict) else None!r}")
    for key in ("static", "dynamic", "delta", "params", "scalars", "scalar_increments", "patches"):
        if key not in stats:
            raise UserError(f"{path}: {key}: missing section")
    if stats["static"]["names"] != list(schema.STATIC_NAMES):
        raise UserError(f"{path}: static: channel names {stats['static']['names']} differ from schema.STATIC_NAMES")
    checks.validate_stats(stats, path)  # an edited file: NaN, zero scales, unknown transforms, shapes
    return stats


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def add_prep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input_root", required=True, help=f"folder with raw {schema.RAW_FILE_GLOB} files")
    parser.add_argument("--out_root", required=True, help="output folder (train/, test/, stats.json, index_*.jsonl)")
    parser.add_argument("--patch_size", type=int, nargs=3, default=list(DEFAULT_PATCH), metavar=("Z", "Y", "X"),
                        help="cells of one training patch (the patch index lists their origins)")
    parser.add_argument("--stride", type=int, nargs=3, default=list(DEFAULT_STRIDE), metavar=("Z", "Y", "X"),
                        help="cells between the origins of neighbouring patches")
    parser.add_argument("--n_test", type=int, default=DEFAULT_N_TEST, help="first N runs by sorted name go to test")
    parser.add_argument("--min_active_frac", type=float, default=DEFAULT_MIN_ACTIVE_FRAC,
                        help="skip patches with a smaller fraction of active cells (0 keeps all)")
    parser.add_argument("--fill_value", type=float, default=None,
                        help="value marking inactive cells in the raw export (e.g. -999); such cells count as inactive")
    parser.add_argument("--skip_bad", action="store_true", help="skip bad files with a warning instead of stopping")
    parser.add_argument("--workers", type=int, default=1, help="simulations processed in parallel")
    parser.add_argument("--n_timesteps", type=int, default=None,
                        help=f"expected T (default: from the first file; the real data has {schema.N_TIMESTEPS})")
    parser.add_argument("--chunk_edge", type=int, default=DEFAULT_CHUNK_EDGE, help="HDF5 chunk edge (cells) of packed grids")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="none", help="HDF5 compression of packed grids")
    parser.add_argument("--cell_size", type=float, nargs=3, default=None, metavar=("DX", "DY", "DZ"),
                        help="cell sizes in m (overrides the description's CellSizeX/Y/Z; the physics priors need them)")
    parser.add_argument("--description", default=None, metavar="JSON",
                        help="the dataset description (units, time of the first report, physical constants; "
                             f"voxel_ode/description.py). Default: INPUT_ROOT/{description.FILE_NAME} if present, "
                             "else nothing declared (then the priors' constants are calibrated)")
    parser.add_argument("--no_calibration", action="store_true",
                        help="where the description lacks cell sizes or the lateral boundary, compute no physics "
                             "priors instead of fitting them on training runs (default: fit; calibration.py)")


def run_prep(args) -> int:
    summary = prep(args.input_root, args.out_root, patch_size=args.patch_size, stride=args.stride,
                   n_test=args.n_test, min_active_frac=args.min_active_frac, fill_value=args.fill_value,
                   skip_bad=args.skip_bad, workers=args.workers, n_timesteps=args.n_timesteps,
                   chunk_edge=args.chunk_edge, compression=args.compression, cell_size=args.cell_size,
                   description_path=args.description, calibrate=not args.no_calibration)
    p = summary["patches"]
    print(f"prep: description: {summary['description_source']}; physics priors: "
          f"{'yes' if summary['priors'] else 'no (cell sizes or the lateral boundary neither declared nor calibrated)'}")
    for item, note in summary["physics"].items():  # the first run's; every run's are in stats.json
        print(f"prep:   {item}: {note}")
    print(f"prep: {len(summary['train'])} train, {len(summary['test'])} test simulations, "
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


def _print_layout(f: h5py.File) -> None:
    print("layout:")

    def show(name, obj):
        if isinstance(obj, h5py.Dataset):
            print(f"  {name:<40} {str(obj.shape):<24} {obj.dtype}")

    f.visititems(show)
    for key, value in f.attrs.items():
        print(f"  @{key} = {value}")


def _fmt_range(m: Moments) -> str:
    return f"[{m.min:.6g}, {m.max:.6g}]" if m.count else "(no active cells)"


def _inspect_prepped(path: str) -> list[str]:
    problems = []
    with h5py.File(path, "r") as f:
        _print_layout(f)
        need = (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID, schema.PREPPED_OUTPUTS_SCALAR)
        missing = [n for n in need if n not in f]
        if missing:
            return [f"{path}: {n}: missing dataset" for n in missing]
        static, grid = f[schema.PREPPED_STATIC], f[schema.PREPPED_OUTPUTS_GRID]
        if static.ndim != 4 or static.shape[0] != schema.N_STATIC:
            return [f"{path}: {schema.PREPPED_STATIC}: shape {static.shape}, expected ({schema.N_STATIC}, Z, Y, X)"]
        if grid.shape[1:] != (schema.N_DYNAMIC,) + static.shape[1:]:
            return [f"{path}: {schema.PREPPED_OUTPUTS_GRID}: shape {grid.shape} does not match /static {static.shape}"]
        mask = static[schema.STATIC_NAMES.index("IsActive")] == 1
        print(f"active cells: {int(mask.sum())} of {mask.size} ({100 * mask.mean():.1f}%)")
        print("ranges over active cells:")
        for c, name in enumerate(schema.STATIC_NAMES):
            m = Moments()
            m.add(static[c][mask])
            print(f"  static/{name:<28} {_fmt_range(m)}")
        state = [Moments() for _ in schema.DYNAMIC_NAMES]
        for t in range(grid.shape[0]):
            step = grid[t]
            for c in range(schema.N_DYNAMIC):
                values = step[c][mask]
                if not np.isfinite(values).all():
                    problems.append(f"{path}: {schema.PREPPED_OUTPUTS_GRID}: NaN/Inf in active cells at t={t}")
                state[c].add(values)
        for name, m in zip(schema.DYNAMIC_NAMES, state):
            print(f"  outputs_grid/{name:<22} {_fmt_range(m)}")
    return problems


def _inspect_raw(path: str, fill_value, n_timesteps, description_path=None) -> list[str]:
    try:
        with h5py.File(path, "r") as f:
            _print_layout(f)
    except Exception:
        pass  # _scan_sim reports it as a problem
    desc = description.find(Path(path).parent, description_path)
    problems, s = _scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, desc=desc)
    if s is not None:
        n_cells = int(np.prod(s["grid"]))
        print(f"grid (Z, Y, X) = {s['grid']}, T = {s['n_timesteps']}")
        print(f"active cells: {s['n_active']} of {n_cells} ({100 * s['n_active'] / n_cells:.1f}%)"
              f"; raw IsActive==1: {s['n_raw_active']}")
        print("ranges over active cells:")
        for name, m in zip(schema.STATIC_NAMES, s["static_raw"]):
            print(f"  {name:<32} {_fmt_range(m)}")
        for name, m in zip(schema.DYNAMIC_NAMES, s["state"]):
            print(f"  {name:<32} {_fmt_range(m)}")
        for name, m in zip(schema.DYNAMIC_NAMES, s["delta"]):
            print(f"  {name + ' change per step':<32} {_fmt_range(m)}")
        for i, name in enumerate(schema.SCALAR_NAMES):
            print(f"  {name:<32} [{s['scalars'][:, i].min():.6g}, {s['scalars'][:, i].max():.6g}]")
        print(f"  {'ParamsScalar':<32} [{s['params'].min():.6g}, {s['params'].max():.6g}]")
        print(f"patch origins for 32^3 at stride 8: {len(s['origins'])}")
        print(f"description: {desc.source}; physics priors: {'yes' if s['priors'] else 'no'}")
        for item, note in s["physics"].items():
            print(f"  {item:<32} {note}")
        problems += [f"warning: {w}" for w in s["warnings"]]
    return problems


def run_inspect(args) -> int:
    path = args.file
    if not os.path.exists(path):
        raise UserError(f"{path}: (file): no such file")
    print(f"file: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    prepped = False
    try:
        with h5py.File(path, "r") as f:
            prepped = schema.PREPPED_OUTPUTS_GRID in f
    except Exception:
        pass
    problems = _inspect_prepped(path) if prepped else _inspect_raw(path, args.fill_value, args.n_timesteps,
                                                                    args.description)
    if problems:
        print("problems:")
        for p in problems:
            print(f"  {p}")
        # unusual values are listed, but only impossible ones fail the file
        return 1 if any(not p.startswith("warning: ") for p in problems) else 0
    print("problems: none")
    return 0
