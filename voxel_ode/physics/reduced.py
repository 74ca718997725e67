"""The pressure march on unit cells (what calibration.py searches over) and its upscaled copies.

With cells dx = dy = h, dz = a h, total compressibility c_t and water at its initial temperature,
the pressure march of priors.py divided by a h is the march of

    L_x + L_y + L_z / a^2 + D S (+ the lateral sides)

on unit cells, D = c_t h^2: ``UnitMarch.march`` gives the change x a h. A run whose temperature
history is known (a training run) also contracts where its water cools: that source,
-V phi d(rho)/dt, divided by a h is h^2 x (-phi d(rho)/dt) on unit cells, so ``UnitMarch.marches``
gives that part x 1 / h^2 (a closed box's change is mostly this part: balanced mass rates into
a box of shrinking water).

An upscaled copy (blocks of fz x fy x fx cells, in the fine cells' units, so the same constants
apply unchanged) makes the global part of the search ~10x cheaper: storage, side storage, side
conductances, rates and the contraction are sums over a block; across Z a block's conductance is
the mean over its columns of their series (harmonic) conductance (flow goes round inactive
cells), across X and Y the block's mean mobility x area / length (layers are the heterogeneity
that matters vertically); two half blocks in series join neighbours. The true change of a block
is its storage-weighted mean.

Wells (priors.py's well_inflow "wellbore", warm): each well's rate is split by a wellbore as in
the priors, with J = 2 pi sqrt(kx ky) mob / WELL_LOG on unit cells (J scales with a h like the
transmissibilities across X and Y); Peaceman's log(r0 / r_w) is taken as WELL_LOG, since h is not
known inside the march: the split barely depends on J's size.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar

from voxel_ode.physics import priors as physics_priors
from voxel_ode.physics import wells as well_model
from voxel_ode.physics.faces import ActiveFaces, lateral_side

TARGET_CELLS = 3000  # active cells per run of the upscaled copies
WELL_LOG = 4.5  # log(r0 / r_w): 2.9-5.9 for cells 10-200 m wide and an 8 1/2-inch hole


class UnitMarch:
    """One run's warm march at unit cells: per-axis laplacians, storage per unit D, the side
    cells' share of it, the sides' half-cell conductances, the rates."""

    def __init__(self, reservoir=None):
        if reservoir is None:  # filled by ``coarse``
            return
        res = reservoir
        faces = physics_priors._Faces(res.active, res.perm_xyz, (1.0, 1.0, 1.0))
        t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
        rho0 = physics_priors.water_density(t0)
        mob0 = rho0 / physics_priors.water_viscosity(t0)
        lam = faces.trans * 0.5 * (mob0[faces.a] + mob0[faces.b])
        self.faces, self.n, self.factor = faces, faces.n, (1, 1, 1)
        self.lap = [faces.laplacian(np.where(faces.face_axis == ax, lam, 0.0)) for ax in (2, 1, 0)]  # x, y, z
        phi = np.clip(np.asarray(res.porosity, np.float64).ravel()[faces.cells], physics_priors.MIN_POROSITY, 1.0)
        self.t0, self.porosity = t0, phi
        self.storage = phi * rho0 / physics_priors.YEAR_SECONDS
        self.side_storage = np.where(faces.on_side, self.storage, 0.0)
        self.support = faces.side_trans * mob0  # unit cells, dx = dy: the same for x and y sides
        self.q = np.asarray(res.inj_rate, np.float64).ravel()[faces.cells]
        k = [np.maximum(np.nan_to_num(np.asarray(res.perm_xyz[i], np.float64).ravel()[faces.cells]), 0.0)
             for i in range(3)]
        self.mobility = [ki * mob0 for ki in k]  # per cell along x, y, z
        self.wellbore = res.wellbore
        self.index = np.where(self.q != 0, 2 * np.pi * np.sqrt(k[0] * k[1]) * mob0 / WELL_LOG, 0.0)
        self.columns = self._well_columns()

    def _well_columns(self) -> list:
        """The wells as wells.join_wells takes them (warm: no head; no limits); none as_given."""
        if not self.wellbore:
            return []
        return [(cells, well_model.well_inflow_index(self.index[cells], self.q[cells]), np.zeros(len(cells)),
                 float(self.q[cells].sum()), np.nan) for _, cells in well_model.well_cells(self.faces, self.q)]

    def march(self, aspect, spread, kind, strength, n_reports):
        """(n_reports, n) pressure change x a h for the shape constants."""
        return self.marches(aspect, spread, kind, strength, n_reports)[0]

    def marches(self, aspect, spread, kind, strength, n_reports, contraction=None):
        """(the rates' pressure change x a h, the contraction's x 1 / h^2 or None), each
        (n_reports, n), for the shape constants; ``contraction``: ``self.contraction(...)``."""
        storage = spread * self.storage
        support = np.zeros(self.n)
        if kind == "pore_volume":
            storage = storage + spread * (max(strength, 1.0) - 1.0) * self.side_storage
        elif kind == "fixed_pressure":
            support = strength * self.support
        columns = self.columns
        A = (self.lap[0] + self.lap[1] + self.lap[2] / aspect ** 2
             + sp.diags(storage + support + well_model.wells_diagonal(self.n, columns)))
        solve = physics_priors._spd_solver(A.tocsc())
        wells = well_model.join_wells(self.faces, columns, solve)
        rates = self._march(solve, storage, wells if columns else None,
                            np.broadcast_to(np.zeros(self.n) if self.wellbore else self.q, (n_reports, self.n)))
        if contraction is None:
            return rates, None
        sources, side = contraction
        if kind == "pore_volume":  # the side cells' extra water contracts too
            sources = sources + (max(strength, 1.0) - 1.0) * side
        still = dataclasses.replace(wells, target=np.zeros(len(columns)))  # the wells' rates are the other march's
        return rates, self._march(solve, storage, still if columns else None, sources[:n_reports])

    def _march(self, solve, storage, wells, sources):
        out = np.zeros(sources.shape)
        for t in range(1, len(sources)):
            out[t] = solve(sources[t] + storage * out[t - 1], out[t - 1])
            if wells is not None:
                out[t] += wells.response @ well_model.well_pressures(wells, out[t])
        return out

    def contraction(self, temperature_change, side_change=None):
        """(sources, their side cells' share), each (n_reports, n): the contraction -phi d(rho)/dt
        (per unit volume and year) of the water as it goes from its initial temperature through
        ``temperature_change`` (n_reports, n_fine) K, the side cells' share through ``side_change``
        where given (calibration.Run.side_temperature_change); None where it does not change."""
        if temperature_change is None or not np.any(temperature_change):
            return None
        if self.factor != (1, 1, 1):
            sources, side = self.fine.contraction(temperature_change, side_change)
            return np.stack([self._sum(row) for row in sources]), np.stack([self._sum(row) for row in side])
        sources = self._contraction(temperature_change)
        side = sources if side_change is None else self._contraction(side_change)
        return sources, np.where(self.faces.on_side, side, 0.0)

    def _contraction(self, temperature_change):
        rho = physics_priors.water_density(self.t0 + np.asarray(temperature_change, np.float64))
        sources = np.zeros_like(rho)
        sources[1:] = -self.porosity * np.diff(rho, axis=0) / physics_priors.YEAR_SECONDS
        return sources

    def restrict(self, change):
        """A fine change (n_reports, n_fine) on this copy's cells: storage-weighted block means."""
        if self.factor == (1, 1, 1):
            return change
        fine = self.fine
        weights = np.where(self.storage > 0, self.storage, 1.0)
        return np.stack([self._sum(fine.storage * row) for row in change]) / weights


def robust_gain(mm, mt) -> float:
    """The one gain g minimizing sum over runs of min(relative error^2, 1), relative error^2 =
    mm g^2 - 2 mt g + 1 (each run's capped error, as in the residuals): the least-squares gain of
    the best subset of runs, so that one run the march overpredicts cannot set it for all."""
    mm, mt = np.asarray(mm), np.asarray(mt)
    n = len(mm)
    subsets = itertools.chain.from_iterable(itertools.combinations(range(n), k) for k in range(n, 0, -1)) \
        if n <= 10 else [tuple(range(n))]
    best, best_cost = 0.0, float(n)
    for subset in subsets:
        den, num = mm[list(subset)].sum(), mt[list(subset)].sum()
        if den > 0 and num > 0:
            g = num / den
            cost = float(np.minimum(mm * g * g - 2 * mt * g + 1.0, 1.0).sum())
            if cost < best_cost - 1e-12:
                best, best_cost = g, cost
    return float(best)


def robust_gain_cooling(ms, cs, ts, norms, aspect, cell_range) -> float:
    """The gain g = 1 / (a h) minimizing the sum over runs of min(relative error^2, 1) of the model
    g m + c / (g a)^2 (the rates' and the contraction's marches ``ms``, ``cs`` against the targets
    ``ts``): a log-spaced scan over the widths ``cell_range`` (m) and a decade either side, then a
    bounded 1-D search about its best point."""
    dot = lambda u, w, n: float((u * w).sum()) / n ** 2  # noqa: E731
    terms = np.array([[dot(m, m, n), dot(c, c, n), dot(t, t, n), dot(m, c, n), dot(m, t, n), dot(c, t, n)]
                      for m, c, t, n in zip(ms, cs, ts, norms)]).T
    mm, cc, tt, mc, mt, ct = terms

    def cost(log_g):
        g = 10.0 ** log_g
        k = 1.0 / (g * aspect) ** 2
        e2 = g * g * mm + k * k * cc + tt + 2 * g * k * mc - 2 * g * mt - 2 * k * ct
        return float(np.minimum(e2, 1.0).sum())

    lo, hi = -np.log10(aspect * cell_range[1]) - 1.0, -np.log10(aspect * cell_range[0]) + 1.0
    grid = np.linspace(lo, hi, 241)
    i = int(np.argmin([cost(x) for x in grid]))
    best = minimize_scalar(cost, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]), method="bounded",
                           options={"xatol": 1e-6})
    return float(10.0 ** (best.x if best.fun <= cost(grid[i]) else grid[i]))


