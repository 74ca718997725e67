"""The voxel engine's simulator: single-phase water flow and heat transport on the active cells.

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
"""

from __future__ import annotations

import numpy as np
import pyamg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from tqdm import tqdm

from voxel_ode import schema
from voxel_ode.physics import water
from voxel_ode.physics.faces import ActiveFaces
from voxel_ode.synth.geology import Reservoir, SimParams

SECONDS_PER_YEAR = schema.STEP_SECONDS
GRAVITY = schema.GRAVITY
WATER_HEAT_CAPACITY = schema.WATER_HEAT_CAPACITY  # J/(kg K), liquid water


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
class Unsafe(Exception):
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


def run_physics(res: Reservoir, p: SimParams, inj_rate, grid, n_steps, substeps, progress):
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
            raise Unsafe("non-finite state")
        p_floor = np.maximum(water.saturation_pressure(temp) + 5e5, 1e6)
        if np.any(pres < p_floor):
            raise Unsafe(f"pressure below {p_floor.min():.3g} Pa in year {year}")
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

