"""The well-response feature: a known solution, its symmetries, both solver paths, and prep's handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fixtures
from voxel_ode import data_prep, schema, well_response
from voxel_ode.utils import UserError


def _line(n=21, k=1e-13, rate=5.0, temperature=350.0):
    """One row of cells along X (no Y/Z neighbours, PermY = 0 so only the X ends are supported)."""
    grid = (1, 1, n)
    active = np.ones(grid, bool)
    perm = [np.full(grid, k), np.zeros(grid), np.zeros(grid)]
    inj = np.zeros(grid)
    inj[0, 0, n // 2] = rate
    return active, perm, np.full(grid, 1e-9), np.full(grid, temperature), inj


def test_line_matches_the_steady_state_solution():
    # Negligible storage (porosity clipped to 1e-4 makes it ~1e-7 of the face terms): steady state.
    # Half the rate flows to each end through m faces and the half cell to the boundary.
    n, k, rate, dx, dy, dz = 21, 1e-13, 5.0, 100.0, 50.0, 10.0
    active, perm, poro, temp, inj = _line(n, k, rate)
    open_, weak = well_response.pressure_responses(active, perm, poro, temp, inj, (dx, dy, dz))
    mob = 1.0 / well_response.water_viscosity(350.0)
    t_face = dy * dz * k / dx * mob
    q = rate / well_response.WATER_DENSITY
    for strength, dp in zip(well_response.SUPPORT_STRENGTHS, (open_, weak)):
        t_end = strength * dy * dz * k / (dx / 2) * mob
        expected = 0.5 * q * ((n // 2) / t_face + 1 / t_end)
        assert dp[0, 0, n // 2] == pytest.approx(expected, rel=1e-4)
        np.testing.assert_allclose(dp[0, 0, ::-1], dp[0, 0], rtol=1e-6)  # symmetric about the well
        assert np.all(np.diff(dp[0, 0, n // 2:]) < 0)  # falls off towards the supported ends
    assert weak.max() > 4 * open_.max()  # weak support: a far larger buildup


def _box(seed=0, grid=(8, 12, 14)):
    a = fixtures.make_raw_arrays(grid=grid, seed=seed, inactive_frac=0.2)
    active = a["IsActive"] > 0.5
    perm = [a["PermX"], a["PermY"], a["PermZ"]]
    return active, perm, a["Porosity"], a["Temperature0"], a["InjRate"] * active


def test_linear_in_the_rates_and_zero_outside_active():
    active, perm, poro, temp, inj = _box()
    cell = (100.0, 80.0, 10.0)
    base = well_response.pressure_responses(active, perm, poro, temp, inj, cell)
    doubled = well_response.pressure_responses(active, perm, poro, temp, 2 * inj, cell)
    flipped = well_response.pressure_responses(active, perm, poro, temp, -inj, cell)
    for b, d, f in zip(base, doubled, flipped):
        assert b.dtype == np.float32 and b.shape == active.shape
        assert np.all(b[~active] == 0) and np.abs(b[active]).max() > 0
        np.testing.assert_allclose(d, 2 * b, rtol=1e-4, atol=1e-3 * np.abs(b).max())
        np.testing.assert_allclose(f, -b, rtol=1e-4, atol=1e-3 * np.abs(b).max())
    injector = inj > 0
    assert base[0][injector].min() > 0 and base[0][inj < 0].max() < 0  # up at the injector, down at the producer
    no_wells = well_response.pressure_responses(active, perm, poro, temp, np.zeros_like(inj), cell)
    assert all(np.all(r == 0) for r in no_wells)


def test_iterative_path_agrees_with_the_direct_solve(monkeypatch):
    active, perm, poro, temp, inj = _box(seed=3)
    cell = (60.0, 90.0, 8.0)
    direct = well_response.pressure_responses(active, perm, poro, temp, inj, cell)
    monkeypatch.setattr(well_response, "DIRECT_SOLVE_MAX_CELLS", 0)  # force pyamg + CG, the full-grid path
    iterative = well_response.pressure_responses(active, perm, poro, temp, inj, cell)
    for d, i in zip(direct, iterative):
        np.testing.assert_allclose(i, d, rtol=1e-4, atol=1e-5 * np.abs(d).max())


def test_bad_cell_sizes_are_refused():
    active, perm, poro, temp, inj = _box()
    with pytest.raises(UserError, match="cell_size"):
        well_response.pressure_responses(active, perm, poro, temp, inj, (100.0, -1.0, 10.0))


def test_prep_reads_cell_sizes_from_params_or_the_override(tmp_path):
    raw = tmp_path / "raw"
    for i in range(2):
        a = fixtures.make_raw_arrays(seed=i)
        a["ParamsScalar"][schema.PARAM_NAMES.index("CellSizeY")] = -3.0  # an export whose params mean other things
        fixtures.write_raw_sim(raw / f"v2.4_{i + 1:04d}.h5", a)
    with pytest.raises(UserError, match="--cell_size"):
        data_prep.prep(raw, tmp_path / "out", n_test=1, progress=False)
    data_prep.prep(raw, tmp_path / "out", n_test=1, progress=False, cell_size=(100.0, 80.0, 10.0))
    stats = json.loads((tmp_path / "out" / schema.STATS_FILE).read_text())
    assert stats["cell_size"] == [100.0, 80.0, 10.0]
    for name in schema.RESPONSE_NAMES:
        assert stats["static"]["transform"][schema.STATIC_NAMES.index(name)] == "asinh"
    with pytest.raises(UserError, match="--cell_size"):
        data_prep.prep(raw, tmp_path / "out2", n_test=1, progress=False, cell_size=(100.0, 0.0, 10.0))
