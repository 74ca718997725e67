"""A sweep's plan: rows of changes to a base run's wells and parameters -> inputs-only raw files.

A plan is a CSV file (a header row) or a JSON list of objects, one scenario per row:

    name            unique; letters, digits, ``_ - .`` (it names the scenario's files)
    rate_<well>     the well's total rate in kg/s, signed like InjRate (+ injection, - production);
                    its cells keep their share of it
    scale_rates     multiplies every well's rate (after the rate_ and well changes)
    shut            wells to shut, separated by ``;`` (their InjRate becomes 0; IsWell stays)
    add_well        ``name:x:y:z0:z1:rate`` (``;`` between several): a new well in column (x, y)
                    perforating its active cells z0..z1, the rate split over them by PermX
                    (as synth's open-darts runs split it: PermX x the uniform cell height)
    move_well       ``name:x:y:z0:z1[:rate]``: an existing well to another column (its old cells
                    shut; without a rate it keeps its total)
    param:<Name>    a quantity the checkpoint's dataset description declares through a
                    ParamsScalar entry, in the unit the description gives it

An empty cell means "no change". Changes apply in the order move, add, rate_, shut, scale_rates.
The base's wells are named by kind and C order of their first cell: injectors I1, I2, ...,
producers P1, P2, ... (a well = the cells of one (y, x) column with rates of one sign).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import files, schema
from voxel_ode.data import description, pack, raw
from voxel_ode.data.description import Description
from voxel_ode.data.plan import (
    NAME_RE,
    PARAM_PREFIX,
    Scenario,
    Well,
    WellSpec,
    changed_wells,
    find_wells,
    load_checked,
)
from voxel_ode.utils import UserError

# (data/plan.py: the rows' parsing and the wells' naming and changes, shared with synth --engine darts --plan)


@dataclass
class Base:
    """What a sweep reads from the base run (arrays as stored, indexed (Z, Y, X))."""

    path: Path
    grid: tuple
    inj_rate: np.ndarray
    is_well: np.ndarray
    active: np.ndarray
    permx: np.ndarray
    params: np.ndarray
    wells: list
    param_entries: dict  # quantity name -> its ParamsScalar index (declared by the description)


# ---------------------------------------------------------------------------
# The base run
# ---------------------------------------------------------------------------
def param_entries(desc: Description) -> dict:
    """Quantities the description declares through a ParamsScalar entry -> that entry's index."""
    return {name: spec["param"] for name, spec in desc.quantities.items() if "param" in spec}


def load_base(path, desc: Description) -> Base:
    """The base run's wells, grids and parameters (Input/ only is read)."""
    path = files.regular_file(path, "--base")
    try:
        with raw.open_raw(path) as f:
            problems, grid, _ = raw.check_structure(f, None, inputs_only=True)
            if problems:
                raise UserError(f"{path}: {problems[0][0]}: {problems[0][1]}")
            read = {n: np.asarray(f[schema.raw_path(n)][()]) for n in ("InjRate", "IsWell", "IsActive", "PermX")}
            params = np.asarray(f[schema.raw_path(schema.PARAMS_SCALAR)][()], np.float64).ravel()
    except OSError as err:
        raise UserError(f"{path}: -: cannot open as HDF5 ({raw.one_line(err)})") from None
    active = read["IsActive"] == 1
    inj = read["InjRate"].astype(np.float64)
    return Base(path, tuple(int(n) for n in grid), inj, read["IsWell"].astype(np.float64), active,
                read["PermX"].astype(np.float64), params, find_wells(inj, active), param_entries(desc))


# ---------------------------------------------------------------------------
# The plan file
# ---------------------------------------------------------------------------
def _check_spec(spec: WellSpec, base: Base, column: str) -> None:
    nz, ny, nx = base.grid
    if not (0 <= spec.x < nx and 0 <= spec.y < ny and 0 <= spec.z0 <= spec.z1 < nz):
        raise ValueError(f"{column} {spec.name}: cells x={spec.x}, y={spec.y}, z {spec.z0}..{spec.z1} are outside "
                         f"the grid (x 0..{nx - 1}, y 0..{ny - 1}, z 0..{nz - 1}, z0 <= z1)")
    if not base.active[spec.z0:spec.z1 + 1, spec.y, spec.x].any():
        raise ValueError(f"{column} {spec.name}: cells x={spec.x}, y={spec.y}, z {spec.z0}..{spec.z1} are all inactive")
    taken = [w.name for w in base.wells if (w.y, w.x) == (spec.y, spec.x) and w.name != spec.name]
    if taken:
        raise ValueError(f"{column} {spec.name}: column x={spec.x}, y={spec.y} holds well {taken[0]}")


