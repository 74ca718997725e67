"""`voxel-ode synth`: synthetic geothermal reservoir simulations in the v2.4 schema.

Each simulation draws its own geology and operating conditions from a seed and
solves single-phase water flow and heat transport on the structured grid.

Geology (random per simulation)
-------------------------------
* Grid: cell sizes dx, dy in 50-120 m, dz in 5-15 m (capped so the box is at
  most 3.5 km deep); grid top 800-2500 m below the surface.
* Active region: one reservoir layer between a top and a base surface. The top
  surface is a tilted plane (the dip) plus smooth undulations; the thickness is
  30-55 % of the box height with smooth lateral variation, so roughly half of
  the box or more is inactive caprock / basement (the top and bottom rows
  always are). Faults offset the layer.
* Permeability: log10 k_h = mean + std * (layered term + smooth 3-D Gaussian
  field), the layered term following the layer (not the grid rows); mean in
  -13.5..-12.3 log10 m^2 (30-500 mD), std 0.3..1. PermX/PermY differ by a per-simulation
  ratio, PermZ = kv/kh * k_h with kv/kh in 0.01..0.5.
* Porosity: mean 0.08-0.25, correlated with log-permeability plus noise.
* Faults (0-3): planes with random strike and 60-90 deg dip, one cell thick,
  FaultId = 1, 2, 3 on their cells. A fault is a barrier (permeability of its
  cells x 1e-3..1e-1) or a conduit (x 3..30). The multiplier is put into the
  fault cells' PermX/Y/Z so the face transmissibilities (harmonic averages)
  carry it and a surrogate can see it in its input; faults also throw the
  layer up or down by up to 30 % of its thickness.
* Wells (2-5 vertical, >= 1 injector and >= 1 producer): perforate a
  contiguous part (50-100 %) of the active cells of their column. A well's rate
  is split over its perforations in proportion to k_h (as uniform drawdown
  would). Injector rates are set so that the expected (Peaceman-type)
  pressure change in the well cells is 3-30 bar, capped so that 29 years of
  injection cool at most 15-40 % of the active volume (then high-permeability
  runs see ~1 bar). Total production is 0.85-1.15 x the "pressure-neutral"
  rate (injection minus the mass stored by the denser cold water in the swept
  rock). Every drawn reservoir has some lateral aquifer support (strength
  10^-3 .. 1): a perfectly sealed box of water is so stiff (total
  compressibility ~1e-9/Pa) that the small error of the pressure-neutral
  estimate after thermal breakthrough drove closed runs up by 50-160 bar, far
  beyond what a reservoir survives. Weak support keeps the same runs within a
  few bar of drift. A closed box (``aquifer_strength=0``, only as an
  override) limits the imbalance so the drift is ~300 Pa to ~2 bar per year
  until breakthrough.

Physics
-------
Mass:    d/dt(phi rho) V + sum_faces F = q,   F_ij = T_ij (rho/mu)_up (p_i - p_j - g rho_ij (D_i - D_j))
Energy:  d/dt([phi rho c_w + (1-phi0) rho_r c_r] T) V + sum_faces c_w F T_up - conduction = q h
* TPFA: T_ij = A / (d/2/k_i + d/2/k_j) (harmonic permeability), conduction
  lambda A / d with one bulk conductivity per simulation.
* Water density: Tanaka et al. (2001) temperature correlation (within 0.2 %
  of IAPWS saturated-liquid density over 20-250 C) times exp(c_f (p - p_atm)). Viscosity: Vogel-type
  mu = 2.414e-5 * 10**(247.8 / (T - 140)) Pa s. Enthalpy = internal energy =
  c_w (T - 273.15) with c_w = 4200 J/(kg K) (liquid water; p/rho neglected).
* Rock: phi = phi0 (1 + c_r (p - p0)); rock heat capacity rho_r c_r (1-phi0).
* Safety: if the pressure anywhere falls below saturation + 5 bar (or 10 bar)
  the run is repeated with all rates halved (the stored InjRate is the one used).
* Initial state: T0 = T_surface + gradient * depth; p0 hydrostatic, integrated
  down each column with exactly the face densities the flux uses, so that
  with no wells nothing moves (discrete equilibrium, not only approximate).
* Boundaries: the confining rock (inactive neighbour cells) exchanges heat by
  conduction at its initial temperature; the lateral box
  sides optionally connect to an aquifer at initial pressure and temperature
  with a strength multiplier (0 = closed) on the half-cell transmissibility.
* Wells: fixed mass rates; injected water enters at the injection
  temperature, producers take the cell's water (energy = rate x enthalpy).
* Time stepping: sequential implicit, ``substeps`` backward-Euler steps per
  year (default 4); in each step one pressure solve (mass balance linearised
  about the current state; SPD; CG preconditioned by a reused sparse LU on
  small grids, pyamg AMG on large ones) then one upwind temperature solve
  (M-matrix, so temperatures obey the maximum principle). The water mass per
  cell is carried from the mass balance and the energy equation uses it, so
  mass and energy are conserved to solver tolerance; the density change a
  temperature step causes is absorbed by the next pressure step (one
  sub-step lag, no outer iterations).

Output
------
``Output/*[t]`` is the state after t years; t = 0 is the initial state.
Field scalars at t are rates at that state (positive numbers);
FieldEnergyProductionTotal integrates the production energy rate over every
sub-step (0 at t = 0). ``Input/ParamsScalar`` holds the values really used,
in ``schema.PARAM_FIELDS`` order and units.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.data import description
from voxel_ode.physics import water
from voxel_ode.physics.faces import ActiveFaces
from voxel_ode.files import atomic_path
from voxel_ode.utils import UserError

SECONDS_PER_YEAR = schema.STEP_SECONDS
GRAVITY = schema.GRAVITY
WATER_HEAT_CAPACITY = schema.WATER_HEAT_CAPACITY  # J/(kg K), liquid water
WELL_RADIUS = 0.1  # m, for the injectivity estimate that sets the rates
MAX_TEMPERATURE = 523.15  # K: keep water liquid and inside the density correlation
MIN_GRID = (4, 5, 5)

DEFAULT_GRID = (32, 16, 16)  # (Z, Y, X): demo size; Z is depth and the long axis
DEFAULT_SUBSTEPS = 4  # backward-Euler steps per year


# ---------------------------------------------------------------------------
# Parameters of one simulation
# ---------------------------------------------------------------------------
@dataclass
class SimParams:
    """Everything drawn per simulation. Any field can be forced via ``simulate(**overrides)``."""

    cell_size: tuple = None  # (dx, dy, dz) m
    top_depth: float = None  # m, depth of the grid top
    surface_temperature: float = None  # K
    geothermal_gradient: float = None  # K/m
    injection_temperature: float = None  # K (capped to 10 K below the coolest active cell)
    rock_density: float = None  # kg/m^3
    rock_heat_capacity: float = None  # J/(kg K)
    rock_conductivity: float = None  # W/(m K)
    rock_compressibility: float = None  # 1/Pa
    fluid_compressibility: float = None  # 1/Pa
    log_perm_mean: float = None  # log10 m^2
    log_perm_std: float = None
    perm_anisotropy: float = None  # kv/kh
    perm_xy_ratio: float = None  # kx/ky
    perm_correlation_length: float = None  # m, lateral
    perm_vertical_smoothing: float = None  # cells
    perm_layering_weight: float = None  # 0..1 share of the layered term
    porosity_mean: float = None
    layer_thickness_frac: float = None  # mean layer thickness / box height
    layer_dip_shift_frac: float = None  # share of the free vertical room used by the dip
    layer_dip_azimuth: float = None  # rad
    layer_undulation_frac: float = None
    n_faults: int = None
    fault_multipliers: tuple = None  # one per fault
    fault_throws: tuple = None  # cells, one per fault
    fault_strikes: tuple = None  # rad
    fault_dips: tuple = None  # deg
    n_injectors: int = None
    n_producers: int = None
    well_pressure_change: float = None  # Pa, target pressure change in injector cells
    max_swept_fraction: float = None  # cap: share of the active volume cooled by 29 years of injection
    production_ratio: float = None  # production / pressure-neutral production (see _well_rates)
    max_yearly_drift: float = None  # Pa/yr allowed from the mass imbalance of a closed reservoir
    aquifer_strength: float = None  # 0 = closed lateral boundary
    boundary_heat_exchange: bool = None  # conduction to the confining rock


def sample_params(rng: np.random.Generator, grid, **overrides) -> SimParams:
    """Draw one simulation's parameters; ``overrides`` replace drawn values (by field name)."""
    names = {f.name for f in fields(SimParams)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown simulation parameter(s): {sorted(unknown)}")
    nz, ny, nx = grid
    u = rng.uniform
    dx = u(50.0, 120.0)
    dy = dx * u(0.8, 1.25)
    dz = min(u(5.0, 15.0), 3500.0 / nz)
    n_faults = int(rng.integers(0, 4))
    n_wells = int(rng.integers(2, 6))
    n_inj = int(rng.integers(1, n_wells))
    barrier = rng.random(3) < 0.5
    multipliers = np.where(barrier, 10 ** u(-3, -1, 3), 10 ** u(0.5, 1.5, 3))
    p = SimParams(
        cell_size=(dx, dy, dz),
        top_depth=u(800.0, 2500.0),
        surface_temperature=u(283.15, 298.15),
        geothermal_gradient=u(0.03, 0.07),
        injection_temperature=u(298.15, 343.15),
        rock_density=u(2500.0, 2800.0),
        rock_heat_capacity=u(750.0, 1050.0),
        rock_conductivity=u(1.5, 3.5),
        rock_compressibility=10 ** u(-10.0, -9.0),
        fluid_compressibility=u(3.5e-10, 6e-10),
        log_perm_mean=u(-13.5, -12.3),
        log_perm_std=u(0.3, 1.0),
        perm_anisotropy=10 ** u(-2.0, -0.3),
        perm_xy_ratio=10 ** u(-0.15, 0.15),
        perm_correlation_length=u(200.0, 1500.0),
        perm_vertical_smoothing=u(0.5, 2.0),
        perm_layering_weight=u(0.3, 0.7),
        porosity_mean=u(0.08, 0.25),
        layer_thickness_frac=u(0.3, 0.55),
        layer_dip_shift_frac=u(0.0, 0.6),
        layer_dip_azimuth=u(0.0, 2 * math.pi),
        layer_undulation_frac=u(0.05, 0.25),
        n_faults=n_faults,
        fault_multipliers=tuple(multipliers[:n_faults]),
        fault_throws=tuple(u(-0.3, 0.3, 3)[:n_faults]),
        fault_strikes=tuple(u(0.0, math.pi, 3)[:n_faults]),
        fault_dips=tuple(u(60.0, 90.0, 3)[:n_faults]),
        n_injectors=n_inj,
        n_producers=n_wells - n_inj,
        well_pressure_change=10 ** u(math.log10(3e5), math.log10(3e6)),
        max_swept_fraction=u(0.15, 0.4),
        production_ratio=u(0.85, 1.15),
        max_yearly_drift=10 ** u(2.5, 5.3),
        aquifer_strength=10 ** u(-3.0, 0.0),  # never exactly closed: see the module doc
        boundary_heat_exchange=True,
    )
    p = replace(p, **overrides)
    # keep the deepest cell at most MAX_TEMPERATURE (liquid water, valid correlations)
    bottom = p.top_depth + nz * p.cell_size[2]
    p.geothermal_gradient = min(p.geothermal_gradient, (MAX_TEMPERATURE - p.surface_temperature) / bottom)
    n = p.n_faults
    for name in ("fault_multipliers", "fault_throws", "fault_strikes", "fault_dips"):
        if len(getattr(p, name)) < n:
            raise TypeError(f"{name} needs {n} values for n_faults={n}")
    return p


# ---------------------------------------------------------------------------
# Geology
# ---------------------------------------------------------------------------
def _unit_field(rng, shape, sigma):
    """Smooth Gaussian random field, zero mean and unit std."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    s = f.std()
    return (f - f.mean()) / (s if s > 0 else 1.0)


@dataclass
class Reservoir:
    active: np.ndarray  # (Z, Y, X) bool
    fault_id: np.ndarray  # (Z, Y, X) float32
    perm: np.ndarray  # (3, Z, Y, X) float64: x, y, z
    porosity: np.ndarray  # (Z, Y, X) float64
    depth: np.ndarray  # (Z,) m, cell-centre depth
    temperature0: np.ndarray  # (Z, Y, X)
    pressure0: np.ndarray  # (Z, Y, X)
    well_cells: list  # per well: (flat cell indices, weights summing to 1)
    well_is_injector: list
    layer_dip_deg: float
    mean_thickness: float  # m


def build_geology(grid, p: SimParams, rng: np.random.Generator) -> Reservoir:
    """One simulation's layer, faults, rock, initial state and wells (the module doc, "Geology")."""
    nz, ny, nx = grid
    dx, dy, dz = p.cell_size
    zc = np.arange(nz) + 0.5  # cell centres in cell units (depth index)
    x = (np.arange(nx) + 0.5) * dx
    y = (np.arange(ny) + 0.5) * dy
    Y, X = np.meshgrid(y, x, indexing="ij")
    depth = p.top_depth + zc * dz
    thick = p.layer_thickness_frac * nz  # mean layer thickness, cells
    room = nz - thick  # the box height the layer leaves free, cells

    top, thickness, layer_dip_deg = _layer(grid, p, rng, X, Y, thick, room)
    fault_id, perm_mult, throw_shift = _faults(grid, p, rng, X, Y, depth, thick, room)
    top3 = top[None] + throw_shift
    layer_coord = zc[:, None, None] - top3  # cells below the layer top
    active = (layer_coord >= 0) & (layer_coord < thickness[None])
    # The top and bottom rows are always confining rock (caprock / basement), so
    # every temperature the reservoir exchanges heat with is in Temperature0.
    active[0] = active[-1] = False
    if active.sum() < 8:  # degenerate draw: fall back to an unfaulted flat layer
        active = (zc[:, None, None] >= 0.5 * room) & (zc[:, None, None] < 0.5 * room + thick) & np.ones(grid, bool)
        active[0] = active[-1] = False
    col_thick = active.sum(axis=0)
    mean_thickness = float(col_thick[col_thick > 0].mean() * dz)
    perm, porosity = _rock(grid, p, rng, active, layer_coord, perm_mult)

    temperature0 = np.broadcast_to(p.surface_temperature + p.geothermal_gradient * depth[:, None, None], grid).copy()
    pressure0 = hydrostatic_pressure(depth, temperature0[:, 0, 0], p)[:, None, None] * np.ones(grid)

    wells = _place_wells(grid, p, rng, active, perm)
    return Reservoir(active, fault_id, perm, porosity, depth, temperature0, pressure0, wells[0], wells[1],
                     layer_dip_deg, mean_thickness)


def _layer(grid, p: SimParams, rng, X, Y, thick, room):
    """The layer's top (cells below the grid top) and thickness (cells) per column, and its dip
    in degrees: a tilted plane plus undulations, with smoothly varying thickness."""
    nz, ny, nx = grid
    dx, dy, dz = p.cell_size
    along = X * math.cos(p.layer_dip_azimuth) + Y * math.sin(p.layer_dip_azimuth)
    along = (along - along.min()) / max(np.ptp(along), 1e-9)  # 0..1 across the box
    shift = p.layer_dip_shift_frac * room
    lateral_sigma = max(1.0, 0.2 * min(nx, ny))
    undulation = _unit_field(rng, (ny, nx), lateral_sigma)
    top = 0.5 * room + shift * (along - 0.5) + p.layer_undulation_frac * room * undulation
    thickness = thick * np.clip(1.0 + 0.3 * _unit_field(rng, (ny, nx), lateral_sigma), 0.2, None)
    span = np.hypot(nx * dx * math.cos(p.layer_dip_azimuth), ny * dy * math.sin(p.layer_dip_azimuth))
    layer_dip_deg = math.degrees(math.atan2(shift * dz, max(span, 1e-9)))
    return top, thickness, layer_dip_deg


def _faults(grid, p: SimParams, rng, X, Y, depth, thick, room):
    """FaultId, the permeability multiplier of each cell and the layer's shift (cells) per cell:
    planes through a random point of the mid-layer, one cell thick."""
    nz, ny, nx = grid
    dx, dy, dz = p.cell_size
    Zc = depth[:, None, None] * np.ones((1, ny, nx))
    Xc, Yc = X[None], Y[None]
    fault_id = np.zeros(grid, np.float32)
    perm_mult = np.ones(grid)
    throw_shift = np.zeros(grid)
    for k in range(p.n_faults):
        strike, dip = p.fault_strikes[k], math.radians(p.fault_dips[k])
        normal = np.array([math.sin(dip) * -math.sin(strike), math.sin(dip) * math.cos(strike), math.cos(dip)])
        x0, y0 = rng.uniform(0.2, 0.8) * nx * dx, rng.uniform(0.2, 0.8) * ny * dy
        z0 = p.top_depth + (0.5 * room + 0.5 * thick) * dz
        dist = (Xc - x0) * normal[0] + (Yc - y0) * normal[1] + (Zc - z0) * normal[2]
        half_width = 0.5 * (abs(normal[0]) * dx + abs(normal[1]) * dy + abs(normal[2]) * dz)
        on_fault = np.abs(dist) <= half_width
        fault_id[on_fault] = k + 1
        perm_mult[on_fault] = p.fault_multipliers[k]
        throw_shift += p.fault_throws[k] * thick * (dist > 0)
    return fault_id, perm_mult, throw_shift


def _rock(grid, p: SimParams, rng, active, layer_coord, perm_mult):
    """Permeability (x, y, z) and porosity: a layered term following the layer (``layer_coord``,
    cells below its top) plus a smooth 3-D field, scaled to the drawn statistics of the active cells."""
    nz = grid[0]
    dx, dy, _ = p.cell_size
    n_nodes = 4 * nz + 8
    nodes = rng.standard_normal(n_nodes)
    spacing = rng.uniform(1.0, 3.0)
    layered = np.interp(layer_coord / spacing + n_nodes / 2, np.arange(n_nodes), nodes)
    sigma_xy = (p.perm_correlation_length / dy / 2, p.perm_correlation_length / dx / 2)
    field = _unit_field(rng, grid, (p.perm_vertical_smoothing, *sigma_xy))
    w = p.perm_layering_weight
    raw = w * layered + math.sqrt(1 - w * w) * field
    ref = raw[active]
    score = (raw - ref.mean()) / max(ref.std(), 1e-12)
    log_kh = p.log_perm_mean + p.log_perm_std * score
    kh = 10.0**log_kh
    r = math.sqrt(p.perm_xy_ratio)
    perm = np.stack([kh * r, kh / r, kh * p.perm_anisotropy]) * perm_mult[None]
    noise = rng.standard_normal(grid)
    porosity = np.clip(p.porosity_mean * (1 + 0.25 * score) + 0.01 * noise, 0.03, 0.35)
    return perm, porosity


def hydrostatic_pressure(depth, temperature, p: SimParams) -> np.ndarray:
    """Pressure of a water column in equilibrium, with the face densities the flux uses."""
    dz = p.cell_size[2]
    pres = np.empty(len(depth))
    t_mid = 0.5 * (p.surface_temperature + temperature[0])
    pk = water.ATMOSPHERIC_PRESSURE + 1000.0 * GRAVITY * depth[0]
    for _ in range(50):  # overburden water column at its mean temperature
        pk = water.ATMOSPHERIC_PRESSURE + GRAVITY * depth[0] * water.density(pk, t_mid, p.fluid_compressibility)
    pres[0] = pk
    for k in range(1, len(depth)):
        rho_up = water.density(pres[k - 1], temperature[k - 1], p.fluid_compressibility)
        pk = pres[k - 1] + GRAVITY * dz * rho_up
        for _ in range(20):  # fixed point converges by ~1e-6 per iteration
            rho = water.density(pk, temperature[k], p.fluid_compressibility)
            pk = pres[k - 1] + GRAVITY * dz * 0.5 * (rho_up + rho)
        pres[k] = pk
    return pres


def _place_wells(grid, p: SimParams, rng, active, perm):
    """Vertical wells on columns with >= 2 active cells, away from the box sides and each other."""
    nz, ny, nx = grid
    n_active_col = active.sum(axis=0)
    ok = n_active_col >= 2
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    spacing = max(2, min(ny, nx) // 5)
    n_total = p.n_injectors + p.n_producers
    chosen = []
    candidates = np.argwhere(ok)
    for idx in rng.permutation(len(candidates)):
        if len(chosen) == n_total:
            break
        iy, ix = candidates[idx]
        if all(max(abs(iy - a), abs(ix - b)) >= spacing for a, b in chosen):
            chosen.append((int(iy), int(ix)))
    # A small grid may not have room for every well: drop producers, then injectors,
    # keeping at least one of each that was asked for.
    n_inj, n_prod = p.n_injectors, p.n_producers
    while n_inj + n_prod > len(chosen):
        if n_prod > 1 or (n_prod == 1 and n_inj == 0):
            n_prod -= 1
        else:
            n_inj -= 1
    if (p.n_injectors > 0 and n_inj == 0) or (p.n_producers > 0 and n_prod == 0):
        raise RuntimeError(f"room for only {len(chosen)} wells on this grid")
    cells, injector = [], []
    for w, (iy, ix) in enumerate(chosen[:n_inj + n_prod]):
        ks = np.flatnonzero(active[:, iy, ix])
        n_perf = max(1, int(round(len(ks) * rng.uniform(0.5, 1.0))))
        start = int(rng.integers(0, len(ks) - n_perf + 1))
        ks = ks[start:start + n_perf]
        flat = np.ravel_multi_index((ks, np.full_like(ks, iy), np.full_like(ks, ix)), grid)
        kh = np.sqrt(perm[0].ravel()[flat] * perm[1].ravel()[flat])
        cells.append((flat, kh / kh.sum()))
        injector.append(w < n_inj)
    return cells, injector


def _well_rates(res: Reservoir, p: SimParams, grid) -> np.ndarray:
    """InjRate (kg/s per cell, + injection, - production) from the target well pressure change."""
    dx, dy, dz = p.cell_size
    rate = np.zeros(int(np.prod(grid)))
    if not res.well_cells:
        return rate.reshape(grid)
    # Peaceman-type estimate of the well-cell pressure change for rate Q:
    #   dp = Q mu ln(R / r0) / (rho 2 pi dz sum k_h)
    r0 = 0.14 * math.hypot(dx, dy)
    big_r = 0.25 * math.hypot(grid[2] * dx, grid[1] * dy)
    log_term = math.log(max(big_r / r0, 2.0))
    p_mid = float(res.pressure0[res.active].mean())
    inj_rates, prod_kh = [], []
    for (flat, weight), is_inj in zip(res.well_cells, res.well_is_injector):
        sum_kh = float(np.sqrt(res.perm[0].ravel()[flat] * res.perm[1].ravel()[flat]).sum())
        if is_inj:
            rho = water.density(p_mid, p.injection_temperature, p.fluid_compressibility)
            mu = water.viscosity(p.injection_temperature)
            q = p.well_pressure_change * rho * 2 * math.pi * dz * sum_kh / (mu * log_term)
            inj_rates.append(float(np.clip(q, 1.0, 200.0)))
        else:
            prod_kh.append(sum_kh)
    total_inj = sum(inj_rates)
    if total_inj > 0:
        # Do not let 29 years of injection cool more than max_swept_fraction of the
        # reservoir: the cooled volume is injected mass x c_w / bulk heat capacity.
        act = res.active
        phi = float(res.porosity[act].mean())
        bulk_heat = phi * 1000.0 * WATER_HEAT_CAPACITY + (1 - phi) * p.rock_density * p.rock_heat_capacity
        active_volume = float(act.sum()) * dx * dy * dz
        years = schema.N_TIMESTEPS - 1
        max_total = p.max_swept_fraction * active_volume * bulk_heat / (WATER_HEAT_CAPACITY * years * SECONDS_PER_YEAR)
        if total_inj > max_total:
            inj_rates = [r * max_total / total_inj for r in inj_rates]
            total_inj = max_total
    # Pressure-neutral production: cooling the swept rock makes its pore water
    # denser, so the reservoir stores extra mass there; producing exactly the
    # injected mass would drain a closed reservoir. The swept (cooled) volume
    # grows at Q_inj c_w / (rho c)_bulk.
    act = res.active
    phi = float(res.porosity[act].mean())
    rho_cold = water.density(p_mid, p.injection_temperature, p.fluid_compressibility)
    rho_hot = water.density(p_mid, float(res.temperature0[act].mean()), p.fluid_compressibility)
    bulk_heat = phi * rho_hot * WATER_HEAT_CAPACITY + (1 - phi) * p.rock_density * p.rock_heat_capacity
    neutral = 1.0 - phi * WATER_HEAT_CAPACITY * (rho_cold - rho_hot) / bulk_heat
    ratio = p.production_ratio
    if p.aquifer_strength == 0 and total_inj > 0:
        # closed reservoir: limit the net mass imbalance to the allowed yearly drift
        pore_volume = float(res.porosity[act].sum()) * dx * dy * dz
        c_t = p.rock_compressibility + p.fluid_compressibility
        max_net = p.max_yearly_drift * pore_volume * c_t * rho_hot / SECONDS_PER_YEAR  # kg/s
        ratio = float(np.clip(ratio, 1 - max_net / total_inj, 1 + max_net / total_inj))
    total_prod = ratio * neutral * total_inj
    i_inj = i_prod = 0
    for (flat, weight), is_inj in zip(res.well_cells, res.well_is_injector):
        if is_inj:
            rate[flat] += inj_rates[i_inj] * weight
            i_inj += 1
        else:
            rate[flat] -= total_prod * prod_kh[i_prod] / sum(prod_kh) * weight
            i_prod += 1
    return rate.reshape(grid)


# ---------------------------------------------------------------------------
# Discretisation on the active cells
# ---------------------------------------------------------------------------
class _Mesh(ActiveFaces):
    """The active cells and faces (faces.ActiveFaces) with synth's transmissibilities, conduction,
    boundary terms and the sparse-matrix pattern of both solves (TPFA)."""

    def __init__(self, res: Reservoir, p: SimParams):
        super().__init__(res.active, p.cell_size)
        self.depth = np.broadcast_to(res.depth[:, None, None], self.grid).ravel()[self.cells]
        k = [res.perm[2].ravel()[self.cells], res.perm[1].ravel()[self.cells], res.perm[0].ravel()[self.cells]]
        self.trans = self.transmissibility(k)  # k across Z, Y, X
        self.cond = np.array([p.rock_conductivity * area / spacing for spacing, area in self.axes])[self.face_axis]
        self.ddepth = self.depth[self.a] - self.depth[self.b]
        self.heat_g, self.heat_gt, self.aq_trans = self._boundary(p, k)
        # CSR pattern shared by the pressure and temperature matrices: filling
        # csr.data through `perm` avoids re-sorting the pattern every solve.
        n, m = self.n, len(self.a)
        rows = np.concatenate([np.arange(n), self.a, self.b])
        cols = np.concatenate([np.arange(n), self.b, self.a])
        order = sp.coo_matrix((np.arange(1, n + 2 * m + 1, dtype=np.float64), (rows, cols)), shape=(n, n)).tocsr()
        self.csr_indptr, self.csr_indices = order.indptr, order.indices
        self.csr_perm = order.data.astype(np.int64) - 1

    def _boundary(self, p: SimParams, k):
        """Per active cell: conductance to the confining rock (inactive neighbours and outside the
        box), the same times that rock's initial temperature, and transmissibility to the aquifer
        beyond the lateral box sides."""
        heat_g, heat_gt, aq_trans = np.zeros(self.n), np.zeros(self.n), np.zeros(self.n)
        dz = self.axes[0][0]
        for axis, (spacing, area) in enumerate(self.axes):
            for side in (-1, 1):
                if p.boundary_heat_exchange:
                    cells = self.boundary_cells(axis, side)
                    nb_depth = self.depth[cells] + (side * dz if axis == 0 else 0.0)
                    t_rock = p.surface_temperature + p.geothermal_gradient * nb_depth
                    g = p.rock_conductivity * area / spacing
                    np.add.at(heat_g, cells, g)
                    np.add.at(heat_gt, cells, g * t_rock)
                if p.aquifer_strength > 0 and axis > 0:
                    c = self.boundary_cells(axis, side, box_only=True)
                    np.add.at(aq_trans, c, p.aquifer_strength * area * k[axis][c] / (0.5 * spacing))
        return heat_g, heat_gt, aq_trans

    def matrix(self, diag, off_ab, off_ba):
        data = np.concatenate([diag, off_ab, off_ba])[self.csr_perm]
        return sp.csr_matrix((data, self.csr_indices, self.csr_indptr), shape=(self.n, self.n))

    def outflow_sum(self, face_values):
        """Per cell: sum of face_values over faces, + for cell a, - for cell b."""
        return np.bincount(self.a, face_values, self.n) - np.bincount(self.b, face_values, self.n)


class _LinearSolver:
    """Iterative sparse solves for a correction dx of A dx = residual.

    Pressure (SPD): CG with a preconditioner built from a recent pressure
    matrix and reused while it keeps working (the matrix changes slowly, only
    through mobilities): an exact sparse LU (SuperLU, symmetric ordering) up to
    LU_MAX_CELLS unknowns, pyamg root-node AMG above. Temperature
    (M-matrix, non-symmetric): BiCGSTAB with a Jacobi preconditioner; the
    accumulation term makes it strongly diagonally dominant. Tolerances are
    relative to the residual of the step.
    """

    LU_MAX_CELLS = 20_000

    def __init__(self, symmetric: bool, n: int, rtol: float):
        self.symmetric = symmetric
        self.use_lu = n <= self.LU_MAX_CELLS
        self.rtol = rtol
        self.precond = None
        self.fresh_iterations = None  # CG iterations right after the last rebuild
        self.last_iterations = 0
        self.calls = self.setups = self.iterations = 0

    def _count(self, _xk):
        self.iterations += 1
        self.last_iterations += 1

    def _build(self, A):
        self.setups += 1
        if self.use_lu:
            lu = spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})
            return spla.LinearOperator(A.shape, lu.solve)
        import pyamg

        ml = pyamg.rootnode_solver(A, symmetry="symmetric")
        for level in ml.levels:  # pyamg keeps coarse levels as BSR; CSR smoothing is ~3x faster here
            level.A = level.A.tocsr()
            if hasattr(level, "P"):
                level.P, level.R = level.P.tocsr(), level.R.tocsr()
        return ml.aspreconditioner(cycle="V")

    def solve(self, A, rhs):
        self.calls += 1
        if self.symmetric:
            # rebuild once the reused preconditioner needs clearly more iterations than fresh
            stale = self.fresh_iterations is not None and self.last_iterations > max(4, 2 * self.fresh_iterations)
            rebuilt = self.precond is None or stale
            if rebuilt:
                self.precond = self._build(A)
            self.last_iterations = 0
            x, info = spla.cg(A, rhs, rtol=self.rtol, atol=0.0, maxiter=1000, M=self.precond,
                              callback=self._count)
            if rebuilt:
                self.fresh_iterations = self.last_iterations
        else:
            inv_diag = sp.diags(1.0 / A.diagonal())
            x, info = spla.bicgstab(A, rhs, rtol=self.rtol, atol=0.0, maxiter=2000, M=inv_diag,
                                    callback=self._count)
        if info != 0:
            raise RuntimeError(f"linear solver did not converge (info={info})")
        return x


