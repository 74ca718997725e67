"""One raw run -> its packed arrays and partial statistics: validated while streamed, with the
derived channels (fault boundaries, the injection temperature gap, the physics priors).

Active cells (the mask used everywhere): raw ``IsActive == 1`` and every channel is finite and
differs from ``fill_value`` (statics, and the dynamic grids at every step). NaN/Inf at a
raw-active cell is an error, not a silent mask.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import schema
from voxel_ode.data import checks, description, envelope, index, prepped, raw, start_scalars, stats
from voxel_ode import files
from voxel_ode.physics import priors as physics_priors
from voxel_ode.utils import UserError

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


def scan_sim(path, *, fill_value=None, n_timesteps=None, out_path=None, patch=index.DEFAULT_PATCH,
              stride=index.DEFAULT_STRIDE, chunk_edge=prepped.DEFAULT_CHUNK_EDGE, compression=None,
              desc=None) -> tuple[list[str], dict | None]:
    """Validate one raw file while streaming it; optionally pack it to ``out_path``.

    Returns (problems as one-line strings, summary dict or None). Nothing under
    ``out_path`` survives a problem.
    """
    path = str(path)
    try:
        f = raw.open_raw(path)
    except UserError as err:
        return [str(err)], None
    except Exception as err:  # h5py raises OSError for truncated / non-HDF5 files
        return [f"{path}: (file): not a readable HDF5 file (truncated or not HDF5: {raw.one_line(err)})"], None
    try:
        with f:
            structure, grid, n_t = raw.check_structure(f, n_timesteps)
            if structure:
                return [f"{path}: {d}: {w}" for d, w in structure], None
            if out_path is None or isinstance(out_path, h5py.File):
                return [], _scan_values(f, path, grid, n_t, fill_value, out_path, patch, stride, chunk_edge,
                                        compression, desc)
            with files.atomic_path(out_path) as tmp:
                summary = _scan_values(f, path, grid, n_t, fill_value, tmp, patch, stride, chunk_edge, compression,
                                       desc)
            return [], summary
    except raw.DatasetProblem as err:
        return [f"{path}: {err.dataset}: {err.what}"], None
    except UserError as err:
        return [str(err) if str(err).startswith(path) else f"{path}: {err}"], None
    except OSError as err:  # a read failed half way (truncated data blocks)
        return [f"{path}: (file): read error, file truncated or corrupt? ({raw.one_line(err)})"], None


def reservoir(statics: dict, physics: description.Physics, injection_gap) -> physics_priors.Reservoir | None:
    """The priors' inputs from a run's static grids (SI units) and declared physics; None when the
    description lacks what they need (cell sizes and the lateral boundary)."""
    if physics.cell_size is None or physics.lateral_boundary is None:
        return None
    v = physics.values
    active = np.asarray(statics["IsActive"]) > 0.5
    compressibility = description.declared_compressibility(v) or physics_priors.GENERIC_COMPRESSIBILITY
    if "RockHeatCapacityVolumetric" in v:
        rock_heat = v["RockHeatCapacityVolumetric"]
    elif "RockHeatCapacity" in v and "RockDensity" in v:
        rock_heat = v["RockHeatCapacity"] * v["RockDensity"]
    else:
        rock_heat = physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME
    return physics_priors.Reservoir(
        active, tuple(statics[n] for n in ("PermX", "PermY", "PermZ")),
        statics["Porosity"], statics["Temperature0"], statics["InjRate"], physics.cell_size,
        physics.lateral_boundary, v.get("BoundaryMultiplier", 0.0), compressibility, rock_heat,
        v.get("RockThermalConductivity", physics_priors.GENERIC_ROCK_CONDUCTIVITY), injection_gap,
        outside_heat_exchange=physics.outside_heat_exchange, pressure0=statics["Pressure0"],
        producer_min_bhp=description.bottomhole_limit(physics, "ProducerMinBottomholePressure", statics["Pressure0"], active),
        injector_max_bhp=description.bottomhole_limit(physics, "InjectorMaxBottomholePressure", statics["Pressure0"], active),
        well_radius=v.get("WellRadius", physics_priors.GENERIC_WELL_RADIUS), wellbore=physics.wellbore)


def injection_temperature(physics: description.Physics, scalars) -> float | None:
    """K: declared, else from the field scalars plus the declared or calibrated offset of their
    enthalpy convention; None when nothing is injected."""
    if "InjectionTemperature" in physics.values:
        return physics.values["InjectionTemperature"]
    if scalars is None:  # a forecast's file: no field scalars to read it from
        return None
    t_inj = physics_priors.injection_temperature(scalars)
    return None if t_inj is None else t_inj + physics.values.get("InjectionTemperatureOffset", 0.0)


def derive_channels(statics: dict, scalars, physics: description.Physics, n_reports: int,
                    rates: list | None = None) -> tuple[dict, np.ndarray | None]:
    """The derived static grids (schema.DERIVED_STATIC_FIELDS) and the per-year priors
    (n_reports, N_PRIORS, Z, Y, X) float16, or None without the physics they need, of one run:
    static grids by name in SI units, field scalars (T, 5), its resolved description. ``rates``:
    gets the priors' wells' delivered (injected, produced) kg/s per year (physics_priors.priors)."""
    active = np.asarray(statics["IsActive"]) > 0.5
    t_inj = injection_temperature(physics, scalars)
    gap = np.zeros(active.shape, np.float32)
    if t_inj is not None:
        gap[active] = t_inj - np.asarray(statics["Temperature0"])[active]
    derived = {"FaultBoundary": fault_boundary(statics["FaultId"]), schema.INJECTION_GAP: gap}
    res = reservoir(statics, physics, gap)
    return derived, (None if res is None else physics_priors.priors(res, n_reports, rates))


def _scan_values(f, path, grid, n_t, fill_value, out_path, patch, stride, chunk_edge, compression,
                 desc=None) -> dict:
    statics, params, scalars, raw_active, mask, physics = raw.resolved_inputs(f, path, grid, fill_value, desc)
    dyn = [f[schema.raw_path(n)] for n in schema.DYNAMIC_NAMES]
    # physical ranges before any solve: an impossible value must be what the user reads, not a
    # solver's failure on it
    warnings = _physical_problems(statics, mask, scalars, physics.cell_size)
    # A first report at the end of year 1: the run starts from its initial state (Input/*0), so a
    # rollout predicts every report, the first year included.
    prepend = physics.first_report == "year1"
    n_out = n_t + int(prepend)
    if prepend:
        scalars = np.concatenate([raw.scalars_at_start(scalars), scalars])
    initial_state = np.stack([statics[n + "0"] for n in schema.DYNAMIC_NAMES]) if prepend else None
    read_step = raw.step_reader(dyn, grid, fill_value, raw_active, initial_state, warnings)
    seed = int.from_bytes(Path(path).name.encode()[-8:].rjust(8, b"\0"), "little") % (2**32)
    # out_path: a file name, an already open h5py.File (in-memory packing), or None (validate only)
    own_file = out_path is not None and not isinstance(out_path, h5py.File)
    out = h5py.File(out_path, "w") if own_file else out_path
    try:
        ce, opts = prepped.chunk_shape(grid, chunk_edge), prepped.compression_opts(compression)
        grid_ds = None if out is None else out.create_dataset(
            schema.PREPPED_OUTPUTS_GRID, (n_out, schema.N_DYNAMIC) + tuple(grid), np.float32,
            chunks=(1, schema.N_DYNAMIC, *ce), **opts)
        content = hashlib.sha256(params.tobytes() + scalars.tobytes())  # what tells a copied run
        dynamic, mask = _stream_dynamic(read_step, n_out, mask, seed, grid_ds, content)
        if not mask.any():
            raise raw.DatasetProblem(schema.raw_path("IsActive"), "no active cell left once the dynamic grids' fill values "
                                                        "are masked")
        statics["IsActive"] = mask.astype(np.float32)
        rates = []  # the priors' wells' delivered rates per year
        static_stack, year_priors = _derived(statics, scalars, physics, n_out, rates)
        del statics
        static_raw, static_log = stats.static_moments(static_stack, mask)
        inputs = envelope.run_inputs(static_stack, params, physics.cell_size)
        delivered = start_scalars.delivered_per_report(static_stack, rates)
        start = start_scalars.run_samples(static_stack, scalars, delivered)
        if out is not None:
            prepped.write_packed(out, path, static_stack, year_priors, params, scalars, physics, fill_value, ce, opts,
                                 (desc or description.Description()).to_dict(), delivered)
    finally:
        if own_file:
            out.close()

    origins, fracs = index.patch_active_fractions(mask, patch, stride)
    return {
        "path": path, "grid": tuple(int(n) for n in grid), "n_timesteps": int(n_out),
        "n_active": int(mask.sum()), "n_raw_active": int(raw_active.sum()),
        "static_raw": static_raw, "static_log": static_log, "params": params, "scalars": scalars,
        "origins": origins, "active_fracs": fracs, "raw_bytes": os.path.getsize(path),
        "physics": physics.notes, "first_report": physics.first_report, "priors": year_priors is not None,
        "warnings": [f"{path}: {w}" for w in warnings], "content_sha256": content.hexdigest(), "inputs": inputs,
        "start": start,
        **dynamic.result(),
    }


def _derived(statics, scalars, physics, n_out, rates=None):
    """(static stack (N_STATIC, Z, Y, X), priors or None) with the derived channels of one run."""
    try:
        derived, year_priors = derive_channels(statics, scalars, physics, n_out, rates)
    except UserError:
        raise
    except Exception as err:  # a numerical failure must name the file, never be a traceback
        raise raw.DatasetProblem("(derived channels)", f"physics priors failed ({raw.one_line(err)}); check the "
                       "permeability, porosity and InjRate values and the dataset description") from None
    statics.update(derived)
    return np.stack([statics[n] for n in schema.STATIC_NAMES]), year_priors


def _stream_dynamic(read_step, n_t, mask, seed, grid_ds, digest=None):
    """Statistics of the dynamic grids over the final mask (fill values in them make cells
    inactive too), writing each step to ``grid_ds`` and hashing it into ``digest`` when given:
    (stats.DynamicStats, final mask)."""
    dynamic = stats.DynamicStats(mask, n_t, seed)
    bad_dynamic = np.zeros(mask.shape, bool)
    for t in range(n_t):
        step, bad = read_step(t)
        if digest is not None:
            digest.update(step.tobytes())
        bad_dynamic |= bad
        if grid_ds is not None:
            grid_ds[t] = step
        dynamic.add(step)
    final_mask = mask & ~bad_dynamic
    if not np.array_equal(final_mask, mask):
        dynamic = stats.DynamicStats(final_mask, n_t, seed)
        for t in range(n_t):
            dynamic.add(read_step(t)[0])
    return dynamic, final_mask


def _physical_problems(statics: dict, mask, scalars, cell_size) -> list[str]:
    """Warnings ("dataset: what") of one run's statics (SI units) and scalars; raises raw.DatasetProblem for the
    impossible. ``cell_size``: declared (m) or None."""
    error, warnings = checks.grid_problems(statics, mask, cell_size)
    if error:
        raise raw.DatasetProblem(*error.split(": ", 1))
    return warnings + (checks.scalar_warnings(scalars) if scalars is not None else [])


def validate_raw(path, fill_value=None, n_timesteps=None, desc=None) -> list[str]:
    """Problems of one raw v2.4 file, each one line "file: dataset: what is wrong" (empty list = fine).

    Reads the whole file (one time step at a time) to find NaN/Inf in active cells. ``desc``: the
    dataset description (default: description.json next to the file, if any).
    """
    desc = desc if desc is not None else description.find(Path(path).parent)
    problems, _ = scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, desc=desc)
    return problems


def prepare_arrays(path, fill_value=None, n_timesteps=None, desc=None) -> dict:
    """One raw v2.4 file -> the arrays prep would pack, in memory (no file written).

    Keys: static (N_STATIC, Z, Y, X) float32, params_scalar (26,) float32,
    outputs_grid (T, 2, Z, Y, X) float32, outputs_scalar (T, 5) float64,
    priors (T, N_PRIORS, Z, Y, X) float16 (see physics.priors.priors; features.prior_pair gives float32 pairs).
    Raises UserError with the first problem of a bad file.
    """
    with h5py.File(f"prepare-arrays-{os.getpid()}-{id(path)}", "w", driver="core", backing_store=False) as mem:
        problems, _ = scan_sim(path, fill_value=fill_value, n_timesteps=n_timesteps, out_path=mem, desc=desc)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(problems[0] + more)
        return {key: mem[name][()] for key, name in (
            ("static", schema.PREPPED_STATIC), ("params_scalar", schema.PREPPED_PARAMS),
            ("outputs_grid", schema.PREPPED_OUTPUTS_GRID), ("outputs_scalar", schema.PREPPED_OUTPUTS_SCALAR),
            ("priors", schema.PREPPED_PRIORS))} | {"first_report": mem.attrs["first_report"]} | (
            {"delivered_rates": mem[schema.PREPPED_DELIVERED_RATES][()]} if schema.PREPPED_DELIVERED_RATES in mem else {})


# ---------------------------------------------------------------------------
# Prep
# ---------------------------------------------------------------------------
def process_sim(job: dict) -> tuple[str, list[str], dict | None]:
    """Worker entry point (top level so a process pool can pickle it)."""
    problems, summary = scan_sim(
        job["path"], fill_value=job["fill_value"], n_timesteps=job["n_timesteps"], out_path=job["out_path"],
        patch=job["patch"], stride=job["stride"], chunk_edge=job["chunk_edge"], compression=job["compression"],
        desc=job["desc"],
    )
    return job["path"], problems, summary


def prepare_forecast(path, desc: description.Description, n_reports: int, fill_value=None) -> dict:
    """A raw file holding only Input/ (a run nobody simulated) -> the arrays a forecast starts from,
    prepared as prep prepares a run with the same description: static channels (derived ones
    included), ParamsScalar, the priors of ``n_reports`` years and the preparation record. The
    injection temperature must be declared: a forecast has no field scalars to read it from."""
    path = str(path)
    with raw.open_raw(path) as f:
        problems, grid, _ = raw.check_structure(f, n_reports, inputs_only=True)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{path}: {problems[0][0]}: {problems[0][1]}{more}")
        try:
            statics, params, _, _, mask, physics = raw.resolved_inputs(f, path, grid, fill_value, desc,
                                                                       inputs_only=True)
            _physical_problems(statics, mask, None, physics.cell_size)
        except raw.DatasetProblem as err:
            raise UserError(f"{path}: {err.dataset}: {err.what}") from None
    if injection_temperature(physics, None) is None and (np.asarray(statics["InjRate"])[mask] > 0).any():
        raise UserError(f"{path}: (description): InjectionTemperature: not declared, and a forecast has no field "
                        "scalars to read it from: declare it in the dataset description (a value, or the "
                        "ParamsScalar entry that holds it)")
    statics["IsActive"] = mask.astype(np.float32)
    rates = []  # what the priors' wells deliver: a well held at its bottomhole limit gives less than its rate
    static_stack, year_priors = _derived(statics, None, physics, n_reports, rates)
    record = prepped.preparation_record(desc.to_dict(), year_priors is not None)
    if year_priors is None:  # zeros keep one layout, as in a packed file
        year_priors = np.zeros((n_reports, schema.N_PRIORS) + tuple(grid), np.float16)
    return {"static": static_stack, "params_scalar": params, "priors": year_priors, "first_report": "initial",
            "source": path, "forecast": True, "preparation": record,
            "delivered_rates": start_scalars.delivered_per_report(static_stack, rates)}
