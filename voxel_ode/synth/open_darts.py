"""`voxel-ode synth --engine darts`: v2.4 training data from open-darts 2.0.0 (TU Delft).

The same recipe as the darts-dev development set (shared/darts-dev/README.md), drawn per
(seed, run index), simulated by a real simulator instead of ``voxel_ode.synth.voxel``'s own:

* ``IAPWSPhysics``: water (H2O), state [p, T] (``StateSpecification.PT``), IAPWS-95 density and
  enthalpy from DARTS-flash, liquid viscosity ``MaoDuan2009``; rock compressibility 1e-6 1/bar,
  water conductivity 0.6 W/(m K); TPFA, gravity on.
* Grid Z x Y x X with dz = 5 m, dy = dx = 50 m; cells outside the active layer are removed
  (``actnum``); the active lateral boundary cells (first/last X and Y) get 1000x pore volume.
* Wells: DARTS EPM well (head + body), vertical, Peaceman index, 0.2 m diameter, mass-rate control;
  injectors at T_inj with max BHP = fresh-water hydrostatic pressure at the box bottom + 150 bar,
  producers with min BHP 20 bar.
* Time: ``n_steps`` reports 365 days apart; adaptive steps inside (first 0.01 d, x4, <= 60 d).
* Initial state: hydrostatic with IAPWS-95 density (discrete equilibrium of cell centres) and a
  linear geothermal gradient from the surface.

Conventions of the files (the dev set's, declared in ``description.json``): permeability in mD,
``Output/*[r]`` = end of year r + 1, inactive cells hold their initial equilibrium value, field
energy rates = absolute IAPWS enthalpy flow (W), ``ParamsScalar`` = the 26 dev-set entries.

open-darts bundles a newer libstdc++ than the system's and must be imported before numpy, so every
simulation runs in its own ``python -c`` process that imports ``darts.engines`` first. Nothing else
in voxel-ode imports darts; this module imports it only inside that worker.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from voxel_ode import schema
from voxel_ode.utils import UserError

DARTS_VERSION = "2.0.0"
MISSING_MESSAGE = "open-darts is not installed: pip install 'voxel-ode[darts]'"
CELL_SIZE = (5.0, 50.0, 50.0)  # dz, dy, dx in m
MIN_GRID = (4, 3, 3)
BOUNDARY_MULTIPLIER = 1000.0
ROCK_COMPRESSIBILITY_PER_BAR = 1e-6
WATER_CONDUCTIVITY = 0.6  # W/(m K)
WELL_DIAMETER = 0.2  # m
INJ_BHP_OVER_HYDROSTATIC = 150.0  # bar
PROD_BHP_MIN = 20.0  # bar
P_SURFACE = 1.01325  # bar
GRAVITY = schema.GRAVITY
REPORT_DAYS = 365.0
OBL_STEPS = (4.0, 1.0)  # bar, K
SECONDS_PER_DAY = 86400.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

PARAM_NAMES = (
    "T_inj_K", "Q_inj_total_kg_s", "Q_prod_total_kg_s", "rock_heat_capacity_kJ_m3_K", "rock_conductivity_W_m_K",
    "geothermal_gradient_K_km", "surface_temperature_K", "top_depth_m", "log10_perm_mean_mD", "log10_perm_std",
    "porosity_mean", "kv_kh_ratio", "corr_len_horizontal_m", "corr_len_vertical_m", "n_faults",
    "log10_fault_perm_mult", "n_injectors", "n_producers", "well1_x_idx", "well1_y_idx", "well2_x_idx",
    "well2_y_idx", "well3_x_idx", "well3_y_idx", "well4_x_idx", "well4_y_idx",
)


def darts_available() -> bool:
    """True when open-darts (and DARTS-flash) can be found, without importing them (see module doc)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("darts", "dartsflash"))
    except (ImportError, ValueError, AttributeError):
        return False


def require_darts() -> None:
    if not darts_available():
        raise UserError(MISSING_MESSAGE)


