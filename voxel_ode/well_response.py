"""The reservoir's pressure response to its wells: a physics feature derived in prep.

Why: most of a run's pressure change happens in the first year (the wells build
their pressure cones within weeks in permeable rock) and its shape is set by the
whole field: the permeability between injectors and producers, faults, and how
much the edges of the model support the pressure. A convolutional network sees
only its receptive field, and ~40 training runs are too few to learn that global
map from examples (measured: docs/benchmarks.md, "Demo and fidelity"). One
linear solve per simulation gives it instead.

What: the pressure change (Pa) after one year of the wells' rates (static
``InjRate``) in single-phase, slightly compressible water on the model's
grid, linearised about the initial state (gravity cancels), by one backward-
Euler year step from rest:

    phi c_t V / dt * dp_i + sum_j T_ij / mu_ij (dp_i - dp_j) + B_i dp_i = q_i / rho

T_ij: two-point face transmissibility with harmonic permeability; mu: water
viscosity at the initial temperature (Vogel-type correlation); rho, c_t: the
generic values below, not a run's own (a real export's parameters need not say
them). B_i: support through the lateral sides of the box (X and Y faces of
the grid's outer cells), where the reservoir continues beyond the model, to a
fixed initial pressure. How strong that support is differs from run to run, so
five responses are given, with 100 %, 10 %, 1 %, 0.1 % and no support
(``SUPPORT_STRENGTHS``, a log-spaced scale from open to closed sides; closed
sides still give a finite one-year change through the storage term); a run's
truth lies near the response of its own support, between two neighbours on that
scale. Measured on the 45 fidelity runs, a least-squares mix of the five leaves on
average 4 % of the year-1 and 11 % of the year-29 change unexplained (three
responses, 100 % / 1 % / 0: 8 % and 14 % on the first 20). The model interpolates
between neighbours rather than mixing freely (model._mix_responses): with only
three responses the best free weights cancel (e.g. -1.9 x open + 2.8 x 1 %) and
could not be predicted for new runs.
The network learns the mix and what the linear picture misses (cold water's
viscosity, thermal contraction, time).

The thermal prior (``thermal_prior``) does for temperature what the responses
do for pressure: the injected water's heat carried along three of these flow
fields and conducted into the surrounding rock, by a linear transport solve
over the run's 29 years (stored per year, not as a static channel). The pressure
prior (``pressure_prior``) then marches the pressure over the same years with that
cold water and the run's own support: what the model's pressure step starts from.

Cost: five sparse SPD solves per simulation (direct on small grids, pyamg
AMG-preconditioned CG on large ones) and 3 x 116 transport steps (direct on
small grids, BiCGSTAB with a flow-ordered Gauss-Seidel preconditioner on large
ones): ~51 s + ~90 s on the full grid (benchmark notes, "Thermal prior").
The pressure prior (``pressure_prior``: 116 SPD solves, CG preconditioned by a per-year LU
or a reused AMG hierarchy) is the dearest part: ~1 s on the benchmarks' 32 x 16 x 16 grids,
~6 minutes on the full grid (benchmark notes, "Well-response channels").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from voxel_ode import schema
from voxel_ode.utils import UserError

YEAR_SECONDS = 365.25 * 86400.0
GRAVITY = 9.80665  # m/s^2
WATER_DENSITY = 1000.0  # kg/m^3: converts mass rates to volume rates (within ~10 % over 20-200 C)
TOTAL_COMPRESSIBILITY = 1e-9  # 1/Pa, rock + water, typical of consolidated reservoirs
# Lateral support multipliers on the half-cell transmissibility to the box side,
# one response channel each (schema.RESPONSE_NAMES, same order).
SUPPORT_STRENGTHS = (1.0, 0.1, 0.01, 0.001, 0.0)
# the support of the response whose flow field the heat front follows (thermal_arrival)
ARRIVAL_SUPPORT = SUPPORT_STRENGTHS[schema.RESPONSE_NAMES.index(schema.ARRIVAL_FLOW_RESPONSE)]
DIRECT_SOLVE_MAX_CELLS = 60_000
# Heat front (thermal_arrival): generic volumetric heat capacities, J/(m^3 K).
ROCK_HEAT_PER_VOLUME = 2.3e6  # grain density x specific heat of common reservoir rocks (2.0-2.6e6)
WATER_HEAT_PER_VOLUME = WATER_DENSITY * schema.WATER_HEAT_CAPACITY
ARRIVAL_CAP_YEARS = 1000.0  # "never" within a run's decades
ROCK_CONDUCTIVITY = 2.5  # W/(m K), bulk; used when a run's RockThermalConductivity param is missing or <= 0
PRIOR_SUBSTEPS = 4  # backward-Euler steps per year of the thermal prior


def water_density(temperature):
    """kg/m^3 of liquid water at 1 atm, T in K (Tanaka et al. 2001; within 0.2 % of the saturated
    liquid over 20-250 C). The pressure prior needs only its change with temperature."""
    tc = np.clip(np.asarray(temperature, np.float64), 275.0, 600.0) - 273.15
    return 999.974950 * (1.0 - (tc - 3.983035) ** 2 * (tc + 301.797) / (522528.9 * (tc + 69.34881)))


def water_viscosity(temperature):
    """Pa s; Vogel-type fit for liquid water, T in K (within a few % over 20-250 C)."""
    t = np.clip(np.asarray(temperature, np.float64), 275.0, 600.0)
    return 2.414e-5 * 10.0 ** (247.8 / (t - 140.0))


class _Faces:
    """Active cells and their face transmissibilities (TPFA, harmonic permeability, m^3/(Pa s))."""

    def __init__(self, active, perm_xyz, temperature0, cell_size):
        grid = active.shape
        dx, dy, dz = (float(v) for v in cell_size)
        if not all(np.isfinite(v) and v > 0 for v in (dx, dy, dz)):
            raise UserError(f"well response: cell sizes must be positive, got {cell_size} (prep --cell_size DX DY DZ)")
        self.grid, self.volume = grid, dx * dy * dz
        self.cells = cells = np.flatnonzero(active.ravel())
        self.n = n = cells.size
        local = np.full(active.size, -1, np.int64)
        local[cells] = np.arange(n)
        local = local.reshape(grid)
        mobility = 1.0 / water_viscosity(np.asarray(temperature0).ravel()[cells])
        # per grid axis (Z, Y, X): permeability, spacing, face area
        axes = ((perm_xyz[2], dz, dx * dy), (perm_xyz[1], dy, dx * dz), (perm_xyz[0], dx, dy * dz))
        rows, cols, trans, vertical = [], [], [], []
        self.boundary = np.zeros(n)  # sum of lateral-side transmissibilities at full support
        for axis, (perm, spacing, area) in enumerate(axes):
            k = np.maximum(np.asarray(perm, np.float64).ravel()[cells], 0.0)
            lo, hi = [slice(None)] * 3, [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            a, b = local[tuple(lo)], local[tuple(hi)]
            face = (a >= 0) & (b >= 0)
            a, b = a[face], b[face]
            with np.errstate(divide="ignore"):
                t = area / (0.5 * spacing / k[a] + 0.5 * spacing / k[b])  # harmonic; 0 if either k is 0
            rows.append(a)
            cols.append(b)
            vertical.append(np.full(a.size, axis == 0))
            trans.append(np.nan_to_num(t) * 0.5 * (mobility[a] + mobility[b]))
            if axis > 0:  # lateral sides of the box
                for side in (0, -1):
                    edge = [slice(None)] * 3
                    edge[axis] = side
                    c = local[tuple(edge)]
                    c = c[c >= 0]
                    np.add.at(self.boundary, c, area * k[c] / (0.5 * spacing) * mobility[c])
        self.a, self.b, self.trans = np.concatenate(rows), np.concatenate(cols), np.concatenate(trans)
        self.mobility0 = mobility  # 1 / viscosity at temperature0, per active cell
        # depth of cell a minus depth of cell b per face (Z is depth, a is the shallower cell)
        self.depth_step = np.where(np.concatenate(vertical), -dz, 0.0)

    def to_grid(self, values) -> np.ndarray:
        out = np.zeros(self.grid, np.float32)
        out.ravel()[self.cells] = values
        return out


def pressure_responses(active, perm_xyz, porosity, temperature0, inj_rate, cell_size,
                       faces: _Faces | None = None) -> list[np.ndarray]:
    """One-year pressure change (Pa, float32 grids, 0 outside ``active``) per support strength.

    active: bool (Z, Y, X); perm_xyz: PermX, PermY, PermZ (m^2); porosity (-);
    temperature0 (K); inj_rate (kg/s per cell, + injection); cell_size: (dx, dy, dz) in m.
    """
    faces = faces or _Faces(active, perm_xyz, temperature0, cell_size)
    n, a, b, t = faces.n, faces.a, faces.b, faces.trans
    q = np.asarray(inj_rate, np.float64).ravel()[faces.cells] / WATER_DENSITY
    if n == 0 or not np.any(q):
        return [faces.to_grid(0.0) for _ in SUPPORT_STRENGTHS]
    porosity = np.asarray(porosity, np.float64).ravel()[faces.cells]
    storage = porosity.clip(1e-4) * TOTAL_COMPRESSIBILITY * faces.volume / YEAR_SECONDS
    base_diag = storage + np.bincount(a, t, n) + np.bincount(b, t, n)
    offdiag = sp.coo_matrix((np.concatenate([-t, -t]), (np.concatenate([a, b]), np.concatenate([b, a]))), (n, n))
    out = []
    for strength in SUPPORT_STRENGTHS:
        A = (offdiag + sp.diags(base_diag + strength * faces.boundary)).tocsr()
        out.append(faces.to_grid(_solve_spd(A, q)))
    return out


def thermal_arrival(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, response,
                    faces: _Faces | None = None) -> np.ndarray:
    """Years until injected water's heat front reaches each cell (float32 grid, 0 outside ``active``).

    The flow field is the one of ``response`` (a one-year pressure response of
    ``pressure_responses``, Pa). The front moves slower than the water by the bulk
    heat capacity: tau_i is the inflow-weighted mean of the upstream cells' tau plus
    cell i's heated volume V_i (phi + (1 - phi) rho_r c_r / (rho_w c_w)) over its
    inflow. Water from the box sides and cells without inflow count as never
    reached: tau is capped at ARRIVAL_CAP_YEARS.
    """
    faces = faces or _Faces(active, perm_xyz, temperature0, cell_size)
    n, cells = faces.n, faces.cells
    if n == 0:
        return faces.to_grid(0.0)
    pressure = np.asarray(response, np.float64).ravel()[cells]
    flux = faces.trans * (pressure[faces.a] - pressure[faces.b])  # m^3/s from a to b
    upstream = np.where(flux > 0, faces.a, faces.b)
    downstream = np.where(flux > 0, faces.b, faces.a)
    flux = np.abs(flux)
    q = np.asarray(inj_rate, np.float64).ravel()[cells] / WATER_DENSITY
    side_inflow = np.maximum(-ARRIVAL_SUPPORT * faces.boundary * pressure, 0.0)
    porosity = np.asarray(porosity, np.float64).ravel()[cells].clip(0.0, 1.0)
    heated = faces.volume * (porosity + (1 - porosity) * ROCK_HEAT_PER_VOLUME / WATER_HEAT_PER_VOLUME)
    cap = ARRIVAL_CAP_YEARS * YEAR_SECONDS
    leak = heated / cap  # keeps cells without inflow finite (at about the cap)
    inflow = np.bincount(downstream, flux, n) + np.maximum(q, 0.0) + side_inflow + leak
    # Flux runs from higher to lower pressure, so ordering the cells by falling pressure
    # makes the upwind system lower triangular: one substitution pass solves it.
    order = np.argsort(-pressure, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    A = sp.csr_matrix((np.concatenate([inflow, -flux]),
                       (np.concatenate([rank, rank[downstream]]), np.concatenate([rank, rank[upstream]]))), (n, n))
    rhs = (heated + side_inflow * cap)[order]
    tau = np.empty(n)
    tau[order] = spla.spsolve_triangular(A, rhs, lower=True)
    return faces.to_grid(np.minimum(tau, cap) / YEAR_SECONDS)


def thermal_prior(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, responses: dict, n_timesteps,
                  rock_conductivity=None, rock_heat_per_volume=None, faces: _Faces | None = None) -> np.ndarray:
    """Share of the injection temperature gap each cell has taken on after t years, on fixed flow fields.

    responses: pressure response grids by name (``pressure_responses``); the flow fields used
    are those of schema.THERMAL_PRIOR_RESPONSES. Returns theta
    (n_timesteps, len(schema.THERMAL_PRIOR_RESPONSES), Z, Y, X) float16 in [0, 1] (resolution 5e-4:
    0.07 K of a 150 K gap; half the size of float32 on disk), theta[0] = 0:
    the temperature change a linear heat-transport model predicts is theta x
    InjectionTemperatureGap. For each one-year pressure response (Pa) in ``responses``,
    its flow field (held fixed in time) carries the injected water's temperature
    (theta = 1 at the injectors) by implicit upwind advection, slowed by the bulk heat
    capacity; heat conducts between active cells and to the rock around them (inactive
    cells and the outside of the box, held at theta = 0); water entering from supported
    box sides has theta = 0. PRIOR_SUBSTEPS backward-Euler steps per year.

    Why: the cold plume's shape follows the flow between injectors and producers and the
    conductive exchange with the caprock, basement and the rock between the flow paths;
    none of that is local. Fitted per run (one gain and a mix of the open / 1 % / closed
    flow fields), this prior leaves 0.06 of the year-29 temperature change on the fidelity
    test runs (0.07 with the generic rock values), a sigmoid front around ThermalArrival
    0.46 (docs/benchmarks.md, "Thermal prior").

    rock_conductivity: W/(m K), default ROCK_CONDUCTIVITY; rock_heat_per_volume: grain
    density x specific heat, J/(m^3 K), default ROCK_HEAT_PER_VOLUME.
    """
    faces = faces or _Faces(active, perm_xyz, temperature0, cell_size)
    n, cells = faces.n, faces.cells
    out = np.zeros((n_timesteps, len(schema.THERMAL_PRIOR_RESPONSES)) + tuple(active.shape), np.float16)
    q = np.asarray(inj_rate, np.float64).ravel()[cells] / WATER_DENSITY if n else np.zeros(0)
    injection = np.maximum(q, 0.0)
    if n == 0 or not injection.any() or n_timesteps < 2:
        return out
    lam = rock_conductivity if rock_conductivity and np.isfinite(rock_conductivity) and rock_conductivity > 0 \
        else ROCK_CONDUCTIVITY
    rock_heat = rock_heat_per_volume if rock_heat_per_volume and np.isfinite(rock_heat_per_volume) \
        and rock_heat_per_volume > 0 else ROCK_HEAT_PER_VOLUME
    porosity = np.asarray(porosity, np.float64).ravel()[cells].clip(0.0, 1.0)
    capacity = faces.volume * (porosity + (1 - porosity) * rock_heat / WATER_HEAT_PER_VOLUME)  # m^3 of water
    dt = YEAR_SECONDS / PRIOR_SUBSTEPS
    conduction, rock_contact = _conduction(active, cell_size, lam / WATER_HEAT_PER_VOLUME, faces)
    for r, name in enumerate(schema.THERMAL_PRIOR_RESPONSES):
        strength = SUPPORT_STRENGTHS[schema.RESPONSE_NAMES.index(name)]
        pressure = np.asarray(responses[name], np.float64).ravel()[cells]
        flux = faces.trans * (pressure[faces.a] - pressure[faces.b])  # m^3/s from a to b
        upstream = np.where(flux > 0, faces.a, faces.b)
        downstream = np.where(flux > 0, faces.b, faces.a)
        flux = np.abs(flux)
        side_inflow = np.maximum(-strength * faces.boundary * pressure, 0.0)
        # non-conservative upwind form: theta_i moves towards its upstream values at the rate of
        # its inflow, so 0 <= theta <= 1 (an M-matrix) even though the one-year flow field
        # also fills storage and is not divergence-free
        diag = (capacity / dt + np.bincount(downstream, flux, n) + injection + side_inflow + rock_contact
                + np.bincount(faces.a, conduction, n) + np.bincount(faces.b, conduction, n))
        rows = np.concatenate([downstream, faces.a, faces.b])
        cols = np.concatenate([upstream, faces.b, faces.a])
        matrix = sp.coo_matrix((-np.concatenate([flux, conduction, conduction]), (rows, cols)), (n, n))
        solve = _transport_solver((matrix + sp.diags(diag)).tocsc(), np.argsort(-pressure, kind="stable"))
        theta = np.zeros(n)
        for t in range(1, n_timesteps):
            for _ in range(PRIOR_SUBSTEPS):
                theta = solve(capacity / dt * theta + injection, theta)
            out[t, r] = faces.to_grid(np.clip(theta, 0.0, 1.0))
    return out


def _conduction(active, cell_size, diffusivity_scale, faces: _Faces):
    """Conductances per face of ``faces`` (lambda A / d in m^3/s of water: divided by rho_w c_w) and
    each active cell's total conductance to the rock around it (inactive neighbours and the
    outside of the box, held at the initial temperature), over one cell spacing as between cells."""
    dx, dy, dz = (float(v) for v in cell_size)
    local = np.full(active.size, -1, np.int64)
    local[faces.cells] = np.arange(faces.n)
    local = np.pad(local.reshape(active.shape), 1, constant_values=-1)
    conduction, rock_contact = [], np.zeros(faces.n)
    for axis, (spacing, area) in enumerate(((dz, dx * dy), (dy, dx * dz), (dx, dy * dz))):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = local[tuple(lo)], local[tuple(hi)]
        g = diffusivity_scale * area / spacing
        both = (a >= 0) & (b >= 0)
        conduction.append(np.full(int(both.sum()), g))
        np.add.at(rock_contact, a[(a >= 0) & (b < 0)], g)
        np.add.at(rock_contact, b[(b >= 0) & (a < 0)], g)
    # same face order as _Faces (axis by axis, C order within an axis)
    return np.concatenate(conduction), rock_contact


def _transport_solver(A, flow_order):
    """x = solve(b, x0) for a fixed non-symmetric M-matrix A: sparse LU on small grids; on large ones
    (LU fill-in on a 3-D grid of ~1e6 cells needs tens of GB, ILU took ~7 min per simulation)
    BiCGSTAB preconditioned by a Gauss-Seidel sweep in flow order (cells by falling pressure):
    there the advection part is lower triangular, so the sweep solves pure advection exactly
    and leaves only the conduction towards downstream cells to iterate on."""
    if A.shape[0] <= DIRECT_SOLVE_MAX_CELLS:
        lu = spla.factorized(A)
        return lambda b, x0: lu(b)
    n = A.shape[0]
    rank = np.empty(n, np.int64)
    rank[flow_order] = np.arange(n)
    ordered = A.tocsr()[flow_order][:, flow_order]
    # a lower-triangular matrix factors without fill in its natural order
    lower = spla.splu(sp.tril(ordered).tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0)
    M = spla.LinearOperator((n, n), lambda r: lower.solve(np.asarray(r).ravel()[flow_order])[rank])

    def solve(b, x0):
        x, info = spla.bicgstab(A, b, x0=x0, rtol=1e-8, atol=0.0, maxiter=200, M=M)
        if info != 0:
            raise UserError(f"thermal prior: heat-transport solve did not converge ({n} cells)")
        return x

    return solve


def cold_response_change(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, responses: dict,
                         thermal_prior, gap) -> dict[str, np.ndarray]:
    """How much more pressure the cold injected water needs: each response of ``pressure_responses``
    re-solved with the water viscosity at the temperature the thermal prior gives at its last
    year (T0 + gap x theta of the 1 % flow field), minus the response itself (Pa, float32 grids by
    schema.COLD_RESPONSE_NAMES).

    Why: water at 60 C is 2-3x more viscous than at 160 C, so as the plume grows the injectors
    need more pressure for the same rate: pressure keeps rising over the years where the one-year
    responses at the initial temperature are flat. Fitted per run, the responses plus this change
    times a number per year leave 0.033 of the year-29 pressure change on the fidelity test runs
    and 0.123 on the demo's, against 0.088 and 0.230 without (docs/benchmarks.md, "What limits
    pressure now")."""
    theta = np.asarray(thermal_prior[-1, schema.THERMAL_PRIOR_RESPONSES.index(schema.ARRIVAL_FLOW_RESPONSE)],
                       np.float64)
    cold = np.asarray(temperature0, np.float64) + np.asarray(gap, np.float64) * theta
    colder = pressure_responses(active, perm_xyz, porosity, cold, inj_rate, cell_size)
    return {cold_name: (c - responses[name]).astype(np.float32)
            for cold_name, name, c in zip(schema.COLD_RESPONSE_NAMES, schema.RESPONSE_NAMES, colder)}


