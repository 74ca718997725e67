"""open-darts runs (``voxel-ode synth --engine darts``): one draw as an open-darts 2.0.0 model, run.

* ``IAPWSPhysics``: water (H2O), state [p, T] (``StateSpecification.PT``), IAPWS-95 density and
  enthalpy from DARTS-flash, liquid viscosity ``MaoDuan2009``; rock compressibility 1e-6 1/bar,
  water conductivity 0.6 W/(m K); TPFA, gravity on.
* Grid Z x Y x X with the conventions' cell sizes (dev set: dz = 5 m, dy = dx = 50 m); cells outside
  the active layer are removed (``actnum``); with a "pore_volume" boundary the active lateral boundary
  cells (first/last X and Y) get the conventions' multiple of their pore volume (dev set: 1000x),
  with a "closed" one nothing (no flow through the box sides).
* Wells: DARTS EPM well (head + body), vertical, Peaceman index, 0.2 m diameter, mass-rate control;
  injectors at T_inj with max BHP = fresh-water hydrostatic pressure at the box bottom + 150 bar,
  producers with min BHP 20 bar.
* Time: ``n_steps`` years, a report every 365 days; adaptive steps inside (first 0.01 d, x4, <= 60 d).
  ``simulate`` returns the simulator's arrays (t = 0 included, permeability in mD, ParamsScalar in
  the dev set's order); ``darts_conventions.file_arrays`` turns them into the file's.
* Initial state: hydrostatic with IAPWS-95 density (discrete equilibrium of cell centres) and a
  linear geothermal gradient from the surface.

Worker process only (``synth.open_darts`` starts it): open-darts bundles a newer libstdc++ than the
system's and must be imported before numpy, so this module imports ``darts.engines`` first and
nothing outside the worker imports this module.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import darts.engines  # noqa: F401, I001  (before numpy, see the module doc)
import numpy as np
from darts.engines import well_control_iface
from darts.models.darts_model import DartsModel
from darts.nonlinear_solvers import NewtonSolver, OBLBoundsSpec
from darts.physics.base.physics import PhysicsBase
from darts.physics.base.property_container import PropertyContainer
from darts.physics.iapws_physics import IAPWSPhysics
from darts.physics.properties.basic import ConstFunc, PhaseRelPerm
from darts.physics.properties.eos_properties import EoSDensity, EoSEnthalpy
from darts.physics.properties.viscosity import MaoDuan2009
from darts.reservoirs.struct_reservoir import StructReservoir
from darts.tools.hdf5_tools import load_hdf5_to_dict
from dartsflash.mixtures import IAPWS, CompData, DARTSFlash, EoS

from voxel_ode import schema
from voxel_ode.data import raw
from voxel_ode.data.plan import parse_row
from voxel_ode.synth.darts_conventions import (DYNAMIC_CHUNKS, OBL_STEPS, P_SURFACE,
                                               REPORT_DAYS, ROCK_COMPRESSIBILITY_PER_BAR,
                                               WATER_CONDUCTIVITY, WELL_DIAMETER, Conventions, file_arrays)
from voxel_ode.synth.darts_draw import draw_run, hydrostatic_profile, params_vector, well_grids
from voxel_ode.synth.darts_plan import apply_scenario, base_run

GRAVITY = schema.GRAVITY
SECONDS_PER_DAY = 86400.0


def _build_model(grid, run, workdir, conv: Conventions):
    """The open-darts model of one draw, initialised, writing its well output to ``workdir``."""
    nz = grid[0]
    dz = run["cell_size"][0]
    p = run["params"]

    class Model(DartsModel):
        def __init__(self):
            super().__init__()
            self.verbose = self.VERBOSE_SILENT
            self.timer.node["initialization"].start()
            _set_reservoir(self, grid, run)
            _set_iapws_physics(self)
            # hydrostatic initial state with the simulator's own IAPWS-95 density
            p_top = P_SURFACE + 1000.0 * GRAVITY * p["top_depth"] * 1e-5
            t_prof = run["temperature_profile"]
            self.p_profile = hydrostatic_profile(run["depth"], t_prof,
                                                 lambda pb, tk: self.liquid_density.evaluate(pb, tk, [1.0]), p_top)
            bottom = p["top_depth"] + nz * dz
            self.inj_bhp = P_SURFACE + 1000.0 * GRAVITY * bottom * 1e-5 + conv.injector_limit
            self.ts_control.dt_first = 0.01
            self.ts_control.dt_mult = 4.0
            self.ts_control.dt_max = 60.0
            self.timer.node["initialization"].stop()

        def set_wells(self, verbose=None):
            _add_wells(self, grid, run, conv)

        def set_initial_conditions(self):
            self.physics.set_initial_conditions_from_depth_table(
                self.reservoir.mesh, input_distribution={"pressure": self.p_profile.copy(),
                                                         "temperature": run["temperature_profile"].copy()},
                input_depth=run["depth"].copy())

        def set_well_controls(self):
            _set_well_controls(self, run, conv)

        def set_solver(self):
            p_max = self.inj_bhp + 100.0
            t_max = float(run["temperature_profile"].max()) + 30.0
            self.nonlinear_solver = NewtonSolver(
                tolerance=1e-4, max_iterations=20,
                obl_bounds=OBLBoundsSpec(mode="obl_axes", axis_min=[1.0, 274.0], axis_max=[p_max, t_max]))
            super().set_solver()

    model = Model()
    model.init()
    model.set_output(output_folder=str(workdir), save_initial=False, verbose=0)
    return model


def _set_reservoir(model, grid, run):
    """``model.reservoir``: the structured grid with the draw's rock; inactive cells removed."""
    nz, ny, nx = grid
    dz, dy, dx = run["cell_size"]
    p = run["params"]
    # DARTS orders cells with X fastest, then Y, then Z: our [Z, Y, X] arrays in C order.
    depth = np.broadcast_to(run["depth"][:, None, None], grid).ravel()
    model.reservoir = StructReservoir(
        model.timer, nx=nx, ny=ny, nz=nz, dx=dx, dy=dy, dz=dz,
        permx=run["permx"].ravel(), permy=run["permx"].ravel(), permz=run["permz"].ravel(),
        poro=run["poro"].ravel(), depth=depth, start_z=p["top_depth"],
        rcond=p["cond"] * 86.4, hcap=p["hcap"], actnum=run["active"].astype(np.int32).ravel())