def description():
    """What these files mean (voxel_ode/description.py): the darts-dev conventions."""
    from voxel_ode.data import description as desc

    dz, dy, dx = CELL_SIZE
    return desc.Description.from_dict({
        "permeability_unit": "mD", "first_report": "year1", "lateral_boundary": "pore_volume",
        "quantities": {
            "CellSizeX": dx, "CellSizeY": dy, "CellSizeZ": dz,
            "BoundaryMultiplier": BOUNDARY_MULTIPLIER,
            "RockCompressibility": {"value": ROCK_COMPRESSIBILITY_PER_BAR, "unit": "1/bar"},
            "FluidCompressibility": {"value": 4.5e-10, "unit": "1/Pa"},  # liquid water, as darts-dev.json
            "InjectionTemperature": {"param": 0, "unit": "K"},
            "RockHeatCapacityVolumetric": {"param": 3, "unit": "kJ/(m^3 K)"},
            "RockThermalConductivity": {"param": 4, "unit": "W/(m K)"},
        }}, "voxel-ode synth --engine darts")


# ---------------------------------------------------------------------------
# Random geology and wells (numpy only; run inside the worker, after darts.engines)
# ---------------------------------------------------------------------------
def _smooth_field(rng, shape, sigma_cells):
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_cells, mode="wrap")
    return (field - field.mean()) / max(field.std(), 1e-12)


def draw_run(grid, seed: int, index: int) -> dict:
    """The random draw of run ``index``: parameters, geology (full grid, [Z, Y, X]) and wells."""
    import numpy as np

    nz = grid[0]
    dz = CELL_SIZE[0]
    # one generator, drawn from in this order: parameters, faults, layer, rock, wells
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    p = _draw_params(rng)
    kk = np.arange(nz)[:, None, None]  # Z index of the cells (broadcasts over Y, X)
    fault_id, side = _draw_faults(rng, grid, p)
    active, top = _draw_layer(rng, grid, kk, side)
    permx, permz, poro = _draw_rock(rng, grid, p, kk, top, fault_id)
    wells = _draw_wells(rng, grid, p, active, fault_id)

    # Initial state: linear gradient from the surface; hydrostatic with IAPWS density (filled in the worker).
    depth = p["top_depth"] + (np.arange(nz) + 0.5) * dz
    temp_profile = p["surface_temperature"] + p["gradient"] * 1e-3 * depth
    return {"params": p, "active": active, "fault_id": fault_id, "permx": permx.astype(np.float64),
            "permz": permz.astype(np.float64), "poro": poro, "wells": wells, "depth": depth,
            "temperature_profile": temp_profile}


def _draw_params(rng) -> dict:
    """The run's scalar parameters, in the dev set's ranges."""
    p = {
        "surface_temperature": rng.uniform(283.0, 293.0),
        "gradient": rng.uniform(25.0, 40.0),  # K/km
        "top_depth": rng.uniform(1500.0, 3000.0),
        "logk_mean": rng.uniform(1.3, 2.7),
        "logk_std": rng.uniform(0.2, 0.8),
        "poro_mean": rng.uniform(0.12, 0.28),
        "kv_kh": rng.uniform(0.05, 0.30),
        "corr_h": rng.uniform(100.0, 500.0),
        "corr_v": rng.uniform(5.0, 30.0),
        "n_faults": int(rng.integers(0, 3)),
        "hcap": rng.uniform(2000.0, 2700.0),  # kJ/(m^3 K)
        "cond": rng.uniform(1.5, 3.5),  # W/(m K)
        "n_inj": int(rng.integers(1, 3)),
        "n_prod": int(rng.integers(1, 3)),
        "q_inj": rng.uniform(15.0, 60.0),
    }
    p["q_prod"] = p["q_inj"] * rng.uniform(0.9, 1.1)
    p["fault_log_mult"] = 0.0
    if p["n_faults"]:
        p["fault_log_mult"] = rng.uniform(-3.0, -1.0) if rng.random() < 0.7 else rng.uniform(1.0, 2.0)
    t_top = p["surface_temperature"] + p["gradient"] * 1e-3 * p["top_depth"]
    p["t_inj"] = rng.uniform(300.0, max(300.0, min(330.0, t_top - 10.0)))
    return p