# ---------------------------------------------------------------------------
# Time stepping
# ---------------------------------------------------------------------------
class _Unsafe(Exception):
    """The run left the liquid-water range (pressure too low): retry with smaller rates."""


class _Stepper:
    """One run's per-cell constants and its sequential-implicit sub-step: one pressure solve,
    then one temperature solve."""

    def __init__(self, res: Reservoir, p: SimParams, inj_rate, substeps):
        self.mesh = mesh = _Mesh(res, p)
        cells, vol = mesh.cells, mesh.volume
        self.injection_temperature = p.injection_temperature
        self.c_f, self.c_r = p.fluid_compressibility, p.rock_compressibility
        self.phi0 = res.porosity.ravel()[cells]
        self.p_init = res.pressure0.ravel()[cells].astype(np.float64)
        self.t_init = res.temperature0.ravel()[cells].astype(np.float64)
        self.rock_heat = vol * (1 - self.phi0) * p.rock_density * p.rock_heat_capacity  # J/K
        self.q = inj_rate.ravel()[cells].astype(np.float64)  # kg/s, exactly the stored InjRate
        self.q_inj, self.q_prod = np.maximum(self.q, 0.0), np.maximum(-self.q, 0.0)
        rho_aq = water.density(self.p_init, self.t_init, self.c_f)
        self.mob_aq_in = mesh.aq_trans * rho_aq / water.viscosity(self.t_init)  # aquifer water flowing in
        # Mass is conserved whatever the pressure tolerance (fluxes are evaluated at the
        # pressure found, and the state/mass mismatch feeds the next step), so a loose
        # one is enough; energy relies on the temperature solve, so that one is tight.
        self.p_solver = _LinearSolver(symmetric=True, n=mesh.n, rtol=1e-6)
        self.t_solver = _LinearSolver(symmetric=False, n=mesh.n, rtol=1e-9)
        self.dt = SECONDS_PER_YEAR / substeps

    def mass(self, pres, temp):
        """kg of water per cell in the state (pres, temp)."""
        return (self.mesh.volume * self.phi0 * (1 + self.c_r * (pres - self.p_init))
                * water.density(pres, temp, self.c_f))

    def _dmass_dp(self, pres, temp):
        c_f, c_r, vol = self.c_f, self.c_r, self.mesh.volume
        return vol * self.phi0 * water.density(pres, temp, c_f) * (c_r + c_f * (1 + c_r * (pres - self.p_init)))

    def prod_energy_rate(self, temp) -> float:
        """W: what the producers take out at cell temperatures ``temp``."""
        return float(np.sum(self.q_prod * water.enthalpy(temp)))

    def step(self, pres, temp, water_mass):
        """(pressure, temperature, water mass) one sub-step later."""
        p_new, flux, aq_flux, m_new = self._pressure_step(pres, temp, water_mass)
        return p_new, self._temperature_step(temp, water_mass, m_new, flux, aq_flux), m_new

    def _pressure_step(self, pres, temp, water_mass):
        """Mass balance linearised about (p^n, T^n), one SPD solve; returns the new pressure, the
        face fluxes (kg/s from cell a to cell b), the flux to the aquifer and the new water mass."""
        mesh, n, dt, p_init = self.mesh, self.mesh.n, self.dt, self.p_init
        rho = water.density(pres, temp, self.c_f)
        mob = rho / water.viscosity(temp)
        gravity = GRAVITY * 0.5 * (rho[mesh.a] + rho[mesh.b]) * mesh.ddepth
        potential = pres[mesh.a] - pres[mesh.b] - gravity
        lam = mesh.trans * np.where(potential >= 0, mob[mesh.a], mob[mesh.b])  # upwind rho/mu
        lam_aq = np.where(pres >= p_init, mesh.aq_trans * mob, self.mob_aq_in)
        residual = (self.q - (self.mass(pres, temp) - water_mass) / dt - mesh.outflow_sum(lam * potential)
                    - lam_aq * (pres - p_init))
        if np.abs(residual).max() > 0:  # exactly 0 in hydrostatic equilibrium without wells
            diag = self._dmass_dp(pres, temp) / dt + np.bincount(mesh.a, lam, n) + np.bincount(mesh.b, lam, n) + lam_aq
            p_new = pres + self.p_solver.solve(mesh.matrix(diag, -lam, -lam), residual)
        else:
            p_new = pres
        flux = lam * (p_new[mesh.a] - p_new[mesh.b] - gravity)  # kg/s from cell a to cell b
        aq_flux = lam_aq * (p_new - p_init)  # kg/s leaving to the aquifer
        m_new = water_mass + dt * (self.q - mesh.outflow_sum(flux) - aq_flux)
        return p_new, flux, aq_flux, m_new

    def _temperature_step(self, temp, water_mass, m_new, flux, aq_flux):
        """Conservative energy balance with the delivered mass, upwind advection + conduction,
        implicit. With m_new the matrix is an M-matrix, so the new temperatures are weighted means
        of old ones, neighbours, injection and boundary temperatures (maximum principle)."""
        mesh, n, dt, c_w = self.mesh, self.mesh.n, self.dt, WATER_HEAT_CAPACITY
        f_pos, f_neg = np.maximum(flux, 0.0), np.maximum(-flux, 0.0)
        aq_in, aq_out = np.maximum(-aq_flux, 0.0), np.maximum(aq_flux, 0.0)
        diag_t = ((m_new * c_w + self.rock_heat) / dt
                  + c_w * (np.bincount(mesh.a, f_pos, n) + np.bincount(mesh.b, f_neg, n) + self.q_prod + aq_out)
                  + np.bincount(mesh.a, mesh.cond, n) + np.bincount(mesh.b, mesh.cond, n) + mesh.heat_g)
        rhs_t = ((water_mass * c_w + self.rock_heat) * temp / dt + c_w * self.q_inj * self.injection_temperature
                 + mesh.heat_gt + c_w * aq_in * self.t_init)
        A_t = mesh.matrix(diag_t, -mesh.cond - c_w * f_neg, -mesh.cond - c_w * f_pos)
        residual_t = rhs_t - A_t @ temp
        if np.abs(residual_t).max() > 0:
            temp = temp + self.t_solver.solve(A_t, residual_t)
        return temp


