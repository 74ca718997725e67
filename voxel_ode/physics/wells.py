"""The priors' wells: each a column of same-sign ``InjRate`` cells joined by its wellbore, coupled
to a run's pressure matrix (physics/priors.py builds the columns; physics/reduced.py uses them on
its own matrix).

A well delivers its target rate unless that passes its declared bottomhole limit; then it holds
the limit. The pressure matrix is factorized once with each cell's J on its diagonal; a well's
response to its own pressure is one back-substitution per well.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from voxel_ode.physics.faces import ActiveFaces

CORRECTIONS = 1  # solves per step where a well's J changed since the factorization (2 changed no set's priors by > 0.004)


@dataclass
class Wells:
    """The wells, each a column of same-sign ``InjRate`` cells joined by its wellbore. A cell's
    inflow is J_i (P + head_i - dp_i): P the wellbore's pressure change at its top perforation
    (over the initial pressure there), head_i the wellbore's water column from there to the cell
    over the reservoir's initial one (an injector's wellbore holds the injected water: cold water's
    weight drives it into the deep perforations), J_i Peaceman's well index times the entering
    water's mobility. A well delivers its target rate (the sum of its cells' InjRate; how InjRate
    splits it is not used: a simulator's well splits it by the pressures) unless that passes its
    declared pressure limit; then it holds the limit."""

    cells: list  # local cell indices per well
    index: list  # J per cell, kg/(Pa s)
    head: list  # Pa per cell
    target: np.ndarray  # kg/s per well, + injection
    limit: np.ndarray  # Pa, P's limit (nan: none)
    response: np.ndarray  # (n, K): the pressure change per Pa of each well's P
    balance: np.ndarray  # (K, K): well v's inflow per Pa of each P (sum of J less J x response)
    head_source: np.ndarray  # (n,): sum of J x head, kg/s



def well_cells(faces: ActiveFaces, q) -> list:
    """[(sign, local cells top first)] per well: a (y, x) column's active cells of one rate sign."""
    z, y, x = np.unravel_index(faces.cells, faces.grid)
    out = []
    for sign in (1, -1):
        perforated = np.flatnonzero(q * sign > 0)
        column = y[perforated] * faces.grid[2] + x[perforated]
        for col in np.unique(column):
            cells = perforated[column == col]
            out.append((sign, cells[np.argsort(z[cells], kind="stable")]))
    return out


def well_inflow_index(index, q) -> np.ndarray:
    """A well's J per cell, kept solvable: where no perforation has permeability, InjRate's split."""
    index = np.maximum(index, 0.0)
    if not np.any(index > 0):
        index = np.abs(q) / max(float(np.abs(q).sum()), 1e-300) * 1e-6
    return np.maximum(index, 1e-9 * float(index.max()))



def wells_diagonal(n: int, columns: list) -> np.ndarray:
    """(n,) the wells' J of ``columns`` [(cells, J, ...)] per cell: what the pressure matrix's
    diagonal gains from them."""
    out = np.zeros(n)
    for cells, index, *_ in columns:
        out[cells] += index
    return out


def join_wells(faces: ActiveFaces, columns: list, solve) -> Wells:
    """The wells of ``columns`` [(cells, J, head, target, limit)] on a matrix with their J on its
    diagonal, factorized as ``solve``."""
    k = len(columns)
    response = np.zeros((faces.n, k))
    head_source = np.zeros(faces.n)
    for w, (cells, index, head, _, _) in enumerate(columns):
        unit = np.zeros(faces.n)
        unit[cells] = index
        response[:, w] = solve(unit, np.zeros(faces.n))
        head_source[cells] += index * head
    coupling = np.array([[float(np.dot(c[1], response[c[0], w])) for w in range(k)] for c in columns]).reshape(k, k)
    balance = np.diag([float(c[1].sum()) for c in columns]).reshape(k, k) - coupling
    return Wells([c[0] for c in columns], [c[1] for c in columns], [c[2] for c in columns],
                  np.array([c[3] for c in columns]), np.array([c[4] for c in columns], np.float64), response,
                  balance, head_source)


def well_pressures(wells: Wells, base) -> np.ndarray:
    """Each well's P for a step whose pressure change without the wells' P is ``base``: the target
    rates where they hold the limits, else the limit (a well switches while any changes)."""
    k, m = len(wells.cells), wells.balance
    free = wells.target - np.array([float(np.dot(i, h - base[c])) for c, i, h in zip(wells.cells, wells.index, wells.head)])
    sign = np.sign(wells.target)
    at_limit = np.zeros(k, bool)
    pressures = np.zeros(k)
    for _ in range(k + 2):
        pressures = np.where(at_limit, wells.limit, 0.0)
        rate = ~at_limit
        if rate.any():
            rhs = free[rate] - m[np.ix_(rate, at_limit)] @ pressures[at_limit]
            pressures[rate] = np.linalg.solve(m[np.ix_(rate, rate)], rhs)
        delivered = m @ pressures - free + wells.target
        new = np.where(at_limit, sign * delivered < sign * wells.target,  # a limited well that could deliver more stays
                       np.nan_to_num(sign * (pressures - wells.limit), nan=-1.0) > 0)
        if np.array_equal(new, at_limit):
            break
        at_limit = new
    return pressures


def solve_with_wells(wells: Wells, solve, sources, rhs, x0, rtol=None, index_now=None,
                     q_before=None) -> tuple[np.ndarray, np.ndarray]:
    """(dp, the wells' delivered rate per cell, kg/s) of a step whose right-hand side without the
    wells is ``rhs``, on the matrix factorized as ``solve`` with the wells' J on its diagonal;
    ``sources``: kg/s per cell taken as given. ``index_now``: each well's J per cell this step
    (a producer takes in its cells' water, whose mobility falls as they cool); J - J_factorized
    enters as a source at the drawdown of the solve before (first that of ``q_before``, the
    step before's delivered rates), CORRECTIONS times, so the factorization stays: in a closed
    box a held producer's J sets the field's pressure, and the correction converges over the
    years as the cells cool."""
    if index_now is None or not wells.cells:
        return _solve(wells, solve, sources, rhs, x0, rtol)[:2]
    if q_before is None:
        dp, q, _ = _solve(wells, solve, sources, rhs, x0, rtol)
        index_before = wells.index
    else:
        dp, q, index_before = x0, q_before, index_now
    for _ in range(CORRECTIONS):
        extra = np.zeros(len(rhs))
        for cells, index, now, before in zip(wells.cells, wells.index, index_now, index_before):
            extra[cells] = (now - index) * q[cells] / before  # the drawdown, from the rates it gave
        gained = np.array([float(extra[cells].sum()) for cells in wells.cells])
        dp, q, _ = _solve(dataclasses.replace(wells, target=wells.target - gained), solve, sources + extra, rhs, dp,
                          rtol)
        q, index_before = q + extra, index_now
    return dp, q


def _solve(wells: Wells, solve, sources, rhs, x0, rtol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dp, delivered rate per cell, each well's P) with the factorized J."""
    base = solve(rhs + sources + wells.head_source, x0, rtol)
    if not wells.cells:
        return base, sources, np.zeros(0)
    pressures = well_pressures(wells, base)
    dp = base + wells.response @ pressures
    q = np.zeros(len(base))
    for cells, index, head, p in zip(wells.cells, wells.index, wells.head, pressures):
        q[cells] = index * (p + head - dp[cells])
    return dp, q, pressures