def _draw_faults(rng, grid, p):
    """FaultId and each cell's summed throw (cells) across the faults it lies beyond: steep planes
    (dip 70-90 deg) through a random point, random strike."""
    import numpy as np

    nz, ny, nx = grid
    dz, dy, dx = CELL_SIZE
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    x, y, z = (ii + 0.5) * dx, (jj + 0.5) * dy, (kk + 0.5) * dz
    fault_id = np.zeros(grid, np.int32)
    side = np.zeros(grid, np.float64)  # summed throw (cells) of the blocks on the far side of faults
    for f in range(p["n_faults"]):
        strike = rng.uniform(0.0, math.pi)
        dip = math.radians(rng.uniform(70.0, 90.0))
        x0, y0 = rng.uniform(0.3, 0.7) * nx * dx, rng.uniform(0.3, 0.7) * ny * dy
        dist = (x - x0) * math.cos(strike) + (y - y0) * math.sin(strike) + (z - nz * dz / 2) / math.tan(dip)
        fault_id[np.abs(dist) < 0.5 * min(dx, dy)] = f + 1
        side += np.where(dist > 0, rng.uniform(-0.25, 0.25) * nz, 0.0)
    return fault_id, side


def _draw_layer(rng, grid, kk, side):
    """Active cells and the layer top (cells, per cell): the layer between smooth top and bottom
    surfaces (20-50 % of the box inactive), offset across faults by ``side``."""
    import numpy as np

    nz, ny, nx = grid
    dz, dy, dx = CELL_SIZE
    inactive = rng.uniform(0.2, 0.5)
    sig_h = (max(1.0, 300.0 / dy), max(1.0, 300.0 / dx))
    top0 = 0.5 * inactive * nz + 0.12 * nz * _smooth_field(rng, (ny, nx), sig_h)
    thick = (1.0 - inactive) * nz * (1.0 + 0.12 * _smooth_field(rng, (ny, nx), sig_h))
    top = top0[None] + side  # per cell: the layer top seen by this cell's fault block
    bottom = top + np.maximum(thick, 2.0)[None]
    active = (kk + 0.5 >= top) & (kk + 0.5 < bottom)
    return active, top


def _draw_rock(rng, grid, p, kk, top, fault_id):
    """PermX (= PermY), PermZ in mD and porosity: a layered term (following the layer) plus a
    correlated 3-D field in log10 k; fault cells scaled by the fault multiplier."""
    import numpy as np

    nz = grid[0]
    dz, dy, dx = CELL_SIZE
    rel = np.clip(np.round(kk + 0.5 - top).astype(int) + nz, 0, 3 * nz - 1)
    layers = _smooth_field(rng, (3 * nz,), max(0.5, p["corr_v"] / dz))[rel]
    sigma = (max(0.5, p["corr_v"] / dz / 2), max(0.5, p["corr_h"] / dy / 2), max(0.5, p["corr_h"] / dx / 2))
    field = _smooth_field(rng, grid, sigma)
    logk = p["logk_mean"] + p["logk_std"] * (0.6 * layers + 0.8 * field)
    logk = np.clip(logk, -1.0, 4.0)
    poro = p["poro_mean"] + 0.03 * (logk - p["logk_mean"]) / p["logk_std"] + 0.01 * rng.standard_normal(grid)
    poro = np.clip(poro, 0.03, 0.35)
    permx = 10.0 ** logk
    permx = np.where(fault_id > 0, permx * 10.0 ** p["fault_log_mult"], permx)
    permz = permx * p["kv_kh"]
    return permx, permz, poro