def _run_physics(res: Reservoir, p: SimParams, inj_rate, grid, n_steps, substeps, progress):
    run = _Stepper(res, p, inj_rate, substeps)
    cells = run.mesh.cells
    pres, temp = run.p_init.copy(), run.t_init.copy()
    # Water mass per cell as delivered by the mass balance. Carrying it (instead of
    # recomputing it from p and T) makes the density change caused by a temperature
    # step act as a source in the next pressure step: mass is conserved exactly and
    # the state's mass lags it by one sub-step's thermal contraction at most.
    water_mass = run.mass(pres, temp)
    shape = (n_steps,) + tuple(grid)
    out_p = np.broadcast_to(res.pressure0.astype(np.float32), shape).copy()
    out_t = np.broadcast_to(res.temperature0.astype(np.float32), shape).copy()
    energy_total = np.zeros(n_steps)
    bar = tqdm(total=(n_steps - 1) * substeps, desc="time steps", unit="step", disable=not progress, leave=False)
    cumulative = 0.0
    for year in range(1, n_steps):
        for _ in range(substeps):
            pres, temp, water_mass = run.step(pres, temp, water_mass)
            cumulative += run.dt * run.prod_energy_rate(temp)
            bar.update(1)
        if not np.all(np.isfinite(pres)) or not np.all(np.isfinite(temp)):
            raise _Unsafe("non-finite state")
        p_floor = np.maximum(water.saturation_pressure(temp) + 5e5, 1e6)
        if np.any(pres < p_floor):
            raise _Unsafe(f"pressure below {p_floor.min():.3g} Pa in year {year}")
        out_p[year].ravel()[cells] = pres
        out_t[year].ravel()[cells] = temp
        energy_total[year] = cumulative
    bar.close()

    q_inj, q_prod = run.q_inj, run.q_prod
    inj_energy = float(np.sum(q_inj * water.enthalpy(p.injection_temperature)))
    scalars = {
        "FieldEnergyInjectionRate": np.full(n_steps, inj_energy),
        "FieldEnergyProductionRate": np.array(
            [run.prod_energy_rate(out_t[t].ravel()[cells].astype(np.float64)) for t in range(n_steps)]),
        "FieldEnergyProductionTotal": energy_total,
        "FieldWaterInjectionRate": np.full(n_steps, float(q_inj.sum())),
        "FieldWaterProductionRate": np.full(n_steps, float(q_prod.sum())),
    }
    p_solver, t_solver = run.p_solver, run.t_solver
    diag_counts = dict(steps=(n_steps - 1) * substeps, active_cells=run.mesh.n, faces=len(run.mesh.a),
                       pressure_cg_iterations=p_solver.iterations, pressure_solves=p_solver.calls,
                       temperature_iterations=t_solver.iterations, temperature_solves=t_solver.calls,
                       pressure_factorizations=p_solver.setups,
                       mass_lag=float(np.sum(run.mass(pres, temp)) - np.sum(water_mass)))
    return out_p, out_t, scalars, diag_counts