def pressure_prior(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, thermal_prior, gap, support,
                   compressibility=None, faces: _Faces | None = None) -> np.ndarray:
    """Pressure change since t = 0 (Pa, float32 (T, Z, Y, X), 0 outside ``active``) of a linear
    pressure model marched over the run's years, PRIOR_SUBSTEPS backward-Euler steps per year.

    Mass balance per active cell, linearised about the initial (hydrostatic) state:

        V phi rho c_t d(dp)/dt + V phi d(rho)/dt + sum_j lam_ij (dp_i - dp_j - g (rho_ij - rho0_ij) (D_i - D_j))
            + s B_i dp_i = q_i,    lam_ij = T_ij rho_ij / mu_ij

    with the temperature of the thermal prior's 1 % flow field, T0 + gap x theta (linear in
    time within a year): the cold water's viscosity (mu), its contraction (d(rho)/dt, a sink
    where the plume cools) and its weight (the gravity term). q: the wells' mass rates
    (InjRate); s: the run's lateral support (``support``, BoundaryAquiferStrength: the
    multiplier of the box sides' half-cell transmissibility to water at the initial
    pressure; B as in the responses); c_t: ``compressibility`` (rock + water, 1/Pa), or
    TOTAL_COMPRESSIBILITY when not given or not positive.

    Why: the one-year responses describe the first year at the initial temperature; a run's
    pressure then drifts with its support and its net injection and rises as the cold, more
    viscous plume grows. A learned mix of the responses could not tell from the params how
    much (year-29 error 0.107 on held-out training runs, cross-validated); this march, with no
    fitted number, leaves 0.064 on the fidelity test runs and 0.083 on 15 training runs
    (docs/benchmarks.md, "Pressure prior"). A run whose support means something else than
    this multiplier gets a biased prior that the network's residual has to correct.
    """
    faces = faces or _Faces(active, perm_xyz, temperature0, cell_size)
    n, cells, a, b = faces.n, faces.cells, faces.a, faces.b
    n_t = thermal_prior.shape[0]
    out = np.zeros((n_t,) + tuple(active.shape), np.float32)
    q = np.asarray(inj_rate, np.float64).ravel()[cells] if n else np.zeros(0)
    if n == 0 or not np.any(q):
        return out
    support = float(support) if np.isfinite(support) and support > 0 else 0.0
    c_t = float(compressibility) if compressibility is not None and np.isfinite(compressibility) \
        and compressibility > 0 else TOTAL_COMPRESSIBILITY
    t0 = np.asarray(temperature0, np.float64).ravel()[cells]
    theta = thermal_prior[:, schema.THERMAL_PRIOR_RESPONSES.index(schema.ARRIVAL_FLOW_RESPONSE)]
    gap = np.asarray(gap, np.float64).ravel()[cells]
    porosity = np.asarray(porosity, np.float64).ravel()[cells].clip(1e-4)
    geometric = faces.trans / (0.5 * (faces.mobility0[a] + faces.mobility0[b]))  # m^3, no viscosity
    rho0 = water_density(t0)
    rho0_face = 0.5 * (rho0[a] + rho0[b])
    support_mobility = support * faces.boundary * rho0  # kg/(Pa s): the aquifer's water is at T0
    pore_volume = faces.volume * porosity
    dt = YEAR_SECONDS / PRIOR_SUBSTEPS
    solver = _MarchSolver(n)
    dp = np.zeros(n)
    temp_end = t0
    for t in range(1, n_t):
        temp_start, temp_end = temp_end, t0 + gap * theta[t].ravel()[cells].astype(np.float64)
        for sub in range(PRIOR_SUBSTEPS):
            temp = temp_start + (temp_end - temp_start) * (sub / PRIOR_SUBSTEPS)
            temp_next = temp_start + (temp_end - temp_start) * ((sub + 1) / PRIOR_SUBSTEPS)
            rho = water_density(temp)
            mobility = rho / water_viscosity(temp)
            lam = geometric * 0.5 * (mobility[a] + mobility[b])
            storage = pore_volume * rho * c_t / dt
            weight = lam * GRAVITY * (0.5 * (rho[a] + rho[b]) - rho0_face) * faces.depth_step
            rhs = (q + storage * dp - pore_volume * (water_density(temp_next) - rho) / dt
                   + np.bincount(a, weight, n) - np.bincount(b, weight, n))
            diag = storage + np.bincount(a, lam, n) + np.bincount(b, lam, n) + support_mobility
            matrix = sp.coo_matrix((np.concatenate([diag, -lam, -lam]),
                                    (np.concatenate([np.arange(n), a, b]), np.concatenate([np.arange(n), b, a]))),
                                   (n, n)).tocsr()
            dp = solver.solve(matrix, rhs, dp)
        out[t] = faces.to_grid(dp)
    return out