def _set_iapws_physics(model):
    """``model.physics``: IAPWS water in a [p, T] state (module doc), and the handles the run needs
    later: liquid density, the IAPWS equation of state, the molar mass."""
    phases, components = ["V", "L"], ["H2O"]
    model.physics = IAPWSPhysics(phases, model.timer, state_spec=PhysicsBase.StateSpecification.PT,
                                 axes_step=list(OBL_STEPS), axes_origin=[1.0, 273.15])
    mixture = IAPWS(iapws_ideal=True, ice_phase=False)
    mixture.init_flash(flash_type=DARTSFlash.FlashType.PTFlash)
    model.physics.set_mixture(mixture)
    comp_data = CompData(components=components, setprops=True)
    pc = PropertyContainer(phases_name=phases, components_name=components, Mw=comp_data.Mw, eps_z=1e-12,
                           rock_comp=ROCK_COMPRESSIBILITY_PER_BAR)
    model.physics.add_property_region(pc)
    pc.flash_ev = model.physics.get_flash_ev()
    pc.density_ev = {"V": EoSDensity(eos=mixture.eos["IAPWS"], root_flag=EoS.RootFlag.MAX),
                     "L": EoSDensity(eos=mixture.eos["IAPWS"], root_flag=EoS.RootFlag.MIN)}
    pc.viscosity_ev = {"V": ConstFunc(0.01), "L": MaoDuan2009(components)}
    pc.enthalpy_ev = {"V": model.physics.get_enthalpy_ev_from_flash(phase_idx=0),
                      "L": model.physics.get_enthalpy_ev_from_flash(phase_idx=1)}
    pc.rel_perm_ev = {"V": PhaseRelPerm("gas", swc=0.0), "L": PhaseRelPerm("oil", swc=0.0)}
    pc.conductivity_ev = {"V": ConstFunc(0.0), "L": ConstFunc(WATER_CONDUCTIVITY * 86.4)}
    model.liquid_density = pc.density_ev["L"]
    model.iapws = mixture.eos["IAPWS"]
    model.molar_mass = float(comp_data.Mw[0])  # g/mol


def _add_wells(model, grid, run, conv: Conventions):
    """The draw's wells and perforations; with a "pore_volume" boundary, the lateral boundary cells'
    pore volume x ``conv.boundary_multiplier``."""
    if conv.lateral_boundary == "pore_volume":
        _multiply_side_volumes(model, grid, conv.boundary_multiplier)
    for w in run["wells"]:
        if w["rate"] == 0:  # shut (a plan's row): not opened; its cells stay IsWell in the file
            continue
        model.reservoir.add_well(w["name"], well_diameter=WELL_DIAMETER)
        for kk in range(w["k0"], w["k1"] + 1):
            model.reservoir.add_perforation(w["name"], (w["i"] + 1, w["j"] + 1, kk + 1),
                                            well_diameter=WELL_DIAMETER)


