"""Checks against hostile or damaged input: physical ranges of raw grids, statistics,
model configs, and the leftovers of killed runs.

Kept apart from the stages that call them so each stage needs only a one-line hook,
and every check gives one line naming the file, the dataset or field, and the value.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxel_ode import schema
from voxel_ode.utils import UserError


# ---------------------------------------------------------------------------
# Physical ranges of raw grids
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """Values outside [low, high] are impossible (``open_low``: low itself too); outside
    ``usual`` they are legal but unusual (a warning; ``hint`` says the likely cause)."""

    low: float
    high: float
    open_low: bool
    usual: tuple[float, float]
    hint: str


# Permeability arrives in m^2 (voxel-ode synth, ~1e-16..1e-11) or mD (other simulators,
# ~1e-3..1e5): the impossible range must hold for both. 1e7 mD is 10,000 darcy, far above
# any rock in either unit; zero-permeability cells are legal but rare (barriers).
_PERM = Bounds(0.0, 1e7, False, (1e-22, 1e5), "permeability is m^2 (~1e-16..1e-11) or mD (~1e-3..1e5)")
RAW_BOUNDS = {
    "PermX": _PERM, "PermY": _PERM, "PermZ": _PERM,
    "Porosity": Bounds(0.0, 1.0, False, (1e-3, 0.6), "porosity is a fraction, 0..1"),
    "Pressure0": Bounds(0.0, 1e9, True, (1e4, 2e8), "pressure is in Pa; bar or MPa values look like this"),
    "Pressure": Bounds(0.0, 1e9, True, (1e4, 2e8), "pressure is in Pa; bar or MPa values look like this"),
    "Temperature0": Bounds(0.0, 1000.0, True, (250.0, 700.0), "temperature is in K; deg C values look like this"),
    "Temperature": Bounds(0.0, 1000.0, True, (250.0, 700.0), "temperature is in K; deg C values look like this"),
    "InjRate": Bounds(-math.inf, math.inf, False, (-1e3, 1e3), "InjRate is kg/s per perforated cell"),
}
CELL_SIZE_USUAL = (0.1, 1e4)  # m


def _cell(mask: np.ndarray, k: int) -> tuple:
    return tuple(int(i) for i in np.unravel_index(np.flatnonzero(mask)[k], mask.shape))


def range_problems(name: str, grid: np.ndarray, mask: np.ndarray, where: str = "") -> tuple[str | None, list[str]]:
    """(error or None, warnings) for raw grid ``name`` over the cells of ``mask``, each
    "dataset: what" with the extreme value and one offending cell (z, y, x)."""
    bounds = RAW_BOUNDS.get(name)
    if bounds is None:
        return None, []
    values = grid[mask]
    if values.size == 0:
        return None, []
    dataset = schema.raw_path(name)
    low_bad = values <= bounds.low if bounds.open_low else values < bounds.low
    bad = low_bad | (values > bounds.high)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        side = f"<= {bounds.low:g}" if bounds.open_low else f"< {bounds.low:g}"
        return (f"{dataset}: value {values[k]:.6g} at active cell (z, y, x) = {_cell(mask, k)}{where} "
                f"is impossible ({bad.sum()} active cells {side} or > {bounds.high:g}; {bounds.hint})"), []
    lo, hi = float(values.min()), float(values.max())
    warnings = []
    if lo < bounds.usual[0] or hi > bounds.usual[1]:
        n = int(((values < bounds.usual[0]) | (values > bounds.usual[1])).sum())
        warnings.append(f"{dataset}: {n} active cells{where} outside the usual {bounds.usual[0]:g}..{bounds.usual[1]:g} "
                        f"(range {lo:.6g}..{hi:.6g}; {bounds.hint})")
    return None, warnings


def grid_problems(statics: dict, mask: np.ndarray, cell_size) -> tuple[str | None, list[str]]:
    """(first error or None, warnings) over the static grids of one raw run: ranges, at least
    one active cell and one active well cell, and the cell sizes (m)."""
    if not mask.any():
        return f"{schema.raw_path('IsActive')}: no active cell (the run has nothing to learn or predict)", []
    warnings = []
    for name in RAW_BOUNDS:
        if name in statics and name in schema.RAW_STATIC_NAMES:
            error, warn = range_problems(name, statics[name], mask)
            if error:
                return error, warnings
            warnings += warn
    if not (mask & (statics["IsWell"] > 0.5)).any():
        return f"{schema.raw_path('IsWell')}: no well in an active cell (nothing drives the flow)", warnings
    off_well = mask & (statics["IsWell"] <= 0.5) & (statics["InjRate"] != 0)
    if off_well.any():
        warnings.append(f"{schema.raw_path('InjRate')}: non-zero at {int(off_well.sum())} active cells that are "
                        f"not wells (e.g. {_cell(off_well, 0)})")
    if cell_size is not None and any(not CELL_SIZE_USUAL[0] <= v <= CELL_SIZE_USUAL[1] for v in cell_size):
        warnings.append(f"{schema.raw_path(schema.PARAMS_SCALAR)}: cell sizes {tuple(cell_size)} m outside the usual "
                        f"{CELL_SIZE_USUAL[0]:g}..{CELL_SIZE_USUAL[1]:g} m")
    return None, warnings


def scalar_warnings(scalars: np.ndarray) -> list[str]:
    """Field scalars are positive totals for injection and production alike (schema)."""
    out = []
    for i, name in enumerate(schema.SCALAR_NAMES):
        if (scalars[:, i] < 0).any():
            out.append(f"{schema.raw_path(name)}: negative values (min {scalars[:, i].min():.6g}); "
                       "field rates and totals are positive for injection and production")
    return out


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------
# The parts of stats.json that change a rollout's result (normalization, transforms, the
# change scale from per_sim_rms and the quantiles, the description the derived channels used).
RESULT_KEYS = ("static", "dynamic", "delta", "params", "scalars", "scalar_increments", "description", "priors")
_TRANSFORMS = {"static": {"none", "log10", "asinh"}, "params": {"none", "log10"},
               "scalars": {"none", "signed_log1p"}, "scalar_increments": {"none", "signed_log1p"}}
_SECTIONS = {"static": schema.STATIC_NAMES, "dynamic": schema.DYNAMIC_NAMES, "delta": schema.DYNAMIC_NAMES,
             "params": schema.PARAM_NAMES, "scalars": schema.SCALAR_NAMES,
             "scalar_increments": schema.CUMULATIVE_SCALARS}


def _numbers(value, n: int | None, where: str, positive=False, nonneg=False) -> np.ndarray:
    try:
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise ValueError
        x = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: not a list of numbers ({str(value)[:60]})") from None
    if n is not None and x.shape != (n,):
        raise UserError(f"{where}: shape {x.shape}, expected ({n},)")
    if not np.isfinite(x).all():
        raise UserError(f"{where}: non-finite value {x[~np.isfinite(x)].ravel()[0]}")
    if positive and not (x > 0).all():
        raise UserError(f"{where}: value {x[~(x > 0)].ravel()[0]} is not > 0 (a scale must be positive)")
    if nonneg and not (x >= 0).all():
        raise UserError(f"{where}: negative value {x[x < 0].ravel()[0]}")
    return x


def validate_stats(stats, source) -> None:
    """Every field a Normalizer reads: names, known transforms, shapes, finite means,
    positive scales. Raises UserError "source: section/field: what"."""
    if not isinstance(stats, dict):
        raise UserError(f"{source}: stats: not a JSON object")
    for section, names in _SECTIONS.items():
        sec = stats.get(section)
        where = f"{source}: {section}"
        if not isinstance(sec, dict):
            raise UserError(f"{where}: missing section")
        if "names" in sec and list(sec["names"]) != list(names):
            raise UserError(f"{where}/names: {sec['names']} differ from this version's {list(names)}")
        _numbers(sec.get("mean"), len(names), f"{where}/mean")
        _numbers(sec.get("std"), len(names), f"{where}/std", positive=True)
        transforms = sec.get("transform", ["none"] * len(names))
        if section in _TRANSFORMS:
            if not isinstance(transforms, list) or len(transforms) != len(names):
                raise UserError(f"{where}/transform: expected a list of {len(names)} names")
            unknown = [t for t in transforms if t not in _TRANSFORMS[section]]
            if unknown:
                raise UserError(f"{where}/transform: unknown transform {unknown[0]!r} "
                                f"(known: {sorted(_TRANSFORMS[section])})")
    params = stats["params"]
    floors = params.get("floor") or [None] * len(schema.PARAM_NAMES)
    if len(floors) != len(schema.PARAM_NAMES):
        raise UserError(f"{source}: params/floor: {len(floors)} entries, expected {len(schema.PARAM_NAMES)}")
    for name, tr, floor in zip(schema.PARAM_NAMES, params.get("transform", []), floors):
        if tr == "log10" and not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
            raise UserError(f"{source}: params/floor: {name} is log10-scaled but its floor {floor!r} is not > 0")
    delta = stats["delta"]
    for q, values in (delta.get("abs_quantiles") or {}).items():
        _numbers(values, schema.N_DYNAMIC, f"{source}: delta/abs_quantiles/{q}", nonneg=True)
    rms = delta.get("per_sim_rms")
    if rms is not None:
        x = _numbers(rms, None, f"{source}: delta/per_sim_rms", nonneg=True)
        if x.ndim != 2 or x.shape[1] != schema.N_DYNAMIC:
            raise UserError(f"{source}: delta/per_sim_rms: shape {x.shape}, expected (runs, {schema.N_DYNAMIC})")
    if stats.get("description") is not None:
        from voxel_ode.data.description import Description

        Description.from_dict(stats["description"], f"{source}: description")


def result_part(stats: dict) -> dict:
    return {k: stats.get(k) for k in RESULT_KEYS}


def stats_result_digest(stats: dict) -> str:
    """sha256 of the result-relevant part of stats (RESULT_KEYS), canonical JSON."""
    text = json.dumps(result_part(stats), sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def first_difference(a, b, path: str = "") -> tuple[str, str] | None:
    """(path, "a vs b") of the first place where two JSON-like values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = first_difference(a.get(key), b.get(key), f"{path}/{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return path, f"{len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return None if same else (path, f"{str(a)[:40]} vs {str(b)[:40]}")


def check_same_stats(given: dict, given_src, reference: dict, reference_src, reference_digest: str | None = None) -> None:
    """A stats dict given next to a checkpoint must equal the checkpoint's in every result field."""
    if reference_digest is not None and stats_result_digest(given) == reference_digest:
        return
    diff = first_difference(result_part(given), result_part(reference))
    if diff:
        raise UserError(f"{given_src}: {diff[0]}: values differ from the stats the checkpoint was trained with "
                        f"({reference_src}): {diff[1]} (given vs checkpoint)")


def check_checkpoint_stats(ckpt: dict, ckpt_path) -> None:
    """The stats stored in a checkpoint: valid, and equal to the digest stored beside them."""
    if ckpt.get("delta_mode") not in (None, "asinh", "zscore"):
        raise UserError(f"{ckpt_path}: delta_mode: {ckpt['delta_mode']!r} is not 'asinh' or 'zscore'")
    stats = ckpt.get("stats")
    if stats is None:
        return
    validate_stats(stats, f"{ckpt_path} (stats inside)")
    digest = ckpt.get("stats_digest")
    if digest is not None and digest != stats_result_digest(stats):
        raise UserError(f"{ckpt_path}: stats: the stored stats do not match the digest written with them "
                        "(edited checkpoint?)")


RESUME_KEYS = ("model", "model_config", "optimizer", "scheduler", "step")


def check_resume_checkpoint(ckpt, path, stats: dict, stats_src) -> None:
    """A checkpoint given to `train --resume`: a training checkpoint whose stats are valid and
    equal to the prepped root's (the normalization must not change half way)."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: checkpoint: not a training checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint: missing {missing} (not a training checkpoint?)")
    step = ckpt["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path}: step: {step!r} is not a step count")
    check_checkpoint_stats(ckpt, path)
    if ckpt.get("stats") is not None:
        check_same_stats(stats, stats_src, ckpt["stats"], path, ckpt.get("stats_digest"))


PREPPED_NEEDED = (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID,
                  schema.PREPPED_OUTPUTS_SCALAR, schema.PREPPED_PRIORS)


def check_prepped_files(paths) -> None:
    """Open every prepped file training will read (metadata only: cheap) so a truncated or
    foreign one is one line naming it before any work, not a traceback from a reader later."""
    import h5py

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


# ---------------------------------------------------------------------------
# Model config
# ---------------------------------------------------------------------------
# Sane bounds checked before anything is allocated (a hostile checkpoint could ask for 1 TB).
CONFIG_INT_BOUNDS = {
    "in_channels": (1, 1024), "n_params": (1, 1024), "out_channels": (1, 64), "n_scalars": (0, 64),
    "base_channels": (1, 2048), "depth": (0, 256), "receptive_field_radius": (0, 16), "block_kernel": (1, 15),
    "convs_per_block": (1, 8), "context_factor": (1, 64), "context_channels": (1, 2048),
    "context_stages": (0, 8), "global_dim": (1, 8192),
}
MAX_CONV_PARAMETERS = 2e9  # ~8 GB of fp32 weights: far above anything trained here


def check_config_bounds(config) -> None:
    for name, (lo, hi) in CONFIG_INT_BOUNDS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise UserError(f"model config: {name}: {value!r} is not an integer in [{lo}, {hi}]")
    for name in ("global_context", "mask_features", "channels_last", "priors", "temperature_residual"):
        if not isinstance(getattr(config, name), bool):
            raise UserError(f"model config: {name}: {getattr(config, name)!r} is not true/false")
    # the residual blocks dominate: depth x convs x C^2 x k^3
    approx = config.depth * config.convs_per_block * config.base_channels ** 2 * config.block_kernel ** 3
    if approx > MAX_CONV_PARAMETERS:
        raise UserError(f"model config: about {approx:.3g} parameters (base_channels {config.base_channels}, "
                        f"depth {config.depth}) exceed the limit of {MAX_CONV_PARAMETERS:g}")


# ---------------------------------------------------------------------------
# Leftovers of killed runs
# ---------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else: leave its files alone
    return True


def _pid_suffix(name: str, marker: str) -> int | None:
    tail = name.rsplit(marker, 1)[-1] if marker in name else ""
    return int(tail) if tail.isdigit() else None


def clean_leftovers(folder, log=print) -> list[Path]:
    """Remove what killed runs left in ``folder`` (not below it): temporary files
    ``.NAME.tmp-PID`` (utils.atomic_path) and prep folders ``.partial-PID``, when process PID
    is gone. Those of a live process are named and kept. Returns the removed paths.

    PIDs are checked on this machine only: do not share one output folder between machines.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(".*")):
        if path.is_dir() and path.name.startswith(".partial-"):
            pid = _pid_suffix(path.name, ".partial-")
        elif path.is_file() and ".tmp-" in path.name:
            pid = _pid_suffix(path.name, ".tmp-")
        else:
            continue
        if pid is None:
            continue
        if pid_alive(pid):
            log(f"note: {path} belongs to a running process {pid}: left alone")
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        log(f"note: removed {path}, left by a stopped run (process {pid})")
    return removed