class _MarchSolver:
    """CG solves of an SPD matrix that changes a little from step to step (the cold water's
    viscosity and density), preconditioned by a factorization of an earlier step's matrix: a
    sparse LU refreshed once per year on small grids (one LU per step was 2.6 s of a 2.9 s march
    on a 2,547-cell grid), an AMG hierarchy built once on large ones and rebuilt only when CG
    stalls (its setup costs several solves)."""

    def __init__(self, n: int):
        self.direct, self.preconditioner, self.age = n <= DIRECT_SOLVE_MAX_CELLS, None, 0

    def _build(self, matrix):
        if self.direct:
            lu = spla.splu(matrix.tocsc())
            return spla.LinearOperator(matrix.shape, lu.solve)
        import pyamg

        return pyamg.smoothed_aggregation_solver(matrix, symmetry="symmetric").aspreconditioner(cycle="V")

    def solve(self, matrix, rhs, guess):
        if self.direct and self.age >= PRIOR_SUBSTEPS:
            self.preconditioner = None
        for attempt in range(2):
            if self.preconditioner is None or attempt:
                self.preconditioner, self.age = self._build(matrix), 0
            # 1e-6: 7e-8 of the change apart from 1e-8 on a 87k-cell grid, 25 % faster; stored in float16
            x, info = spla.cg(matrix, rhs, x0=guess, rtol=1e-6, atol=0.0, maxiter=200, M=self.preconditioner)
            if info == 0:
                self.age += 1
                return x
        raise UserError(f"pressure prior: pressure solve did not converge ({matrix.shape[0]} cells)")


