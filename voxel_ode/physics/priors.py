"""Physics priors derived in prep: what linear single-phase models say the wells do to a run.

Why: pressure diffuses across the whole field within a yearly step and the cold plume's
path follows the flow between the wells; a convolutional network sees only its
receptive field, and a user has a few dozen runs to learn from. Two cheap linear models
give it the field-wide shapes instead; the network learns what they miss.

* Pressure prior: the pressure change since t = 0 (Pa) of slightly compressible water,
  linearised about the initial (hydrostatic) state and marched one backward-Euler step per
  year with the wells' mass rates (``InjRate``)::

      V phi rho c_t d(dp)/dt + V phi d(rho)/dt + sum_j lam_ij (dp_i - dp_j - g (rho_ij - rho0_ij)(D_i - D_j))
          + B_i dp_i = q_i,     lam_ij = T_ij (rho / mu) upstream

  T_ij: two-point face transmissibility with harmonic permeability; the cold water of the
  thermal prior enters through its viscosity (lagged one step), its contraction (a sink where
  it cools) and its weight. The lateral sides follow the dataset's declared boundary
  (description.BOUNDARY_KINDS): closed, B_i = multiplier x the half-cell transmissibility to
  water at the initial pressure, or side cells with multiplier x their pore volume.
* Thermal prior: the share theta in [0, 1] of the injection gap each cell has taken on after
  t years, by implicit upwind transport, slowed by the rock's heat capacity, with conduction
  between cells and to the rock around the active region (held at theta = 0); plus, marched
  with the same matrices, the drift of the initial temperature itself where no injected water
  replaced it (the flow carrying its gradient, conduction evening it out), as a share of the
  gap. The flow is each year's cold-water pressure step with the share of the year before: the
  plume's excess weight and viscosity act on its own flow, so it sinks and spreads along the
  base as in a simulator (on the warm water's flow alone it stayed up: open-darts' base up to
  12 K colder).
* Wells (description.WELL_INFLOWS): by default each well, a column of same-sign ``InjRate``
  cells, delivers the sum of its InjRate through a wellbore: a cell takes J_i (P + head_i - dp_i)
  (Peaceman's index times the entering water's mobility; P the wellbore's pressure at the top
  perforation; head_i the wellbore's water column over the reservoir's), so an injector's cold,
  dense column drives its water into the deep perforations and the shallow ones may take little
  or none, as in a simulator's well model (on open-darts runs with 0.6-0.8 km columns, InjRate's
  own split kept the shallow cells' plume that the simulator never made). A declared bottomhole
  pressure limit (producer's minimum, injector's maximum, at the top perforation) switches a
  well from its rate to its limit while the rate would pass it. ``as_given``: each cell takes its
  InjRate (per-cell sources, no wellbore).

Cost: one sparse LU (the pressure matrix) and ~60 back-substitutions (plus one per well) per run on small
grids, AMG-preconditioned CG on large ones; per year a flow-ordered Gauss-Seidel sweep preconditions
~4 BiCGSTAB iterations per heat step (docs/benchmarks.md, "Prep cost").
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import pyamg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from voxel_ode import schema
from voxel_ode.physics import water
from voxel_ode.physics.faces import ActiveFaces, lateral_side
from voxel_ode.physics.wells import (
    Wells,
    join_wells,
    solve_with_wells,
    well_cells,
    well_inflow_index,
    wells_diagonal,
)
from voxel_ode.utils import UserError

YEAR_SECONDS = schema.STEP_SECONDS
GRAVITY = schema.GRAVITY
DIRECT_SOLVE_MAX_CELLS = 60_000
# Used where a dataset does not declare them (printed as assumptions by prep and inspect).
GENERIC_COMPRESSIBILITY = 5e-10  # 1/Pa, rock + water
GENERIC_ROCK_HEAT_PER_VOLUME = 2.3e6  # J/(m^3 K), grain density x specific heat of common rocks
GENERIC_ROCK_CONDUCTIVITY = 2.5  # W/(m K)
GENERIC_WELL_RADIUS = 0.108  # m: an 8 1/2-inch hole, the commonest
WATER_HEAT_PER_VOLUME = 1000.0 * schema.WATER_HEAT_CAPACITY  # J/(m^3 K)
MIN_POROSITY = 1e-4  # keeps every active cell's storage positive (isolated cells stay solvable)
THERMAL_SUBSTEPS = 4  # backward-Euler steps per year of the heat transport (1 smears the front)
TRANSPORT_RTOL = 1e-6  # theta is stored as float16
FLOW_RTOL = 1e-4  # iterative pressure solves of the heat's flow (the pressure prior's: 1e-6)
MIN_DRIFT_GAP = 1.0  # K: an injection gap below this carries no background drift in its share
MAX_MOBILITY_GAIN = 1.9  # the pressure step's largest face mobility over the warm water's


@dataclass
class Reservoir:
    """One run's inputs of the priors, SI units, grids (Z, Y, X)."""

    active: np.ndarray  # bool
    perm_xyz: tuple  # PermX, PermY, PermZ, m^2
    porosity: np.ndarray
    temperature0: np.ndarray  # K
    inj_rate: np.ndarray  # kg/s per cell, + injection
    cell_size: tuple  # (dx, dy, dz), m
    boundary: str = "closed"  # description.BOUNDARY_KINDS
    boundary_multiplier: float = 0.0
    compressibility: float = GENERIC_COMPRESSIBILITY
    rock_heat_per_volume: float = GENERIC_ROCK_HEAT_PER_VOLUME
    rock_conductivity: float = GENERIC_ROCK_CONDUCTIVITY
    injection_gap: np.ndarray | None = None  # K, injected water's temperature minus temperature0
    outside_heat_exchange: bool = True  # conduction to the rock outside the active cells
    pressure0: np.ndarray | None = None  # Pa, needed by the wells' pressure limits
    # Pa at a well's shallowest perforation, one number or a grid (read at that cell); None: the
    # wells hold their rates at any pressure
    producer_min_bhp: float | np.ndarray | None = None
    injector_max_bhp: float | np.ndarray | None = None
    well_radius: float = GENERIC_WELL_RADIUS
    wellbore: bool = True  # False: each cell takes its inj_rate (description.WELL_INFLOWS "as_given")