def _well_columns(grid, n_wells, active, fault_id):
    """(j, i) columns that may hold a well: >= 2 active cells, not in a fault column, >= 3 cells
    from the sides; tiny grids relax the margin, then allow fault columns (the dev set's grid
    never needs this)."""
    import numpy as np

    nz, ny, nx = grid
    ncol_active = active.sum(axis=0)
    fault_col = (fault_id > 0).any(axis=0)
    cand = []
    for margin, avoid_faults in ((3, True), (2, True), (1, True), (1, False)):
        my, mx = min(margin, (ny - 1) // 2), min(margin, (nx - 1) // 2)
        ok = (ncol_active >= 2) & ~(fault_col & avoid_faults)
        ok[:my, :] = ok[ny - my:, :] = False
        ok[:, :mx] = ok[:, nx - mx:] = False
        cand = list(zip(*np.nonzero(ok)))
        if len(cand) >= n_wells:
            break
    if len(cand) < n_wells:
        raise RuntimeError(f"only {len(cand)} columns can hold a well, need {n_wells}")
    return cand


def _draw_wells(rng, grid, p, active, fault_id) -> list:
    """Vertical wells, as far apart as the candidate columns allow, each perforating 60-100 % of
    its column's active cells; the injection and production totals split at random over them."""
    import numpy as np

    n_wells = p["n_inj"] + p["n_prod"]
    cand = _well_columns(grid, n_wells, active, fault_id)
    wells, chosen = [], []
    for w in range(n_wells):
        order = rng.permutation(len(cand))
        for spacing in (4, 3, 2, 1):
            pick = next((cand[o] for o in order
                         if all(max(abs(cand[o][0] - c[0]), abs(cand[o][1] - c[1])) >= spacing for c in chosen)), None)
            if pick is not None:
                break
        if pick is None:
            raise RuntimeError("no free column for a well")
        chosen.append(pick)
        j, i = int(pick[0]), int(pick[1])
        ks = np.nonzero(active[:, j, i])[0]
        n_perf = max(1, int(round(len(ks) * rng.uniform(0.6, 1.0))))
        k0 = int(ks[0] + rng.integers(0, len(ks) - n_perf + 1))
        inj = w < p["n_inj"]
        wells.append({"name": f"I{w + 1}" if inj else f"P{w + 1 - p['n_inj']}", "inj": bool(inj),
                      "i": i, "j": j, "k0": k0, "k1": k0 + n_perf - 1})
    for group, total, sign in ((wells[:p["n_inj"]], p["q_inj"], 1.0), (wells[p["n_inj"]:], p["q_prod"], -1.0)):
        shares = rng.uniform(0.3, 0.7, len(group)) if len(group) > 1 else np.ones(1)
        shares = shares / shares.sum()
        for w, s in zip(group, shares):
            w["rate"] = float(sign * total * s)
    return wells


def hydrostatic_profile(depth, temperature, density_bar_k, p_top_bar):
    """Cell-centre pressures (bar) in discrete equilibrium: p_k - p_{k-1} = g (rho_k + rho_{k-1}) / 2 dz."""
    import numpy as np

    p = np.empty(len(depth))
    d0 = depth[0] - (depth[1] - depth[0]) / 2 if len(depth) > 1 else depth[0]
    p[0] = p_top_bar + density_bar_k(p_top_bar, temperature[0]) * GRAVITY * (depth[0] - d0) * 1e-5
    for _ in range(3):
        p[0] = p_top_bar + density_bar_k(p[0], temperature[0]) * GRAVITY * (depth[0] - d0) * 1e-5
    for k in range(1, len(depth)):
        rho_prev = density_bar_k(p[k - 1], temperature[k - 1])
        p[k] = p[k - 1] + rho_prev * GRAVITY * (depth[k] - depth[k - 1]) * 1e-5
        for _ in range(4):
            rho = density_bar_k(p[k], temperature[k])
            p[k] = p[k - 1] + 0.5 * (rho + rho_prev) * GRAVITY * (depth[k] - depth[k - 1]) * 1e-5
    return p


# ---------------------------------------------------------------------------
# The simulation (worker process only: darts.engines is imported before numpy there)
# ---------------------------------------------------------------------------
def _build_model(grid, run, workdir):
    """The open-darts model of one draw, initialised, writing its well output to ``workdir``."""
    from darts.models.darts_model import DartsModel
    from darts.nonlinear_solvers import NewtonSolver, OBLBoundsSpec

    nz = grid[0]
    dz = CELL_SIZE[0]
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
            self.inj_bhp = P_SURFACE + 1000.0 * GRAVITY * bottom * 1e-5 + INJ_BHP_OVER_HYDROSTATIC
            self.ts_control.dt_first = 0.01
            self.ts_control.dt_mult = 4.0
            self.ts_control.dt_max = 60.0
            self.timer.node["initialization"].stop()

        def set_wells(self, verbose=None):
            _add_wells(self, grid, run)

        def set_initial_conditions(self):
            self.physics.set_initial_conditions_from_depth_table(
                self.reservoir.mesh, input_distribution={"pressure": self.p_profile.copy(),
                                                         "temperature": run["temperature_profile"].copy()},
                input_depth=run["depth"].copy())

        def set_well_controls(self):
            _set_well_controls(self, run)

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
    import numpy as np
    from darts.reservoirs.struct_reservoir import StructReservoir

    nz, ny, nx = grid
    dz, dy, dx = CELL_SIZE
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
    from darts.physics.base.physics import PhysicsBase
    from darts.physics.base.property_container import PropertyContainer
    from darts.physics.iapws_physics import IAPWSPhysics
    from darts.physics.properties.basic import ConstFunc, PhaseRelPerm
    from darts.physics.properties.eos_properties import EoSDensity
    from darts.physics.properties.viscosity import MaoDuan2009
    from dartsflash.mixtures import IAPWS, CompData, DARTSFlash, EoS

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


def _add_wells(model, grid, run):
    """The draw's wells and perforations; the lateral boundary cells' pore volume x BOUNDARY_MULTIPLIER."""
    import numpy as np

    nz, ny, nx = grid
    mesh_volume = np.array(model.reservoir.mesh.volume, copy=False)
    l2g = np.asarray(model.reservoir.discretizer.local_to_global)[: model.reservoir.mesh.n_res_blocks]
    k, j, i = np.unravel_index(l2g, grid)
    lateral = (i == 0) | (i == nx - 1) | (j == 0) | (j == ny - 1)
    mesh_volume[: len(l2g)][lateral] *= BOUNDARY_MULTIPLIER
    for w in run["wells"]:
        model.reservoir.add_well(w["name"], well_diameter=WELL_DIAMETER)
        for kk in range(w["k0"], w["k1"] + 1):
            model.reservoir.add_perforation(w["name"], (w["i"] + 1, w["j"] + 1, kk + 1),
                                            well_diameter=WELL_DIAMETER)


def _set_well_controls(model, run):
    """Mass-rate control: injectors at T_inj under a max BHP, producers above a min BHP."""
    from darts.engines import well_control_iface

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
            model.physics.set_well_controls(well.constraint, well_control_iface.BHP, False, PROD_BHP_MIN)


def simulate(grid, seed: int, index: int, n_steps: int, workdir) -> dict:
    """Run one draw with open-darts; return {short schema name: array} plus "_attrs" (file attributes)."""
    import darts.engines  # noqa: F401  (before numpy, see the module doc)
    import numpy as np

    grid = tuple(int(g) for g in grid)
    run = draw_run(grid, seed, index)
    model = _build_model(grid, run, workdir)
    p0, t0, out_p, out_t = _run_reports(model, run, grid, n_steps)
    scalars, report_times = _field_scalars(model, run, n_steps)
    inj_rate, is_well = _well_grids(run, grid)
    arrays = {
        "FaultId": run["fault_id"].astype(np.int32),
        "IsActive": run["active"].astype(np.uint8),
        "IsWell": is_well,
        "InjRate": inj_rate.astype(np.float32),
        "PermX": run["permx"].astype(np.float32),
        "PermY": run["permx"].astype(np.float32),
        "PermZ": run["permz"].astype(np.float32),
        "Porosity": run["poro"].astype(np.float32),
        "Pressure0": p0.astype(np.float32),
        "Temperature0": t0.astype(np.float32),
        "ParamsScalar": _params_vector(run).astype(np.float32),
        "Pressure": out_p,
        "Temperature": out_t,
    }
    arrays |= {name: v.astype(np.float32) for name, v in scalars.items()}
    arrays["_attrs"] = _file_attrs(run, seed, index, report_times)
    return arrays


def _run_reports(model, run, grid, n_steps):
    """Run ``n_steps`` years; return the initial pressure (Pa) and temperature (K) grids and the
    state at the end of each year (float32; removed cells keep their initial values)."""
    import numpy as np

    nb = model.reservoir.mesh.n_res_blocks
    l2g = np.asarray(model.reservoir.discretizer.local_to_global)[:nb]
    p0 = np.broadcast_to(model.p_profile[:, None, None], grid).astype(np.float64) * 1e5  # Pa
    t0 = np.broadcast_to(run["temperature_profile"][:, None, None], grid).astype(np.float64)
    out_p = np.empty((n_steps,) + grid, np.float32)
    out_t = np.empty((n_steps,) + grid, np.float32)
    for r in range(n_steps):
        model.run(REPORT_DAYS, save_reservoir_data=False, verbose=0)
        x = np.array(model.physics.engine.X, copy=True)[: 2 * nb]
        pr, tr = p0.ravel().copy(), t0.ravel().copy()
        pr[l2g] = x[0::2] * 1e5
        tr[l2g] = x[1::2]
        out_p[r], out_t[r] = pr.reshape(grid), tr.reshape(grid)
    return p0, t0, out_p, out_t


def _field_scalars(model, run, n_steps):
    """The five field scalars at each yearly report (schema.SCALAR_NAMES) and the report times
    (days), from the rates at the wells' head connections over every simulator time step."""
    import numpy as np
    from darts.physics.properties.eos_properties import EoSEnthalpy
    from darts.tools.hdf5_tools import load_hdf5_to_dict
    from dartsflash.mixtures import EoS

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
    at = np.array([int(np.argmin(np.abs(times - tr))) for tr in report_times])
    if np.max(np.abs(times[at] - report_times)) > 1e-6:
        raise RuntimeError("simulator time steps do not end on the report times")
    scalars = {
        "FieldEnergyInjectionRate": np.abs(heat[at][:, is_inj]).sum(axis=1),
        "FieldEnergyProductionRate": e_prod[at],
        "FieldEnergyProductionTotal": e_total[at],
        "FieldWaterInjectionRate": np.abs(mass[at][:, is_inj]).sum(axis=1),
        "FieldWaterProductionRate": np.abs(mass[at][:, ~is_inj]).sum(axis=1),
    }
    return scalars, report_times


def _well_grids(run, grid):
    """InjRate (kg/s per cell: each well's rate split over its active perforations by PermX x dz)
    and IsWell."""
    import numpy as np

    active = run["active"]
    is_well = np.zeros(grid, np.uint8)
    inj_rate = np.zeros(grid, np.float64)
    for w in run["wells"]:
        ks = np.arange(w["k0"], w["k1"] + 1)
        ks = ks[active[ks, w["j"], w["i"]]]
        weight = run["permx"][ks, w["j"], w["i"]] * CELL_SIZE[0]
        inj_rate[ks, w["j"], w["i"]] = w["rate"] * weight / weight.sum()
        is_well[ks, w["j"], w["i"]] = 1
    return inj_rate, is_well


def _params_vector(run):
    """ParamsScalar: the 26 dev-set entries (PARAM_NAMES); -1 for the columns of absent wells."""
    import numpy as np

    p = run["params"]
    params = np.full(26, -1.0)
    params[:18] = [p["t_inj"], p["q_inj"], p["q_prod"], p["hcap"], p["cond"], p["gradient"],
                   p["surface_temperature"], p["top_depth"], p["logk_mean"], p["logk_std"], p["poro_mean"],
                   p["kv_kh"], p["corr_h"], p["corr_v"], p["n_faults"], p["fault_log_mult"], p["n_inj"], p["n_prod"]]
    for n, w in enumerate(run["wells"][:4]):
        params[18 + 2 * n: 20 + 2 * n] = [w["i"], w["j"]]
    return params


def _file_attrs(run, seed, index, report_times) -> dict:
    """The file attributes of the dev set's layout: settings, parameter names, provenance, wells."""
    import numpy as np

    dz, dy, dx = CELL_SIZE
    fixed = {"DX": dx, "DY": dy, "DZ": dz, "well_diameter": WELL_DIAMETER, "aquifer_volume_mult": BOUNDARY_MULTIPLIER,
             "rock_compressibility": ROCK_COMPRESSIBILITY_PER_BAR, "water_conductivity": WATER_CONDUCTIVITY,
             "inj_bhp_max_over_init": INJ_BHP_OVER_HYDROSTATIC, "prod_bhp_min": PROD_BHP_MIN,
             "p_surface": P_SURFACE, "obl_p_step": OBL_STEPS[0], "obl_t_step": OBL_STEPS[1]}
    return {
        "fixed_settings": json.dumps(fixed),
        "grid_cell_size_m": np.array(CELL_SIZE),
        "param_names": json.dumps(list(PARAM_NAMES)),
        "report_times_days": report_times.astype(np.float64),
        "schema": "v2.4",
        "seed": np.int64(seed),
        "run_index": np.int64(index),
        "simulator": f"open-darts {DARTS_VERSION} (IAPWSPhysics, PT state, IAPWS-95)",
        "generator": "voxel-ode synth --engine darts",
        "wells": json.dumps(run["wells"]),
        "time_convention": "Output/*[r] = end of year r + 1; t = 0 is Input/Pressure0, Input/Temperature0",
    }


def write_simulation(path, arrays: dict) -> Path:
    """One v2.4 file in the dev set's layout (dtypes, chunked gzip grids), written atomically."""
    from voxel_ode.synth import voxel as synth  # after darts.engines in the worker (module doc)

    return synth.write_raw(path, arrays, arrays["_attrs"], dynamic_chunks=(8, 12, 5, 12))


def _worker_main(argv=None) -> int:
    """Entry of a worker process: ``job`` JSON on argv; writes one file, prints its path."""
    job = json.loads((argv or sys.argv)[1])
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="darts-run-", dir=job.get("tmp")))
    try:
        arrays = simulate(job["grid"], job["seed"], job["index"], job["n_steps"], workdir)
        path = write_simulation(job["path"], arrays)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"VOXEL_ODE_DONE {path} {time.perf_counter() - start:.2f}", flush=True)
    return 0