def _params_vector(p: SimParams, res: Reservoir, inj_rate) -> np.ndarray:
    act = res.active
    log_kh = 0.5 * (np.log10(res.perm[0][act]) + np.log10(res.perm[1][act]))
    values = {
        "InjectionTemperature": p.injection_temperature,
        "TotalInjectionRate": float(inj_rate[inj_rate > 0].sum()),
        "TotalProductionRate": float(-inj_rate[inj_rate < 0].sum()),
        "SurfaceTemperature": p.surface_temperature,
        "GeothermalGradient": p.geothermal_gradient,
        "RockHeatCapacity": p.rock_heat_capacity,
        "RockThermalConductivity": p.rock_conductivity,
        "RockDensity": p.rock_density,
        "RockCompressibility": p.rock_compressibility,
        "FluidCompressibility": p.fluid_compressibility,
        "LogPermMean": float(log_kh.mean()),
        "LogPermStd": float(log_kh.std()),
        "PermAnisotropy": p.perm_anisotropy,
        "PermCorrelationLength": p.perm_correlation_length,
        "PorosityMean": float(res.porosity[act].mean()),
        "FaultTransMultiplier": float(np.exp(np.mean(np.log(p.fault_multipliers)))) if p.n_faults else 1.0,
        "NumFaults": p.n_faults,
        "NumInjectors": sum(res.well_is_injector),
        "NumProducers": len(res.well_is_injector) - sum(res.well_is_injector),
        "CellSizeX": p.cell_size[0],
        "CellSizeY": p.cell_size[1],
        "CellSizeZ": p.cell_size[2],
        "ReservoirTopDepth": p.top_depth,
        "ReservoirThickness": res.mean_thickness,
        "LayerDip": res.layer_dip_deg,
        "BoundaryAquiferStrength": p.aquifer_strength,
    }
    assert set(values) == set(schema.PARAM_NAMES)
    return np.array([values[name] for name in schema.PARAM_NAMES], np.float32)