def check_scenario(sc: Scenario, base: Base, desc: Description) -> None:
    """Raises ValueError with what is wrong with a parsed row on this base and description."""
    if not NAME_RE.match(sc.name):
        raise ValueError("name: missing or not made of letters, digits, '_', '-', '.'")
    names = {w.name for w in base.wells}
    for spec in sc.move:
        if spec.name not in names:
            raise ValueError(f"move_well: no well {spec.name!r} (wells: {', '.join(sorted(names))})")
        _check_spec(spec, base, "move_well")
    for spec in sc.add:
        if spec.name in names or not NAME_RE.match(spec.name):
            raise ValueError(f"add_well: {spec.name!r} is taken or not a valid well name")
        _check_spec(spec, base, "add_well")
        names.add(spec.name)
    for name in list(sc.rates) + sc.shut:
        if name not in names:
            raise ValueError(f"no well {name!r} (wells: {', '.join(sorted(names))})")
    for name, value in sc.params.items():
        if name not in base.param_entries:
            declared = ", ".join(sorted(base.param_entries)) or "none"
            raise ValueError(f"{PARAM_PREFIX}{name}: the checkpoint's description declares no ParamsScalar entry "
                             f"for it (declared: {declared})")
    if sc.params:  # a value outside the physically possible range is refused now, not mid-sweep
        try:
            description.resolve(desc, scenario_params(base, sc), base.permx[base.active], None, None, "plan")
        except UserError as err:
            raise ValueError(str(err).split(": ", 2)[-1].split(": fix")[0]) from None


def load_plan(path, base: Base, desc: Description) -> list[Scenario]:
    """Every row parsed and checked; all bad rows at once (PlanError, one line per row)."""
    return load_checked(path, lambda sc: check_scenario(sc, base, desc))


# ---------------------------------------------------------------------------
# A scenario's inputs
# ---------------------------------------------------------------------------
def _perforate(base: Base, spec: WellSpec, total: float) -> Well:
    """A well of ``total`` kg/s in column (x, y), layers z0..z1, its active cells sharing it by PermX."""
    zs = np.arange(spec.z0, spec.z1 + 1)
    zs = zs[base.active[zs, spec.y, spec.x]]
    weight = np.maximum(base.permx[zs, spec.y, spec.x], 0.0)
    weight = weight / weight.sum() if weight.sum() > 0 else np.full(len(zs), 1.0 / len(zs))
    return Well(spec.name, spec.y, spec.x, zs, total * weight)


def scenario_wells(base: Base, sc: Scenario) -> list[Well]:
    """The scenario's wells (shut ones with zero rates), in the order move, add, rate_, shut, scale."""
    return changed_wells(base.wells, sc, lambda spec, total: _perforate(base, spec, total))


def scenario_params(base: Base, sc: Scenario) -> np.ndarray:
    params = base.params.copy()
    for name, value in sc.params.items():
        params[base.param_entries[name]] = value
    return params


def scenario_grids(base: Base, sc: Scenario) -> tuple[np.ndarray, np.ndarray, list[Well]]:
    """(InjRate, IsWell, wells) of a scenario: the base's grids with every base well's cells
    cleared and the scenario's wells written in. IsWell marks every well's perforations, shut ones
    included (a shut well is still drilled; a run without any IsWell cell is refused by prep's
    checks); a moved well leaves its old cells."""
    inj = base.inj_rate.copy()
    is_well = base.is_well.copy()
    for well in base.wells:
        inj[well.zs, well.y, well.x] = 0.0
    for spec in sc.move:
        old = next(w for w in base.wells if w.name == spec.name)
        is_well[old.zs, old.y, old.x] = 0.0
    wells = scenario_wells(base, sc)
    for well in wells:
        inj[well.zs, well.y, well.x] = well.rates
        is_well[well.zs, well.y, well.x] = 1.0
    return inj, is_well, wells


def write_scenario(base: Base, sc: Scenario, path) -> list[Well]:
    """The scenario's inputs-only raw file at ``path`` (atomic): the base's Input/ with its
    InjRate, IsWell and ParamsScalar replaced (stored dtypes kept), no Output/. Returns its wells."""
    inj, is_well, wells = scenario_grids(base, sc)
    new = {"InjRate": inj, "IsWell": is_well, schema.PARAMS_SCALAR: scenario_params(base, sc)}
    with files.atomic_path(path) as tmp:
        with raw.open_raw(base.path) as src, h5py.File(tmp, "w") as dst:
            src.copy(src[schema.INPUT_GROUP], dst, schema.INPUT_GROUP)
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name, values in new.items():
                ds = dst[schema.raw_path(name)]
                ds[...] = np.asarray(values).reshape(ds.shape).astype(ds.dtype)
    return wells


def forecast_start(path, desc: Description, n_reports: int) -> dict:
    """A scenario file's forecast start, as ``voxel-ode rollout`` prepares an inputs-only file
    (here, torch-free, so that a sweep's worker processes need not import torch)."""
    return pack.prepare_forecast(path, desc, n_reports)