_WORKER_CODE = "import darts.engines, sys; from voxel_ode.synth.open_darts import _worker_main; sys.exit(_worker_main())"


def run_one(path, grid, seed: int, index: int, n_steps: int) -> tuple[Path, float]:
    """Simulate one run in a fresh process; return (path, seconds). Raises UserError with the log tail."""
    require_darts()
    path = Path(path)
    job = {"path": str(path), "grid": list(grid), "seed": int(seed), "index": int(index), "n_steps": int(n_steps),
           "tmp": str(path.parent)}
    env = dict(os.environ, **{var: "1" for var in _THREAD_VARS})
    with tempfile.TemporaryDirectory(prefix=".darts-", dir=path.parent) as cwd:  # DARTS writes logs to the cwd
        proc = subprocess.run([sys.executable, "-c", _WORKER_CODE, json.dumps(job)], cwd=cwd, env=env,
                              capture_output=True, text=True)
    done = [line for line in proc.stdout.splitlines() if line.startswith("VOXEL_ODE_DONE ")]
    if proc.returncode != 0 or not done:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"open-darts run {index} (seed {seed}) failed (exit {proc.returncode}):\n{tail}")
    return path, float(done[-1].split()[-1])


def generate_dataset(out_dir, n: int, grid, seed: int = 0, workers: int = 1, n_steps: int = 30,
                     progress: bool = True) -> list[Path]:
    """Write ``out_dir/v2.4_0001.h5 .. v2.4_<n>.h5`` (run i = draw (seed, i)) and description.json."""
    from tqdm import tqdm

    from voxel_ode.data import description as desc
    from voxel_ode import schema

    require_darts()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir / f"{schema.SCHEMA_VERSION}_{i:04d}.h5", i) for i in range(1, n + 1)]
    bar = tqdm(total=n, desc="synth (open-darts)", unit="sim", disable=not progress)
    paths = []
    with ThreadPoolExecutor(max(1, min(workers, n))) as pool:
        futures = [pool.submit(run_one, path, grid, seed, i, n_steps) for path, i in jobs]
        for fut in futures:
            path, _ = fut.result()
            paths.append(path)
            bar.update(1)
    bar.close()
    desc.write(out_dir / desc.FILE_NAME, description())
    return paths


def run_synth(args) -> int:
    """``voxel-ode synth --engine darts``: the CLI checks of synth.run_synth, then open-darts runs."""
    from voxel_ode.synth import voxel as synth

    require_darts()
    if args.n < 1:
        raise UserError(f"--n: must be >= 1, got {args.n}")
    if any(g < m for g, m in zip(args.grid, MIN_GRID)):
        raise UserError(f"--grid: {args.grid} too small for --engine darts, need at least {list(MIN_GRID)} (Z Y X)")
    if args.n_steps < 1 or args.workers < 1:
        raise UserError("--workers: must be >= 1, --n_steps >= 1 (yearly reports)")
    out = synth.checked_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    paths = generate_dataset(out, args.n, tuple(args.grid), args.seed, args.workers, n_steps=args.n_steps)
    print(f"wrote {len(paths)} open-darts simulations {tuple(args.grid)} x {args.n_steps} yearly reports to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