def injection_temperature(scalars) -> float | None:
    """K, from the field scalars [T, 5] (schema.SCALAR_NAMES): injected energy rate / water rate is the
    injected water's enthalpy c_w (T - 273.15). None when nothing is injected at any report."""
    scalars = np.asarray(scalars, np.float64)
    energy = scalars[:, schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")]
    water = scalars[:, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")]
    injecting = water > 0
    if not injecting.any():
        return None
    enthalpy = float(np.median(energy[injecting] / water[injecting]))
    return enthalpy / schema.WATER_HEAT_CAPACITY + schema.ENTHALPY_ZERO_T


def well_fields(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, scalars) -> dict[str, np.ndarray]:
    """The derived static grids of this module by schema name: the pressure responses, the heat
    front's arrival and the injection temperature gap (scalars: the run's field scalars [T, 5])."""
    faces = _Faces(active, perm_xyz, temperature0, cell_size)  # shared: assembling it is ~1 s on the full grid
    responses = pressure_responses(active, perm_xyz, porosity, temperature0, inj_rate, cell_size, faces)
    fields = dict(zip(schema.RESPONSE_NAMES, responses))
    fields[schema.THERMAL_ARRIVAL] = thermal_arrival(active, perm_xyz, porosity, temperature0, inj_rate, cell_size,
                                                     fields[schema.ARRIVAL_FLOW_RESPONSE], faces)
    t_inj = injection_temperature(scalars)
    gap = np.zeros(active.shape, np.float32)
    if t_inj is not None:
        gap[active] = t_inj - np.asarray(temperature0)[active]
    fields[schema.INJECTION_GAP] = gap
    return fields


def _solve_spd(A, rhs) -> np.ndarray:
    if A.shape[0] <= DIRECT_SOLVE_MAX_CELLS:
        return spla.spsolve(A.tocsc(), rhs)
    import pyamg

    ml = pyamg.smoothed_aggregation_solver(A, symmetry="symmetric")
    x, info = spla.cg(A, rhs, rtol=1e-8, atol=0.0, maxiter=500, M=ml.aspreconditioner(cycle="V"))
    if info != 0:
        raise UserError(f"well response: pressure solve did not converge ({A.shape[0]} cells)")
    return x