def _liquid_range(temperature):
    """K as float64, clipped to where the water formulas stay finite: foreign files may hold any value."""
    return np.clip(np.asarray(temperature, np.float64), 275.0, 600.0)


def water_density(temperature):
    """kg/m^3 of liquid water at 1 atm, T in K (water.py, synth's water). The pressure prior needs
    only its change with temperature."""
    return water.density_at_1atm(_liquid_range(temperature))


def water_viscosity(temperature):
    """Pa s; liquid water, T in K (water.py, synth's water)."""
    return water.viscosity(_liquid_range(temperature))


def _mobility(temperature):
    """kg/(m^3 Pa s): the water's density over its viscosity."""
    return water_density(temperature) / water_viscosity(temperature)


class _Faces(ActiveFaces):
    """Active cells, their face pairs and geometric transmissibilities (TPFA, harmonic, m^3), with
    what the priors add: the lateral sides of the box and each face's depth step."""

    def __init__(self, active, perm_xyz, cell_size):
        super().__init__(active, cell_size)
        # across Z, Y, X; a missing or negative value is impermeable
        k = [np.maximum(np.nan_to_num(np.asarray(perm_xyz[i], np.float64).ravel()[self.cells]), 0.0) for i in (2, 1, 0)]
        self.trans = np.nan_to_num(self.transmissibility(k))
        self.side_trans = np.zeros(self.n)  # half-cell transmissibility to the lateral sides of the box
        for axis in (1, 2):
            spacing, area = self.axes[axis]
            for side in (-1, 1):
                c = self.boundary_cells(axis, side, box_only=True)
                np.add.at(self.side_trans, c, area * k[axis][c] / (0.5 * spacing))
        self.on_side = lateral_side(self.grid).ravel()[self.cells]
        # depth of cell a minus depth of cell b per face (Z is depth, a is the shallower cell)
        self.depth_step = np.where(self.face_axis == 0, -self.axes[0][0], 0.0)

    def divergence(self, face_values) -> np.ndarray:
        """Per cell, the net outflow of a quantity given per face from a to b."""
        return np.bincount(self.a, face_values, self.n) - np.bincount(self.b, face_values, self.n)

    def laplacian(self, face_values) -> sp.csc_matrix:
        a, b, n = self.a, self.b, self.n
        return sp.coo_matrix((np.concatenate([face_values, face_values, -face_values, -face_values]),
                              (np.concatenate([a, b, a, b]), np.concatenate([a, b, b, a]))), (n, n)).tocsc()