def _sim_rng(seed: int, index: int) -> np.random.Generator:
    """Per-simulation generator from (seed, index): results do not depend on --workers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def simulate(grid=DEFAULT_GRID, seed: int = 0, n_steps: int = schema.N_TIMESTEPS, substeps: int = DEFAULT_SUBSTEPS,
             index: int = 0, progress: bool = False, **overrides) -> dict:
    """Run one synthetic simulation; return {short schema name: array} ready for write_simulation.

    ``seed`` and ``index`` pick the random draw (``generate_dataset`` uses index =
    run number). ``overrides`` force SimParams fields, e.g. ``n_injectors=0,
    n_producers=0`` for a run without wells or ``aquifer_strength=0``. The
    returned dict also has ``"_params"`` (the SimParams used) and ``"_diagnostics"``
    (solver counts, the rate reduction applied).
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or any(g < m for g, m in zip(grid, MIN_GRID)):
        raise ValueError(f"grid {grid} too small, need at least {MIN_GRID} (Z, Y, X)")
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    rng = _sim_rng(seed, index)
    params = sample_params(rng, grid, **overrides)
    res = build_geology(grid, params, rng)
    # Injection water is colder than every active cell (a cold-water reinjection).
    t_min = float(res.temperature0[res.active].min())
    params.injection_temperature = min(params.injection_temperature, t_min - 10.0)
    rate_scale = 1.0
    for attempt in range(6):
        inj_rate = _well_rates(res, params, grid) * rate_scale
        try:
            out_p, out_t, scalars, diagnostics = _run_physics(res, params, inj_rate, grid, n_steps, substeps,
                                                              progress)
            break
        except _Unsafe:
            rate_scale *= 0.5  # too much drawdown for liquid water: halve the rates and rerun
    else:
        raise RuntimeError(f"simulation seed={seed} index={index} stayed unsafe after rate reductions")
    is_well = np.zeros(grid, np.float32)
    is_well[inj_rate != 0] = 1.0
    arrays = {
        "FaultId": res.fault_id.astype(np.float32),
        "IsActive": res.active.astype(np.float32),
        "IsWell": is_well,
        "InjRate": inj_rate.astype(np.float32),
        "PermX": res.perm[0].astype(np.float32),
        "PermY": res.perm[1].astype(np.float32),
        "PermZ": res.perm[2].astype(np.float32),
        "Porosity": res.porosity.astype(np.float32),
        "Pressure0": res.pressure0.astype(np.float32),
        "Temperature0": res.temperature0.astype(np.float32),
        "ParamsScalar": _params_vector(params, res, inj_rate),
        "Pressure": out_p,
        "Temperature": out_t,
    }
    for name, values in scalars.items():
        arrays[name] = values.astype(np.float64)
    arrays["_params"] = params
    arrays["_diagnostics"] = dict(diagnostics, rate_scale=rate_scale)
    return arrays


