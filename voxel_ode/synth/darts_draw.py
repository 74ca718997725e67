"""open-darts runs (``voxel-ode synth --engine darts``): the random draw of one run.

The same recipe as the darts-dev development set (shared/darts-dev/README.md), drawn per
(seed, run index): parameters in the dev set's ranges, an irregular active layer offset across
steep faults, layered and correlated permeability (mD) and porosity, 1-2 injectors and 1-2
producers with total rates, and the hydrostatic initial pressure. numpy only: ``synth.darts_model``
turns a draw into an open-darts model.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from voxel_ode import schema
from voxel_ode.synth.darts_conventions import Conventions

GRAVITY = schema.GRAVITY


def _smooth_field(rng, shape, sigma_cells):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_cells, mode="wrap")
    return (field - field.mean()) / max(field.std(), 1e-12)


def draw_run(grid, seed: int, index: int, conv: Conventions = Conventions()) -> dict:
    """The random draw of run ``index``: parameters, geology (full grid, [Z, Y, X]) and wells, with
    the cell sizes, injection rate range and lateral boundary of ``conv``."""
    nz = grid[0]
    cell = conv.cell_size_zyx
    dz = cell[0]
    # one generator, drawn from in this order: parameters, faults, layer, rock, wells
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    p = _draw_params(rng, conv)
    kk = np.arange(nz)[:, None, None]  # Z index of the cells (broadcasts over Y, X)
    fault_id, side = _draw_faults(rng, grid, p, cell)
    active, top = _draw_layer(rng, grid, kk, side, cell)
    permx, permz, poro = _draw_rock(rng, grid, p, kk, top, fault_id, cell)
    wells = _draw_wells(rng, grid, p, active, fault_id)

    # Initial state: linear gradient from the surface; hydrostatic with IAPWS density (filled in the worker).
    depth = p["top_depth"] + (np.arange(nz) + 0.5) * dz
    temp_profile = p["surface_temperature"] + p["gradient"] * 1e-3 * depth
    return {"params": p, "active": active, "fault_id": fault_id, "permx": permx.astype(np.float64),
            "permz": permz.astype(np.float64), "poro": poro, "wells": wells, "depth": depth,
            "temperature_profile": temp_profile, "cell_size": cell}


def _draw_params(rng, conv: Conventions) -> dict:
    """The run's scalar parameters, in the dev set's ranges but for the total injection rate (drawn in
    ``conv.injection_rate``). A closed box produces what it injects (a +-10 % imbalance would move
    its pressure by hundreds of bar a year); the draw still takes the ratio from the generator."""
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
        "q_inj": rng.uniform(*conv.injection_rate),
    }
    p["q_prod"] = p["q_inj"] * rng.uniform(0.9, 1.1)
    if conv.lateral_boundary == "closed":
        p["q_prod"] = p["q_inj"]
    p["fault_log_mult"] = 0.0
    if p["n_faults"]:
        p["fault_log_mult"] = rng.uniform(-3.0, -1.0) if rng.random() < 0.7 else rng.uniform(1.0, 2.0)
    t_top = p["surface_temperature"] + p["gradient"] * 1e-3 * p["top_depth"]
    p["t_inj"] = rng.uniform(300.0, max(300.0, min(330.0, t_top - 10.0)))
    return p


def _draw_faults(rng, grid, p, cell):
    """FaultId and each cell's summed throw (cells) across the faults it lies beyond: steep planes
    (dip 70-90 deg) through a random point, random strike."""
    nz, ny, nx = grid
    dz, dy, dx = cell
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


def _draw_layer(rng, grid, kk, side, cell):
    """Active cells and the layer top (cells, per cell): the layer between smooth top and bottom
    surfaces (20-50 % of the box inactive), offset across faults by ``side``."""
    nz, ny, nx = grid
    dz, dy, dx = cell
    inactive = rng.uniform(0.2, 0.5)
    sig_h = (max(1.0, 300.0 / dy), max(1.0, 300.0 / dx))
    top0 = 0.5 * inactive * nz + 0.12 * nz * _smooth_field(rng, (ny, nx), sig_h)
    thick = (1.0 - inactive) * nz * (1.0 + 0.12 * _smooth_field(rng, (ny, nx), sig_h))
    top = top0[None] + side  # per cell: the layer top seen by this cell's fault block
    bottom = top + np.maximum(thick, 2.0)[None]
    active = (kk + 0.5 >= top) & (kk + 0.5 < bottom)
    return active, top


def _draw_rock(rng, grid, p, kk, top, fault_id, cell):
    """PermX (= PermY), PermZ in mD and porosity: a layered term (following the layer) plus a
    correlated 3-D field in log10 k; fault cells scaled by the fault multiplier."""
    nz = grid[0]
    dz, dy, dx = cell
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


def well_grids(run, grid):
    """InjRate (kg/s per cell: each well's rate split over its active perforations by PermX x dz)
    and IsWell."""
    active = run["active"]
    is_well = np.zeros(grid, np.uint8)
    inj_rate = np.zeros(grid, np.float64)
    for w in run["wells"]:
        ks = np.arange(w["k0"], w["k1"] + 1)
        ks = ks[active[ks, w["j"], w["i"]]]
        weight = run["permx"][ks, w["j"], w["i"]] * run["cell_size"][0]
        inj_rate[ks, w["j"], w["i"]] = w["rate"] * weight / weight.sum()
        is_well[ks, w["j"], w["i"]] = 1
    return inj_rate, is_well


def params_vector(run):
    """ParamsScalar: the 26 dev-set entries (PARAM_NAMES); -1 for the columns of absent wells."""
    p = run["params"]
    params = np.full(26, -1.0)
    params[:18] = [p["t_inj"], p["q_inj"], p["q_prod"], p["hcap"], p["cond"], p["gradient"],
                   p["surface_temperature"], p["top_depth"], p["logk_mean"], p["logk_std"], p["poro_mean"],
                   p["kv_kh"], p["corr_h"], p["corr_v"], p["n_faults"], p["fault_log_mult"], p["n_inj"], p["n_prod"]]
    for n, w in enumerate(run["wells"][:4]):
        params[18 + 2 * n: 20 + 2 * n] = [w["i"], w["j"]]
    return params