def priors(res: Reservoir, n_reports: int, rates: list | None = None) -> np.ndarray:
    """(n_reports, schema.N_PRIORS, Z, Y, X) float16 at t = 0, 1, ... years: the thermal prior's
    temperature change as a share of the injection gap, then the pressure prior as
    asinh(change / PRESSURE_PRIOR_SCALE_PA).
    ``rates``: gets each year's (injected, produced) kg/s as the priors' wells delivered them."""
    theta, pressure = prior_fields(res, n_reports, rates)
    out = np.zeros((n_reports, schema.N_PRIORS) + tuple(res.active.shape), np.float16)
    out[:, schema.PRIOR_NAMES.index(schema.THERMAL_PRIOR_NAMES[0])] = theta
    out[:, schema.PRIOR_NAMES.index(schema.PRESSURE_PRIOR_NAMES[0])] = np.arcsinh(
        pressure / schema.PRESSURE_PRIOR_SCALE_PA)
    return out


def prior_fields(res: Reservoir, n_reports: int, rates: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(theta, pressure change in Pa), each (n_reports, Z, Y, X) float64, 0 outside the active cells;
    ``rates``: as priors'."""
    shape = (n_reports,) + tuple(res.active.shape)
    faces = _Faces(res.active, res.perm_xyz, res.cell_size)
    q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    if faces.n == 0 or not np.any(q) or n_reports < 2:
        return np.zeros(shape), np.zeros(shape)
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    system = _pressure_system(faces, res, t0)
    gap = np.zeros(faces.n) if res.injection_gap is None else \
        np.nan_to_num(np.asarray(res.injection_gap, np.float64).ravel()[faces.cells])
    theta = _thermal_march(faces, res, system, t0, gap, n_reports, rates)
    pressure = _pressure_march(faces, system, t0 + gap * theta, n_reports)
    to_grids = lambda v: np.stack([faces.to_grid(row).astype(np.float64) for row in v])  # noqa: E731
    return to_grids(theta), to_grids(pressure)


@dataclass
class _PressureSystem:
    """The constant-coefficient pressure matrix of a run (water at its initial temperature, the
    wells' indices on its diagonal) and its factorization, shared by both marches."""

    rho0: np.ndarray
    mob0: np.ndarray  # the water's density over viscosity per cell at t0, kg/(m^3 Pa s)
    lam0: np.ndarray  # face mobility x transmissibility, kg/(Pa s)
    pore_volume: np.ndarray
    storage: np.ndarray  # kg/Pa per year
    solve: object
    wells: Wells
    sources: np.ndarray  # kg/s per cell taken as given (well_inflow "as_given"; else 0)


def _pressure_system(faces: _Faces, res: Reservoir, t0) -> _PressureSystem:
    a, b = faces.a, faces.b
    rho0 = water_density(t0)
    mob0 = _mobility(t0)
    lam0 = faces.trans * 0.5 * (mob0[a] + mob0[b])
    pore_volume = faces.volume * np.clip(np.asarray(res.porosity, np.float64).ravel()[faces.cells], MIN_POROSITY, 1.0)
    support = np.zeros(faces.n)
    if res.boundary == "pore_volume":
        pore_volume = pore_volume * np.where(faces.on_side, max(res.boundary_multiplier, 1.0), 1.0)
    elif res.boundary == "fixed_pressure":
        support = max(res.boundary_multiplier, 0.0) * faces.side_trans * mob0  # the aquifer's water is at t0
    storage = pore_volume * rho0 * max(res.compressibility, 1e-12) / YEAR_SECONDS
    columns = _well_columns(faces, res, t0, rho0, mob0) if res.wellbore else []
    sources = np.zeros(faces.n) if res.wellbore else np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    solve = _spd_solver(faces.laplacian(lam0) + sp.diags(storage + support + wells_diagonal(faces.n, columns)))
    return _PressureSystem(rho0, mob0, lam0, pore_volume, storage, solve, join_wells(faces, columns, solve), sources)


def _well_index(faces: _Faces, res: Reservoir) -> np.ndarray:
    """Peaceman's well index (m^3) of a vertical well through each active cell (anisotropic cell)."""
    dx, dy, dz = (float(v) for v in res.cell_size)
    kx, ky = (np.maximum(np.nan_to_num(np.asarray(res.perm_xyz[i], np.float64).ravel()[faces.cells]), 0.0) for i in (0, 1))
    ratio = np.sqrt(ky / np.maximum(kx, 1e-300))
    r0 = 0.28 * np.sqrt(ratio * dx**2 + dy**2 / np.maximum(ratio, 1e-300)) / (np.sqrt(ratio) + 1 / np.sqrt(np.maximum(ratio, 1e-300)))
    return 2 * np.pi * np.sqrt(kx * ky) * dz / np.log(np.maximum(r0 / res.well_radius, 1.01))


def _well_columns(faces: _Faces, res: Reservoir, t0, rho0, mob0) -> list:
    """[(cells, J, head, target rate, limit)] per well."""
    q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    z = np.unravel_index(faces.cells, faces.grid)[0]
    dz = float(res.cell_size[2])
    wi = _well_index(faces, res)
    gap = None if res.injection_gap is None else np.nan_to_num(np.asarray(res.injection_gap, np.float64).ravel()[faces.cells])
    p0 = None if res.pressure0 is None else np.asarray(res.pressure0, np.float64).ravel()[faces.cells]
    columns = []
    for sign, cells in well_cells(faces, q):
        bhp = res.injector_max_bhp if sign > 0 else res.producer_min_bhp
        if sign > 0 and gap is not None:  # the injected water fills the wellbore
            t_well = float(np.mean(t0[cells] + gap[cells]))
            rho_well, mob = float(water_density(t_well)), np.full(len(cells), water_density(t_well) / water_viscosity(t_well))
        else:  # a producer's wellbore holds the reservoir's water: no head over it
            rho_well, mob = None, mob0[cells]
        head = np.zeros(len(cells))
        if rho_well is not None:
            step = GRAVITY * dz * np.diff(z[cells]) * (rho_well - 0.5 * (rho0[cells][1:] + rho0[cells][:-1]))
            head[1:] = np.cumsum(step)
        index = well_inflow_index(wi[cells] * mob, q[cells])
        limit = np.nan
        if bhp is not None and p0 is not None:
            top = faces.cells[cells[0]]
            bhp_top = float(bhp) if np.ndim(bhp) == 0 else float(np.asarray(bhp).ravel()[top])
            limit = bhp_top - p0[cells[0]]  # the wellbore's column below the top is in head
        columns.append((cells, index, head, float(q[cells].sum()), limit))
    return columns


def _pressure_march(faces: _Faces, system: _PressureSystem, temperature, n_reports,
                    rates: list | None = None) -> np.ndarray:
    """(n_reports, n) pressure change since t = 0 at each year; ``temperature`` (n_reports, n) in K
    or None (water stays at t0: constant coefficients). ``rates``: as _thermal_march's."""
    out = np.zeros((n_reports, faces.n))
    rho, q = system.rho0, None
    for t in range(1, n_reports):
        out[t], _, rho, q = _pressure_step(faces, system, out[t - 1], None if temperature is None else temperature[t], rho,
                                           q_before=q)
        if rates is not None:
            rates.append(_field_rates(system, q))
    return out


def _field_rates(system: _PressureSystem, q) -> tuple[float, float]:
    """(injected, produced) kg/s of the wells' delivered rates per cell ``q``, summed per well (a
    cold injector's shallow cells may give water back)."""
    wells = [float(q[cells].sum()) for cells in system.wells.cells] or list(q)
    return sum(w for w in wells if w > 0), -sum(w for w in wells if w < 0)


def _pressure_step(faces: _Faces, system: _PressureSystem, dp, temperature, rho_before, rtol=None, q_before=None):
    """One backward-Euler year from the pressure change ``dp``, the water at ``temperature`` (n,
    K; None: at t0) after ``rho_before`` (kg/m^3): (new dp, mass flux per face from a to b in
    kg/s with the water's weight, the water's density, the wells' delivered rates per cell);
    ``q_before``: the step before's delivered rates (the wells' correction starts from them)."""
    a, b = faces.a, faces.b
    rhs = system.storage * dp
    if temperature is None:
        dp, q = solve_with_wells(system.wells, system.solve, system.sources, rhs, dp, rtol)
        return dp, system.lam0 * (dp[a] - dp[b]), system.rho0, q
    rho0 = system.rho0
    rho = water_density(temperature)
    mob = _mobility(temperature)
    excess = GRAVITY * 0.5 * (rho[a] + rho[b] - rho0[a] - rho0[b]) * faces.depth_step  # Pa, the weight over t0's
    lam = faces.trans * np.where(dp[a] - dp[b] > excess, mob[a], mob[b])  # upwind mobility, as simulators take it
    # the water's other mobility, lagged a step: A0 x = b + (A0 - A) x_prev converges for A < 2 A0
    # (hot water injected into cold rock would pass that and blow the march up: capped)
    lam = np.minimum(lam, MAX_MOBILITY_GAIN * system.lam0)
    weight = lam * excess
    rhs = (rhs + faces.divergence((system.lam0 - lam) * (dp[a] - dp[b]) + weight)
           - system.pore_volume * (rho - rho_before) / YEAR_SECONDS)
    dp, q = solve_with_wells(system.wells, system.solve, system.sources, rhs, dp, rtol, _index_now(system, mob), q_before)
    return dp, lam * (dp[a] - dp[b]) - weight, rho, q


def _index_now(system: _PressureSystem, mob) -> list | None:
    """Each well's J per cell with the water at mobility ``mob``: a producer's cells' own (cold
    water reaching it cuts its inflow: open-darts' held producers delivered 1.3x less per bar than
    at the warm water's), an injector's the wellbore's; None where no producer's changed."""
    wells = system.wells
    ratios = [mob[c] / system.mob0[c] if t < 0 else np.ones(len(c)) for c, t in zip(wells.cells, wells.target)]
    if all(np.allclose(r, 1.0, rtol=1e-3, atol=0.0) for r in ratios):
        return None
    return [index * r for index, r in zip(wells.index, ratios)]


@dataclass
class _Heat:
    """A run's heat-transport coefficients, volumes of water's heat capacity (m^3, m^3/s)."""

    capacity: np.ndarray  # per cell, rock and water
    injection: np.ndarray  # injected water per cell
    conduction: np.ndarray  # per face
    rock_contact: np.ndarray  # per cell, to the rock around the active region
    dt: float = YEAR_SECONDS / THERMAL_SUBSTEPS


def _heat(faces: _Faces, res: Reservoir, q) -> _Heat:
    porosity = np.clip(np.asarray(res.porosity, np.float64).ravel()[faces.cells], 0.0, 1.0)
    capacity = faces.volume * (porosity + (1 - porosity) * res.rock_heat_per_volume / WATER_HEAT_PER_VOLUME)
    if res.boundary == "pore_volume":  # the side cells' large volume holds heat as it holds pressure
        capacity = capacity * np.where(faces.on_side, max(res.boundary_multiplier, 1.0), 1.0)
    conduction, rock_contact = _conduction(faces, res.rock_conductivity / WATER_HEAT_PER_VOLUME)
    if not res.outside_heat_exchange:  # e.g. open-darts: cells outside the active region do not exist
        rock_contact = np.zeros_like(rock_contact)
    return _Heat(capacity, np.maximum(q, 0.0) / 1000.0, conduction, rock_contact)


def _thermal_march(faces: _Faces, res: Reservoir, system: _PressureSystem, t0, gap, n_reports,
                   rates: list | None = None) -> np.ndarray:
    """(n_reports, n) the temperature change as a share of the injection gap: implicit upwind
    transport plus conduction, THERMAL_SUBSTEPS backward-Euler steps a year, on each year's flow of
    the cold-water pressure step at the share of the year before: the plume's weight and viscosity
    act on its own flow, so cold water sinks and spreads along the base. Where the gap is known,
    the share includes the background drift (``_background_source``) in the cells the injected
    water has not replaced. ``rates``: gets each year's (injected, produced) kg/s as the wells
    delivered them."""
    heat = _heat(faces, res, np.zeros(faces.n))
    out = np.zeros((n_reports, faces.n))
    theta, drift, dp, rho, q = np.zeros(faces.n), np.zeros(faces.n), np.zeros(faces.n), system.rho0, None
    with_drift = np.abs(gap) >= MIN_DRIFT_GAP  # elsewhere a share of the gap cannot carry it
    for t in range(1, n_reports):
        temperature = t0 + gap * theta + drift * (1.0 - theta) if gap.any() else None
        dp, flux, rho, q = _pressure_step(faces, system, dp, temperature, rho, FLOW_RTOL, q)
        heat = dataclasses.replace(heat, injection=np.maximum(q, 0.0) / 1000.0)  # what each cell took in
        if rates is not None:
            rates.append(_field_rates(system, q))
        matrix = _transport_matrix(faces, heat, flux / 1000.0)
        solve = _transport_solver(matrix, np.argsort(-dp, kind="stable"))
        background = _background_source(faces, heat, flux / 1000.0, t0) if with_drift.any() else None
        for _ in range(THERMAL_SUBSTEPS):
            theta = np.clip(solve(heat.capacity / heat.dt * theta + heat.injection, theta), 0.0, 1.0)
            if background is not None:
                drift = solve(heat.capacity / heat.dt * drift + background, drift)
        out[t] = theta
        if background is not None:
            out[t] += np.where(with_drift, drift * (1.0 - theta) / np.where(with_drift, gap, 1.0), 0.0)
    return out


def _background_source(faces: _Faces, heat: _Heat, flux, t0) -> np.ndarray:
    """The heat source (K m^3/s, in water's heat capacity) that moves the initial temperature
    itself: the year's flow (m^3/s per face, a to b) carrying it, as ``_transport_matrix`` carries
    the share (warm water rising to a producer), and conduction evening out its gradient where
    nothing outside the active cells holds it (with the outside rock's exchange, a boundary cell's
    conduction is taken as the steady geothermal flux through it). Marched like the share, it is
    the drift of the cells no injected water reaches (open-darts' insulated box: top +0.3 K, base
    -0.5 K by year 30, which the share alone left as error)."""
    n, a, b = faces.n, faces.a, faces.b
    upstream, downstream = np.where(flux > 0, a, b), np.where(flux > 0, b, a)
    advection = np.bincount(downstream, np.abs(flux) * (t0[downstream] - t0[upstream]), n)
    step = heat.conduction * (t0[a] - t0[b])
    conduction = np.bincount(a, step, n) - np.bincount(b, step, n)
    return -advection - np.where(heat.rock_contact > 0, 0.0, conduction)


def _transport_matrix(faces: _Faces, heat: _Heat, flux) -> sp.csr_matrix:
    """Backward-Euler upwind transport with ``flux`` (m^3/s of water per face, from a to b) plus conduction.
    Non-conservative upwind form: theta_i moves towards its upstream values at the rate of its
    inflow, so 0 <= theta <= 1 (an M-matrix) although the flow field is not divergence-free."""
    n, a, b = faces.n, faces.a, faces.b
    upstream, downstream = np.where(flux > 0, a, b), np.where(flux > 0, b, a)
    flux = np.abs(flux)
    conduction = heat.conduction
    diag = (heat.capacity / heat.dt + np.bincount(downstream, flux, n) + heat.injection + heat.rock_contact
            + np.bincount(a, conduction, n) + np.bincount(b, conduction, n))
    return sp.csr_matrix((np.concatenate([-flux, -conduction, -conduction, diag]),
                          (np.concatenate([downstream, a, b, np.arange(n)]),
                           np.concatenate([upstream, b, a, np.arange(n)]))), (n, n))


def _conduction(faces: _Faces, diffusivity_scale):
    """Conductances per face of ``faces`` (lambda A / d over rho_w c_w, m^3/s) and each active
    cell's conductance to the rock around it (inactive neighbours and outside the box)."""
    g = np.array([diffusivity_scale * area / spacing for spacing, area in faces.axes])  # per axis Z, Y, X
    rock_contact = np.zeros(faces.n)
    for axis in range(3):
        for side in (1, -1):
            np.add.at(rock_contact, faces.boundary_cells(axis, side), g[axis])
    return g[faces.face_axis], rock_contact


# The last pressure matrix's factorization (or AMG hierarchy), by the matrix's digest: a sweep's
# scenarios share the geology, and those that change only the rates share the matrix, so each worker
# factorizes it once (on the darts-dev grid ~0.4 s of a scenario's ~1.2 s priors).
_LAST_FACTOR: dict = {}


def _matrix_digest(A) -> str:
    A = A.tocsc()
    h = hashlib.blake2b(digest_size=16)
    for part in (np.asarray(A.shape), A.indptr, A.indices, A.data):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def _spd_solver(A):
    """x = solve(b, x0[, rtol]) for a fixed SPD matrix: sparse LU on small grids, AMG-preconditioned
    CG on large ones (LU fill-in on ~1e6 cells needs tens of GB)."""
    direct = A.shape[0] <= DIRECT_SOLVE_MAX_CELLS
    key = (_matrix_digest(A), direct)
    if key not in _LAST_FACTOR:
        _LAST_FACTOR.clear()
        _LAST_FACTOR[key] = _factor(A) if direct else \
            pyamg.smoothed_aggregation_solver(A.tocsr(), symmetry="symmetric").aspreconditioner(cycle="V")
    factor = _LAST_FACTOR[key]
    if direct:
        return lambda b, x0, rtol=None: factor.solve(b)
    return _iterative(spla.cg, A, factor, 1e-6, 300, f"pressure prior: pressure solve did not converge ({A.shape[0]} cells)")


def _iterative(method, A, M, rtol, maxiter, failure: str):
    """x = solve(b, x0[, rtol]) by a preconditioned scipy Krylov ``method``; ``failure``: the one-line error."""
    default_rtol = rtol

    def solve(b, x0, rtol=None):
        x, info = method(A, b, x0=x0, rtol=rtol or default_rtol, atol=0.0, maxiter=maxiter, M=M)
        if info != 0:
            raise UserError(failure)
        return x

    return solve


def _factor(A):
    """Sparse LU of a diagonally dominant matrix with a symmetric pattern: minimum-degree ordering
    on A + A^T and no pivoting (2.4x faster and half the fill of the default on a 48x20x24 grid)."""
    return spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                     options={"SymmetricMode": True})


