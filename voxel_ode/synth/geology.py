"""One synthetic simulation's parameters, geology and wells (``voxel-ode synth``, voxel engine).

Everything here is a random draw from the run's generator; ``synth.voxel.simulate`` then
sets the well rates (``synth.well_rates``) and runs the physics (``synth.simulator``).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import ndimage

from voxel_ode import schema
from voxel_ode.physics import water

GRAVITY = schema.GRAVITY
MAX_TEMPERATURE = 523.15  # K: keep water liquid and inside the density correlation


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
    production_ratio: float = None  # production / pressure-neutral production (see synth.well_rates)
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

    wells = place_wells(grid, p, rng, active, perm)
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


def place_wells(grid, p: SimParams, rng, active, perm):
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