def _multiply_side_volumes(model, grid, multiplier):
    """Multiply the volume of the active cells on the box's lateral sides, in place in the mesh."""
    nz, ny, nx = grid
    # a view of open-darts' value_vector (buffer protocol); NumPy 2 raises rather than copy here
    mesh_volume = np.array(model.reservoir.mesh.volume, copy=False)
    l2g = np.asarray(model.reservoir.discretizer.local_to_global)[: model.reservoir.mesh.n_res_blocks]
    k, j, i = np.unravel_index(l2g, grid)
    lateral = (i == 0) | (i == nx - 1) | (j == 0) | (j == ny - 1)
    expected = mesh_volume[: len(l2g)][lateral] * multiplier
    mesh_volume[: len(l2g)][lateral] = expected
    if not np.array_equal(np.array(model.reservoir.mesh.volume, copy=True)[: len(l2g)][lateral], expected):
        raise RuntimeError("open-darts did not take the side cells' multiplied volumes")


def _set_well_controls(model, run, conv: Conventions):
    """Mass-rate control: injectors at T_inj under a max BHP, producers above a min BHP."""
    p = run["params"]
    spec = {w["name"]: w for w in run["wells"]}
    for well in model.reservoir.wells:
        w = spec[well.name]
        target = abs(w["rate"]) * SECONDS_PER_DAY  # kg/day
        if w["inj"]:
            model.physics.set_well_controls(well.control, well_control_iface.MASS_RATE, True, target,
                                            inj_composition=[], inj_temp=p["t_inj"])
            model.physics.set_well_controls(well.constraint, well_control_iface.BHP, True, model.inj_bhp,
                                            inj_composition=[], inj_temp=p["t_inj"])
        else:
            model.physics.set_well_controls(well.control, well_control_iface.MASS_RATE, False, target)
            model.physics.set_well_controls(well.constraint, well_control_iface.BHP, False, conv.producer_limit)


def simulate(grid, seed: int, index: int, n_steps: int, workdir, conv: Conventions = Conventions()) -> dict:
    """Run one draw with open-darts for ``n_steps`` years; return the simulator's arrays (the
    initial state and every year's end: darts_conventions.SIM_STATIC and the comment below it)."""
    grid = tuple(int(g) for g in grid)
    return simulate_run(grid, draw_run(grid, seed, index, conv), n_steps, workdir, conv, seed, index)


def simulate_run(grid, run: dict, n_steps: int, workdir, conv: Conventions = Conventions(), seed: int = -1,
                 index: int = -1) -> dict:
    """Run a given run (``darts_draw.draw_run``'s dict, or ``darts_plan``'s base with a plan row's
    wells) with open-darts for ``n_steps`` years; the simulator's arrays as ``simulate``'s."""
    grid = tuple(int(g) for g in grid)
    model = _build_model(grid, run, workdir, conv)
    p0, t0, out_p, out_t = _run_reports(model, run, grid, n_steps)
    scalars, report_days = _field_scalars(model, run, n_steps)
    inj_rate, is_well = well_grids(run, grid)
    sim = {
        "FaultId": run["fault_id"].astype(np.int32),
        "IsActive": run["active"].astype(np.uint8),
        "IsWell": is_well,
        "InjRate": inj_rate.astype(np.float32),
        "PermX": run["permx"],
        "PermY": run["permx"],
        "PermZ": run["permz"],
        "Porosity": run["poro"].astype(np.float32),
        "Pressure0": p0.astype(np.float32),
        "Temperature0": t0.astype(np.float32),
        "ParamsScalar": params_vector(run),
        "Pressure": out_p,
        "Temperature": out_t,
    }
    return sim | scalars | {"report_days": report_days, "wells": run["wells"], "seed": seed, "index": index}


def _run_reports(model, run, grid, n_steps):
    """Run ``n_steps`` years; return the initial pressure (Pa) and temperature (K) grids and the
    state at t = 0 and at the end of each year (float32, n_steps + 1; removed cells keep their
    initial values)."""
    nb = model.reservoir.mesh.n_res_blocks
    l2g = np.asarray(model.reservoir.discretizer.local_to_global)[:nb]
    p0 = np.broadcast_to(model.p_profile[:, None, None], grid).astype(np.float64) * 1e5  # Pa
    t0 = np.broadcast_to(run["temperature_profile"][:, None, None], grid).astype(np.float64)
    out_p = np.empty((n_steps + 1,) + grid, np.float32)
    out_t = np.empty((n_steps + 1,) + grid, np.float32)
    out_p[0], out_t[0] = p0, t0
    for r in range(1, n_steps + 1):
        model.run(REPORT_DAYS, save_reservoir_data=False, verbose=0)
        x = np.array(model.physics.engine.X, copy=True)[: 2 * nb]
        pr, tr = p0.ravel().copy(), t0.ravel().copy()
        pr[l2g] = x[0::2] * 1e5
        tr[l2g] = x[1::2]
        out_p[r], out_t[r] = pr.reshape(grid), tr.reshape(grid)
    return p0, t0, out_p, out_t