def write_simulation(path, arrays: dict) -> Path:
    """Write one raw v2.4 file atomically, byte-reproducibly (no HDF5 timestamps)."""
    return write_raw(path, arrays, {"generator": "voxel-ode synth",
                                    "time_convention": "Output/*[t] = state after t years; t=0 is the initial state"})


def write_raw(path, arrays: dict, attrs: dict, dynamic_chunks=None) -> Path:
    """Write the schema's datasets from ``arrays`` (in their own dtypes) and the file attributes
    ``attrs`` atomically, byte-reproducibly (no HDF5 timestamps). ``dynamic_chunks``: store the
    dynamic grids gzip-compressed in chunks of at most this shape (synth_darts: the dev set's layout)."""
    path = Path(path)
    names = schema.RAW_STATIC_NAMES + (schema.PARAMS_SCALAR,) + schema.DYNAMIC_NAMES + schema.SCALAR_NAMES
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in names:
                data = arrays[name]
                kw = {}
                if dynamic_chunks is not None and name in schema.DYNAMIC_NAMES:
                    kw = {"chunks": tuple(min(c, s) for c, s in zip(dynamic_chunks, data.shape)), "compression": "gzip"}
                f.create_dataset(schema.raw_path(name), data=data, track_times=False, **kw)
            for key, value in attrs.items():
                f.attrs[key] = value
    return path