def _transport_solver(A, flow_order):
    """x = solve(b, x0) for a non-symmetric M-matrix that changes every year: BiCGSTAB
    preconditioned by a Gauss-Seidel sweep in flow order (there the pressure-driven advection
    is lower triangular, so the sweep solves it exactly; the plume's sinking is left to BiCGSTAB).
    A sparse LU per year would cost ~10x more (fill-in)."""
    n = A.shape[0]
    rank = np.empty(n, np.int64)
    rank[flow_order] = np.arange(n)
    entries = A.tocoo()  # A's lower triangle in flow order, built from its entries (no sparse fancy indexing)
    row, col = rank[entries.row], rank[entries.col]
    keep = row >= col
    ordered_lower = sp.csc_matrix((entries.data[keep], (row[keep], col[keep])), (n, n))
    lower = spla.splu(ordered_lower, permc_spec="NATURAL", diag_pivot_thresh=0.0)
    M = spla.LinearOperator((n, n), lambda r: lower.solve(np.asarray(r).ravel()[flow_order])[rank])
    return _iterative(spla.bicgstab, A, M, TRANSPORT_RTOL, 200,
                      f"thermal prior: heat-transport solve did not converge ({n} cells)")


def injection_temperature(scalars) -> float | None:
    """K, from the field scalars [T, 5] (schema.SCALAR_NAMES): injected energy rate / water rate is
    the injected water's enthalpy, taken as c_w (T - 273.15). None when nothing is injected."""
    scalars = np.asarray(scalars, np.float64)
    energy = scalars[:, schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")]
    rate = scalars[:, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")]
    injecting = rate > 0
    if not injecting.any():
        return None
    return float(water.temperature_from_enthalpy(np.median(energy[injecting] / rate[injecting])))


def delivered_rates(res: Reservoir, n_reports: int) -> np.ndarray:
    """(n_reports - 1, 2) the field's injected and produced mass rates (kg/s) in years 1, 2, ... as
    the priors' wells deliver them (a well held at its bottomhole limit delivers less than its rate)."""
    faces = _Faces(res.active, res.perm_xyz, res.cell_size)
    q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    if faces.n == 0 or not np.any(q) or n_reports < 2:
        return np.zeros((max(n_reports - 1, 0), 2))
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    gap = np.zeros(faces.n) if res.injection_gap is None else \
        np.nan_to_num(np.asarray(res.injection_gap, np.float64).ravel()[faces.cells])
    rates = []
    _thermal_march(faces, res, _pressure_system(faces, res, t0), t0, gap, n_reports, rates)
    return np.array(rates)


def held_well_pressures(res: Reservoir, temperature, n_reports: int, shares) -> tuple[np.ndarray, ...]:
    """((years, K) each well's bottomhole pressure, Pa at its top perforation, at its rate times the
    year's ``shares`` (years, 2) of injection and production, no limits, the water at ``temperature``
    (n_reports, n_active) K; (K,) initial pressure there; (K,) +1 injector, -1 producer) (data/limits.py)."""
    faces = _Faces(res.active, res.perm_xyz, res.cell_size)
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    system = _pressure_system(faces, dataclasses.replace(res, producer_min_bhp=None, injector_max_bhp=None), t0)
    wells, p0 = system.wells, np.asarray(res.pressure0, np.float64).ravel()[faces.cells]
    tops = [cells[0] for cells in wells.cells]
    out, dp, rho, q = np.zeros((max(n_reports - 1, 0), len(tops))), np.zeros(faces.n), system.rho0, None
    for t in range(1, n_reports):
        share = np.where(wells.target > 0, shares[t - 1, 0], shares[t - 1, 1])
        system.wells = dataclasses.replace(wells, target=wells.target * np.nan_to_num(share, nan=1.0))
        water_t = np.asarray(temperature[t], np.float64)
        dp, _, rho, q = _pressure_step(faces, system, dp, water_t, rho, q_before=q)
        index = _index_now(system, _mobility(water_t)) or wells.index
        out[t - 1] = [p0[c] + dp[c] + q[c] / j[0] for c, j in zip(tops, index)]  # q = J (P - dp) at the top
    return out, p0[tops], np.sign(wells.target)


def warm_pressure_change(res: Reservoir, n_reports: int) -> np.ndarray:
    """(n_reports, n_active) pressure change since t = 0 (Pa) with the water at its initial
    temperature: the pressure march without the cold water (calibration.py fits with it)."""
    faces = _Faces(res.active, res.perm_xyz, res.cell_size)
    q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    if faces.n == 0 or not np.any(q) or n_reports < 2:
        return np.zeros((n_reports, faces.n))
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    warm = dataclasses.replace(res, injection_gap=None)  # warm water in the wellbores too
    return _pressure_march(faces, _pressure_system(faces, warm, t0), None, n_reports)


def driven_pressure_change(res: Reservoir, temperature, n_reports: int, rates: list | None = None) -> np.ndarray:
    """(n_reports, n_active) pressure change since t = 0 (Pa) with the water at the given
    temperatures (n_reports, n_active) K: the pressure march of a run whose temperature history is
    known (calibration.py fits the pressure constants on its training runs' own, data/limits.py the
    wells' limits). ``rates``: gets each year's delivered (injected, produced) kg/s."""
    faces = _Faces(res.active, res.perm_xyz, res.cell_size)
    q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
    if faces.n == 0 or not np.any(q) or n_reports < 2:
        return np.zeros((n_reports, faces.n))
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    return _pressure_march(faces, _pressure_system(faces, res, t0), np.asarray(temperature, np.float64), n_reports,
                           rates)