def _field_scalars(model, run, n_steps):
    """The five field scalars (schema.SCALAR_NAMES, float64) at t = 0 and at each year's end, and
    those times (days), from the rates at the wells' head connections over every simulator time
    step. At t = 0: the rates of the first time step (0.01 day) and no energy produced yet."""
    output = model.output
    h5 = load_hdf5_to_dict(output.well_filepath)
    _, head_conns, _, head_trans = output.get_wellhead_perf_connection_info()
    mass = output.calc_rates_at_conns(h5, head_conns, head_trans, True, "phase_mass_rates").sum(axis=2)
    times = np.asarray(h5["dynamic"]["time"], np.float64)
    mass = mass / SECONDS_PER_DAY  # kg/day -> kg/s
    # Energy: mass rate x IAPWS-95 specific enthalpy (h ~ 0 at the triple point) of the water that
    # crosses the head connection (the well head block for injectors, the well body for producers).
    # calc_rates_at_conns(..., "advective_heat_rates") gave 7-22 % less than that in open-darts 2.0.0.
    enthalpy = EoSEnthalpy(eos=model.iapws, root_flag=EoS.RootFlag.MIN)
    cell_id = list(np.asarray(h5["dynamic"]["cell_id"]))
    xs = np.asarray(h5["dynamic"]["X"])  # (n_ts, n_cells, 2): pressure (bar), temperature (K)
    heat = np.zeros_like(mass)
    for n, well in enumerate(model.reservoir.wells):
        cell = cell_id.index(well.well_head_idx if mass[:, n].mean() > 0 else well.well_body_idx)
        h = np.array([enthalpy.evaluate(pb, tk, [1.0]) for pb, tk in xs[:, cell, :2]])  # kJ/kmol
        heat[:, n] = mass[:, n] * h / model.molar_mass * 1e3  # W
    names = [w.name for w in model.reservoir.wells]
    is_inj = np.array([next(w for w in run["wells"] if w["name"] == n)["inj"] for n in names])
    # sign convention of DARTS connection rates: whatever it is, injectors and producers have opposite signs
    e_prod = np.abs(heat[:, ~is_inj]).sum(axis=1)
    dts = np.diff(np.concatenate([[0.0], times])) * SECONDS_PER_DAY
    e_total = np.cumsum(e_prod * dts)
    report_times = REPORT_DAYS * np.arange(1, n_steps + 1)
    at = np.array([0] + [int(np.argmin(np.abs(times - tr))) for tr in report_times])
    if np.max(np.abs(times[at[1:]] - report_times)) > 1e-6:
        raise RuntimeError("simulator time steps do not end on the report times")
    e_total = np.concatenate([[0.0], e_total[at[1:]]])
    scalars = {
        "FieldEnergyInjectionRate": np.abs(heat[at][:, is_inj]).sum(axis=1),
        "FieldEnergyProductionRate": e_prod[at],
        "FieldEnergyProductionTotal": e_total,
        "FieldWaterInjectionRate": np.abs(mass[at][:, is_inj]).sum(axis=1),
        "FieldWaterProductionRate": np.abs(mass[at][:, ~is_inj]).sum(axis=1),
    }
    return scalars, np.concatenate([[0.0], report_times])


def worker_main(argv=None) -> int:
    """Entry of a worker process: ``job`` JSON on argv (with "conventions": Conventions.to_dict();
    a plan's scenario: "base" and "row" instead of "seed" and "index"); writes one file, prints its path."""
    job = json.loads((argv or sys.argv)[1])
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="darts-run-", dir=job.get("tmp")))
    try:
        conv = Conventions.from_dict(job["conventions"])
        if "row" in job:  # a plan's scenario on a base run (synth.darts_plan)
            run, grid = base_run(job["base"], job["grid"], conv)
            run = apply_scenario(run, parse_row(job["row"], 1))
            sim = simulate_run(grid, run, job["n_steps"], workdir, conv, run["seed"], run["index"])
        else:
            sim = simulate(job["grid"], job["seed"], job["index"], job["n_steps"], workdir, conv)
        arrays = file_arrays(sim, conv)
        if "row" in job:
            arrays["_attrs"] |= {"scenario": json.dumps(job["row"]), "base": json.dumps(job["base"])}
        path = raw.write_simulation(job["path"], arrays, DYNAMIC_CHUNKS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"VOXEL_ODE_DONE {path} {time.perf_counter() - start:.2f}", flush=True)
    return 0