SEARCH_ORDER = (0, 0, 1, 0, 1, 0, 1, 0, 1, 1)  # axes to halve in turn: 0 = Z, 1 = Y and X
# whole calibrations on blocks (docs/benchmarks.md, "Calibration on blocks"): 2 x 1 x 1 kept
# the held-out pressure error, 2 x 2 x 2 doubled it: layers first, further than the search
CALIBRATION_ORDER = (0, 0, 0, 1, 0, 1, 0, 1, 1, 1)


def coarsening(n_active: int, target=TARGET_CELLS, order=SEARCH_ORDER) -> tuple:
    """Blocks (fz, fy, fx) that bring a run to about ``target`` active cells: vertical first
    (upscaling across layers kept the march within 0.07 on open-darts runs, 2 x 2 laterally
    0.07-0.16, 4 x 4 0.19-0.37: the wells' neighbourhoods blur)."""
    f = [1, 1, 1]
    for axis in order:
        if n_active / np.prod(f) <= target:
            break
        f = _halved(f, axis)
    return tuple(f)


def blocks_for(active, target: int, order=CALIBRATION_ORDER) -> tuple:
    """Blocks (fz, fy, fx) in which the active grid ``active`` has at most ``target`` active
    blocks, halving the axes of ``order`` in turn (an axis the grid has no room for is skipped)."""
    active = np.asarray(active, bool)
    grid, f = active.shape, [1, 1, 1]
    count = lambda f: int(_blocks(active, grid, f).any(axis=(3, 4, 5)).sum())  # noqa: E731
    for axis in order * 2:
        if count(f) <= target:
            break
        room = 2 * f[0] <= grid[0] if axis == 0 else (2 * f[1] <= grid[1] and 2 * f[2] <= grid[2])
        if room:
            f = _halved(f, axis)
    return tuple(f)


