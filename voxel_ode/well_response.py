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
two responses are given, with full and with 1 % support
(``SUPPORT_STRENGTHS``); the truth of a run lies roughly in their span
(measured on 15 synthetic runs: a least-squares mix of the two and a constant
leaves 3-18 % of the year-1 change and 4-24 % of the year-29 change unexplained).
The network learns the mix and what the linear picture misses (cold water's
viscosity, thermal contraction, time).

Cost: two sparse SPD solves per simulation (direct on small grids, pyamg
AMG-preconditioned CG on large ones; benchmark notes, "Prep").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from voxel_ode.utils import UserError

YEAR_SECONDS = 365.25 * 86400.0
WATER_DENSITY = 1000.0  # kg/m^3: converts mass rates to volume rates (within ~10 % over 20-200 C)
TOTAL_COMPRESSIBILITY = 1e-9  # 1/Pa, rock + water, typical of consolidated reservoirs
# Lateral support multipliers on the half-cell transmissibility to the box side,
# one response channel each (schema.RESPONSE_NAMES, same order).
SUPPORT_STRENGTHS = (1.0, 0.01)
DIRECT_SOLVE_MAX_CELLS = 60_000


def water_viscosity(temperature):
    """Pa s; Vogel-type fit for liquid water, T in K (within a few % over 20-250 C)."""
    t = np.clip(np.asarray(temperature, np.float64), 275.0, 600.0)
    return 2.414e-5 * 10.0 ** (247.8 / (t - 140.0))


def pressure_responses(active, perm_xyz, porosity, temperature0, inj_rate, cell_size) -> list[np.ndarray]:
    """One-year pressure change (Pa, float32 grids, 0 outside ``active``) per support strength.

    active: bool (Z, Y, X); perm_xyz: PermX, PermY, PermZ (m^2); porosity (-);
    temperature0 (K); inj_rate (kg/s per cell, + injection); cell_size: (dx, dy, dz) in m.
    """
    grid = active.shape
    dx, dy, dz = (float(v) for v in cell_size)
    if not all(np.isfinite(v) and v > 0 for v in (dx, dy, dz)):
        raise UserError(f"well response: cell sizes must be positive, got {cell_size} (prep --cell_size DX DY DZ)")
    cells = np.flatnonzero(active.ravel())
    n = cells.size
    zeros = [np.zeros(grid, np.float32) for _ in SUPPORT_STRENGTHS]
    q = np.asarray(inj_rate, np.float64).ravel()[cells] / WATER_DENSITY
    if n == 0 or not np.any(q):
        return zeros
    local = np.full(active.size, -1, np.int64)
    local[cells] = np.arange(n)
    local = local.reshape(grid)
    mobility = 1.0 / water_viscosity(np.asarray(temperature0).ravel()[cells])
    # per grid axis (Z, Y, X): permeability, spacing, face area
    axes = ((perm_xyz[2], dz, dx * dy), (perm_xyz[1], dy, dx * dz), (perm_xyz[0], dx, dy * dz))
    rows, cols, trans = [], [], []
    boundary = np.zeros(n)  # sum of lateral-side transmissibilities at full support
    for axis, (perm, spacing, area) in enumerate(axes):
        k = np.maximum(np.asarray(perm, np.float64).ravel()[cells], 0.0)
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = local[tuple(lo)], local[tuple(hi)]
        face = (a >= 0) & (b >= 0)
        a, b = a[face], b[face]
        with np.errstate(divide="ignore"):
            t = area / (0.5 * spacing / k[a] + 0.5 * spacing / k[b])  # harmonic; 0 if either k is 0
        t = np.nan_to_num(t) * 0.5 * (mobility[a] + mobility[b])
        rows.append(a)
        cols.append(b)
        trans.append(t)
        if axis > 0:  # lateral sides of the box
            for side in (0, -1):
                edge = [slice(None)] * 3
                edge[axis] = side
                c = local[tuple(edge)]
                c = c[c >= 0]
                np.add.at(boundary, c, area * k[c] / (0.5 * spacing) * mobility[c])
    a, b, t = np.concatenate(rows), np.concatenate(cols), np.concatenate(trans)
    storage = np.asarray(porosity, np.float64).ravel()[cells].clip(1e-4) * TOTAL_COMPRESSIBILITY * dx * dy * dz / YEAR_SECONDS
    base_diag = storage + np.bincount(a, t, n) + np.bincount(b, t, n)
    offdiag = sp.coo_matrix((np.concatenate([-t, -t]), (np.concatenate([a, b]), np.concatenate([b, a]))), (n, n))
    out = []
    for strength, grid_out in zip(SUPPORT_STRENGTHS, zeros):
        A = (offdiag + sp.diags(base_diag + strength * boundary)).tocsr()
        grid_out.ravel()[cells] = _solve_spd(A, q)
        out.append(grid_out)
    return out


def _solve_spd(A, rhs) -> np.ndarray:
    if A.shape[0] <= DIRECT_SOLVE_MAX_CELLS:
        return spla.spsolve(A.tocsc(), rhs)
    import pyamg

    ml = pyamg.smoothed_aggregation_solver(A, symmetry="symmetric")
    x, info = spla.cg(A, rhs, rtol=1e-8, atol=0.0, maxiter=500, M=ml.aspreconditioner(cycle="V"))
    if info != 0:
        raise UserError(f"well response: pressure solve did not converge ({A.shape[0]} cells)")
    return x