def run_file_name(index: int) -> str:
    return f"{schema.SCHEMA_VERSION}_{index:04d}.h5"


def _generate_one(job) -> str:
    out_dir, index, grid, seed, n_steps, substeps, progress, overrides = job
    arrays = simulate(grid, seed, n_steps=n_steps, substeps=substeps, index=index, progress=progress, **overrides)
    return str(write_simulation(Path(out_dir) / run_file_name(index), arrays))


def generate_dataset(out_dir, n: int, grid=DEFAULT_GRID, seed: int = 0, workers: int = 1,
                     n_steps: int = schema.N_TIMESTEPS, substeps: int = DEFAULT_SUBSTEPS, progress: bool = True,
                     **overrides) -> list[Path]:
    """Write ``out_dir/v2.4_0001.h5 .. v2.4_<n>.h5``; run i uses the draw (seed, i)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_sim_bar = progress and (n == 1 or workers == 1) and int(np.prod(grid)) > 200_000
    jobs = [(str(out_dir), i, tuple(grid), seed, n_steps, substeps, per_sim_bar, overrides) for i in range(1, n + 1)]
    bar = tqdm(total=n, desc="synth", unit="sim", disable=not progress)
    paths = []
    # Always in worker processes started with "spawn": safe when the caller has
    # imported torch, and the environment below gives each worker single-threaded
    # BLAS (multi-threaded OpenBLAS made the sparse solves ~5x slower on a shared
    # 2-core machine). The runs are independent and seeded by (seed, index).
    saved = {var: os.environ.get(var) for var in _THREAD_VARS}
    os.environ.update({var: "1" for var in _THREAD_VARS})
    try:
        with mp.get_context("spawn").Pool(max(1, min(workers, n))) as pool:
            for path in pool.imap(_generate_one, jobs):
                paths.append(Path(path))
                bar.update(1)
            pool.close()
            pool.join()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    bar.close()
    description.write(out_dir / description.FILE_NAME, DESCRIPTION)
    return paths


def _param(name: str) -> dict:
    return {"param": schema.PARAM_NAMES.index(name), "unit": schema.PARAM_FIELDS[schema.PARAM_NAMES.index(name)].unit}


# What voxel-ode synth's files mean (voxel_ode/description.py), written next to them.
DESCRIPTION = description.Description.from_dict({
    "permeability_unit": "m2", "first_report": "initial", "lateral_boundary": "fixed_pressure",
    "quantities": {name: _param(name) for name in (
        "CellSizeX", "CellSizeY", "CellSizeZ", "RockCompressibility", "FluidCompressibility", "InjectionTemperature",
        "RockHeatCapacity", "RockDensity", "RockThermalConductivity")}
    | {"BoundaryMultiplier": _param("BoundaryAquiferStrength")}}, "voxel-ode synth")


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def add_synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory for v2.4_0001.h5, ...")
    parser.add_argument("--n", type=int, default=20, help="number of simulations")
    parser.add_argument("--grid", type=int, nargs=3, default=list(DEFAULT_GRID), metavar=("Z", "Y", "X"),
                        help="grid size; the real one is 326 70 76")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--substeps", type=int, default=DEFAULT_SUBSTEPS, help="implicit time steps per year")
    parser.add_argument("--n_steps", type=int, default=schema.N_TIMESTEPS,
                        help="yearly reports including t=0 (the v2.4 schema has 30)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing v2.4_*.h5 files in --out")
    parser.add_argument("--engine", choices=("voxel", "darts"), default="voxel",
                        help="simulator: voxel-ode's own, or open-darts 2.0.0 (pip install 'voxel-ode[darts]'; "
                             "--n_steps = yearly reports after t=0, --substeps unused)")


def run_synth(args) -> int:
    if getattr(args, "engine", "voxel") == "darts":
        from voxel_ode.synth import open_darts as synth_darts  # imports no darts itself: each run is its own process

        return synth_darts.run_synth(args)
    if args.n < 1:
        raise UserError(f"--n: must be >= 1, got {args.n}")
    if any(g < m for g, m in zip(args.grid, MIN_GRID)):
        raise UserError(f"--grid: {args.grid} too small, need at least {list(MIN_GRID)} (Z Y X)")
    if args.substeps < 1 or args.n_steps < 2 or args.workers < 1:
        raise UserError("--substeps/--workers: must be >= 1, --n_steps >= 2")
    out = checked_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    paths = generate_dataset(out, args.n, tuple(args.grid), args.seed, args.workers, n_steps=args.n_steps,
                             substeps=args.substeps)
    stale = [p for p in sorted(out.glob(schema.RAW_FILE_GLOB)) if p not in set(paths)]
    print(f"wrote {len(paths)} simulations {tuple(args.grid)} x {args.n_steps} to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    if stale:
        print(f"note: {len(stale)} other {schema.RAW_FILE_GLOB} files were already in {out} and were left there")
    return 0


def checked_out_dir(out, overwrite: bool) -> Path:
    """--out of both engines: a directory (or nothing yet) that holds no run files unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out: exists and is not a directory")
    existing = sorted(out.glob(schema.RAW_FILE_GLOB)) if out.is_dir() else []
    if existing and not overwrite:
        raise UserError(f"{out}: --out: already holds {len(existing)} {schema.RAW_FILE_GLOB} files; "
                        "use --overwrite or an empty directory")
    return out
