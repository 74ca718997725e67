"""open-darts runs of a sweep's plan (``voxel-ode synth --engine darts --plan``): a base run's
geology and wells, from a file or drawn by (seed, index), with its wells changed by each plan row.

The base comes from a v2.4 file made by open-darts in ``Conventions`` (the darts-dev set, or
``voxel-ode synth --engine darts``): its Input/ grids, ParamsScalar and the wells read off InjRate
(columns, perforated cells, total rates), or from the draw
(``darts_draw.draw_run``). A row changes the run's wells the way ``voxel-ode sweep`` changes the
base's InjRate (``data.plan``: the same naming I1.., P1.. and the same changes), so that
``darts_draw.well_grids`` of the changed run is the sweep's scenario InjRate. Rows may use
``rate_<well>``, ``scale_rates`` and ``shut`` (a shut well is left out of the simulation; its cells
stay IsWell); ``add_well``, ``move_well`` and ``param:`` are refused (one line per row). numpy and
h5py only: no open-darts here.
"""

from __future__ import annotations

import numpy as np

from voxel_ode import schema
from voxel_ode.data import description as desc
from voxel_ode.data import plan, raw
from voxel_ode.synth.darts_conventions import N_PARAMS, SIMULATOR_PERMEABILITY_UNIT, Conventions
from voxel_ode.synth.darts_draw import draw_run, well_grids

# darts_draw's parameter keys in ParamsScalar's dev-set order (entries 0..17; 18..25 are well columns)
PARAM_KEYS = ("t_inj", "q_inj", "q_prod", "hcap", "cond", "gradient", "surface_temperature", "top_depth",
              "logk_mean", "logk_std", "poro_mean", "kv_kh", "corr_h", "corr_v", "n_faults", "fault_log_mult",
              "n_inj", "n_prod")
INT_KEYS = ("n_faults", "n_inj", "n_prod")
SUPPORTED = "rate_<well>, scale_rates, shut"


def run_from_file(path, conv: Conventions = Conventions()) -> tuple[dict, tuple]:
    """(run, grid): the run dict ``darts_model.simulate_run`` takes, rebuilt from a file's Input/."""
    with raw.open_raw(path) as f:
        read = {n: np.asarray(f[schema.raw_path(n)][()]) for n in
                ("IsActive", "FaultId", "PermX", "PermZ", "Porosity", "Temperature0", "InjRate")}
        stored = np.asarray(f[schema.raw_path(schema.PARAMS_SCALAR)][()], np.float64).ravel()
        seed = int(f.attrs.get("seed", -1))
        index = int(f.attrs.get("run_index", -1))
    grid = tuple(int(n) for n in read["IsActive"].shape)
    entries = [float(stored[conv.file_index(e)]) for e in range(N_PARAMS)]
    p = dict(zip(PARAM_KEYS, entries))
    p |= {k: int(round(p[k])) for k in INT_KEYS}
    units = desc.PERMEABILITY_UNITS
    to_md = units[conv.permeability_unit] / units[SIMULATOR_PERMEABILITY_UNIT]
    cell = conv.cell_size_zyx
    active = read["IsActive"] == 1
    run = {"params": p, "active": active, "fault_id": read["FaultId"].astype(np.int32),
           "permx": read["PermX"].astype(np.float64) * to_md, "permz": read["PermZ"].astype(np.float64) * to_md,
           "poro": read["Porosity"].astype(np.float64),
           "depth": p["top_depth"] + (np.arange(grid[0]) + 0.5) * cell[0],
           "temperature_profile": read["Temperature0"][:, 0, 0].astype(np.float64), "cell_size": cell,
           "seed": seed, "index": index}
    # the perforations of the file's InjRate (darts-dev's "wells" attribute gives k1 one past the last)
    run["wells"] = _wells_of(read["InjRate"].astype(np.float64), active)
    return run, grid


def _wells_of(inj_rate, active) -> list:
    """darts_draw's well dicts of an InjRate grid (one per column and sign)."""
    return [{"name": w.name, "inj": w.total > 0, "i": w.x, "j": w.y, "k0": int(w.zs.min()), "k1": int(w.zs.max()),
             "rate": w.total} for w in plan.find_wells(inj_rate, active)]


def base_run(base: dict, grid=None, conv: Conventions = Conventions()) -> tuple[dict, tuple]:
    """(run, grid) of a base: {"file": path} or {"seed": s, "index": i} (drawn on ``grid``)."""
    if "file" in base:
        return run_from_file(base["file"], conv)
    grid = tuple(int(g) for g in grid)
    run = draw_run(grid, base["seed"], base["index"], conv)
    return run | {"seed": int(base["seed"]), "index": int(base["index"])}, grid


def named_wells(run) -> list:
    """The run's wells as ``voxel-ode sweep`` names them in the run's InjRate (data.plan.find_wells)."""
    inj, _ = well_grids(run, run["active"].shape)
    return plan.find_wells(inj, run["active"])


def apply_scenario(run: dict, sc: plan.Scenario) -> dict:
    """A copy of ``run`` with its wells' rates changed by the row (module doc); ValueError (one line)
    for a change open-darts cannot be given here."""
    other = [c for c in sc.changes if c in ("add_well", "move_well") or c.startswith(plan.PARAM_PREFIX)]
    if other:
        raise ValueError(f"{', '.join(other)}: not simulated by synth --engine darts --plan (only {SUPPORTED})")
    named = named_wells(run)
    known = {w.name for w in named}
    missing = [n for n in list(sc.rates) + sc.shut if n not in known]
    if missing:
        raise ValueError(f"no well {missing[0]!r} (wells: {', '.join(sorted(known))})")
    totals = {(w.y, w.x): w.total for w in plan.changed_wells(named, sc)}
    wells = []
    for w in run["wells"]:
        rate = totals.get((w["j"], w["i"]))
        if rate is None:
            raise ValueError(f"well {w['name']} (x={w['i']}, y={w['j']}) has no rate in the base's InjRate")
        if rate != 0 and (rate > 0) != w["inj"]:
            raise ValueError(f"well {w['name']}: a rate of {rate:+.4g} kg/s would turn "
                             f"{'an injector' if w['inj'] else 'a producer'} into the other kind")
        wells.append(dict(w, rate=float(rate)))
    params = dict(run["params"], q_inj=sum(w["rate"] for w in wells if w["inj"]),
                  q_prod=-sum(w["rate"] for w in wells if not w["inj"]))
    return dict(run, wells=wells, params=params)


def load_scenarios(plan_path, run) -> list[plan.Scenario]:
    """Every row of the plan parsed and checked against ``run``; all bad rows at once (PlanError)."""
    def check(sc):
        if not plan.NAME_RE.match(sc.name):
            raise ValueError("name: missing or not made of letters, digits, '_', '-', '.'")
        apply_scenario(run, sc)

    return plan.load_checked(plan_path, check)