def _halved(f, axis) -> list:
    return [2 * f[0], f[1], f[2]] if axis == 0 else [f[0], 2 * f[1], 2 * f[2]]


def _blocks(values, grid, f):
    """(Zc, Yc, Xc, fz, fy, fx) view of a full-grid array padded with zeros."""
    padded = tuple(-(-g // k) * k for g, k in zip(grid, f))
    out = np.zeros(padded)
    out[:grid[0], :grid[1], :grid[2]] = values
    zc, yc, xc = (p // k for p, k in zip(padded, f))
    return out.reshape(zc, f[0], yc, f[1], xc, f[2]).transpose(0, 2, 4, 1, 3, 5)


def _block_conductance(mob, f, axis):
    """(Zc, Yc, Xc) conductance of each block along grid ``axis`` (centre to centre of its ends)."""
    n_along, n_rows = f[axis], int(np.prod(f)) // f[axis]
    act = mob > 0
    if axis == 0:  # harmonic along each column's active cells, arithmetic over the columns
        n_act = act.sum(axis=3)
        with np.errstate(divide="ignore", invalid="ignore"):
            rows = np.where(n_act > 0, n_act / np.sum(np.where(act, 1.0 / np.where(act, mob, 1.0), 0.0), axis=3), 0.0)
        n_rows_act = (n_act > 0).sum(axis=(3, 4))
        return np.where(n_rows_act > 0, rows.sum(axis=(3, 4)) / np.maximum(n_rows_act, 1), 0.0) * n_rows / n_along
    count = act.sum(axis=(3, 4, 5))
    return np.where(count > 0, mob.sum(axis=(3, 4, 5)) / np.maximum(count, 1), 0.0) * n_rows / n_along


def coarse(unit: UnitMarch, f) -> UnitMarch:
    """``unit`` upscaled to blocks of ``f`` = (fz, fy, fx) cells."""
    f = tuple(int(v) for v in f)
    if f == (1, 1, 1):
        return unit
    fine = unit.faces
    grid = fine.grid
    out = UnitMarch()
    out._sum = lambda v: _blocks(fine.to_grid(np.asarray(v, np.float64)), grid, f).sum(axis=(3, 4, 5)).ravel()[
        out.faces.cells]
    active = _blocks(fine.to_grid(unit.storage), grid, f).sum(axis=(3, 4, 5)) > 0
    out.faces, out.factor, out.fine = ActiveFaces(active, (1.0, 1.0, 1.0)), f, unit
    faces = out.faces
    out.n = faces.n
    out.storage, out.side_storage, out.q, out.support, out.index = (
        out._sum(v) for v in (unit.storage, unit.side_storage, unit.q, unit.support, unit.index))
    out.wellbore = unit.wellbore
    out.columns = out._well_columns()
    out.lap = []
    for i, axis in enumerate((2, 1, 0)):  # x, y, z
        g = _block_conductance(_blocks(fine.to_grid(unit.mobility[i]), grid, f), f, axis).ravel()[faces.cells]
        with np.errstate(divide="ignore"):
            face = np.where((g[faces.a] > 0) & (g[faces.b] > 0),
                            1.0 / (0.5 / np.maximum(g[faces.a], 1e-300) + 0.5 / np.maximum(g[faces.b], 1e-300)), 0.0)
        a, b, c = faces.a, faces.b, np.where(faces.face_axis == axis, face, 0.0)
        out.lap.append(sp.coo_matrix((np.concatenate([c, c, -c, -c]), (np.concatenate([a, b, a, b]),
                                      np.concatenate([a, b, b, a]))), (out.n, out.n)).tocsc())
    return out


def upscaled_run(run, f):
    """A calibration run (calibration.Run) on blocks of ``f`` = (fz, fy, fx) cells, for grids too
    large to fit cell by cell: each block one cell of the same constants, so a fit on it gives
    block sizes (divide by ``f``) and the same compressibility, boundary and thermal constants.
    Pore volume, rates and the true changes (pore-volume-weighted means) are the blocks'; the
    permeabilities as ``coarse`` upscales mobility (X, Y: mean of the active cells; Z: mean over
    the columns of their series value)."""
    f = tuple(int(v) for v in f)
    if f == (1, 1, 1):
        return run
    res = run.reservoir
    grid, active = res.active.shape, np.asarray(res.active, bool)
    block = lambda v: _blocks(np.where(active, np.asarray(v, np.float64), 0.0), grid, f)  # noqa: E731
    count = block(np.ones(grid)).sum(axis=(3, 4, 5))
    coarse_active = count > 0
    porosity = np.clip(np.asarray(res.porosity, np.float64), physics_priors.MIN_POROSITY, 1.0)
    pore = block(porosity)
    perm = []
    for axis in (2, 1, 0):  # PermX, PermY, PermZ
        k = np.maximum(np.nan_to_num(np.asarray(res.perm_xyz[2 - axis], np.float64)), 0.0)
        n_along, n_rows = f[axis], int(np.prod(f)) // f[axis]
        perm.append(_block_conductance(block(k), f, axis) * n_along / n_rows)
    mean = lambda v: np.where(coarse_active, block(v).sum(axis=(3, 4, 5)) / np.maximum(count, 1), 0.0)  # noqa: E731
    coarse_res = dataclasses.replace(
        res, active=coarse_active, perm_xyz=tuple(perm), porosity=pore.sum(axis=(3, 4, 5)) / np.prod(f),
        temperature0=mean(res.temperature0), inj_rate=block(res.inj_rate).sum(axis=(3, 4, 5)), injection_gap=None,
        pressure0=None if res.pressure0 is None else mean(res.pressure0))

    def restrict(change, weight=np.where(active, porosity, 0.0)):  # (n_reports, n_active) -> blocks'
        if change is None:
            return None
        total = _blocks(weight, grid, f).sum(axis=(3, 4, 5))[coarse_active]
        out = np.empty((change.shape[0], int(coarse_active.sum())))
        for t, row in enumerate(change):
            grid_row = np.zeros(grid)
            grid_row[active] = row
            out[t] = _blocks(grid_row * weight, grid, f).sum(axis=(3, 4, 5))[coarse_active] / np.maximum(total, 1e-300)
        return out

    cell = None if run.cell_size is None else tuple(c * k for c, k in zip(run.cell_size, f[::-1]))
    side = None
    if run.temperature_change is not None and f[1:] != (1, 1):  # a side block's aquifer is its side cells'
        on_side = active & lateral_side(grid)
        mean = restrict(run.temperature_change)
        own = restrict(run.temperature_change, np.where(on_side, porosity, 0.0))
        side = np.where(_blocks(on_side, grid, f).any(axis=(3, 4, 5))[coarse_active], own, mean)
    return dataclasses.replace(run, reservoir=coarse_res, true_change=restrict(run.true_change), cell_size=cell,
                               temperature_change=restrict(run.temperature_change), side_temperature_change=side)
