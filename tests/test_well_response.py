"""The physics priors (physics_priors.py): mass balance, boundaries, heat transport, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from voxel_ode import schema
from voxel_ode.physics import priors as wr
from voxel_ode.physics import water
from voxel_ode.physics.wells import join_wells, solve_with_wells, wells_diagonal

GRID = (6, 8, 9)
CELL = (50.0, 40.0, 5.0)


def reservoir(grid=GRID, wells=((3, 4, 2, 5.0), (3, 4, 6, -5.0)), gap=0.0, **overrides):
    """A uniform box; wells: (z, y, x, kg/s)."""
    inj = np.zeros(grid, np.float32)
    for z, y, x, q in wells:
        inj[z, y, x] = q
    perm = np.full(grid, 1e-13, np.float32)
    t0 = np.full(grid, 400.0, np.float32)
    active = np.ones(grid, bool)
    res = wr.Reservoir(active, (perm, perm, perm * 0.1), np.full(grid, 0.2, np.float32), t0, inj, CELL,
                       injection_gap=np.where(active, gap, 0.0).astype(np.float32))
    for key, value in overrides.items():
        setattr(res, key, value)
    return res


def pressure_change(res, n_reports):
    """Pa, (T, Z, Y, X) float64."""
    return wr.prior_fields(res, n_reports)[1]


def test_closed_box_stores_exactly_the_net_injection():
    res = reservoir(wells=((2, 3, 3, 4.0), (4, 5, 6, -1.0)))
    dp = pressure_change(res, 6)
    rho0 = wr.water_density(400.0)
    pore_volume = np.prod(CELL) * 0.2
    for t in (1, 5):
        stored = float(np.sum(pore_volume * rho0 * res.compressibility * dp[t]))
        assert stored == pytest.approx(3.0 * t * wr.YEAR_SECONDS, rel=1e-6)
    stored_f16 = wr.priors(res, 6)[:, schema.PRIOR_NAMES.index("PressurePrior")].astype(np.float64)
    np.testing.assert_allclose(np.sinh(stored_f16) * schema.PRESSURE_PRIOR_SCALE_PA, dp, rtol=5e-3, atol=1.0)


@pytest.mark.parametrize("boundary", ["fixed_pressure", "pore_volume"])
def test_lateral_support_lowers_the_pressure_build_up(boundary):
    """Net injection into a closed box builds pressure without bound; support from the sides
    (an aquifer at the initial pressure, or side cells with a large pore volume) holds it down."""
    wells = ((3, 4, 4, 5.0),)
    closed = pressure_change(reservoir(wells=wells), 8)
    weak = pressure_change(reservoir(wells=wells, boundary=boundary, boundary_multiplier=10.0), 8)
    strong = pressure_change(reservoir(wells=wells, boundary=boundary, boundary_multiplier=1000.0), 8)
    for t in (1, 7):
        assert closed[t].mean() > weak[t].mean() > strong[t].mean() > 0
    if boundary == "fixed_pressure":  # an aquifer at fixed pressure reaches a steady state
        assert strong[7].mean() - strong[6].mean() < 0.05 * strong[7].mean()


def test_thermal_prior_spreads_from_the_injector_within_zero_and_one():
    res = reservoir(gap=-100.0)
    theta = wr.priors(res, 8)[:, schema.PRIOR_NAMES.index("ThermalPrior")].astype(np.float64)
    assert theta.min() >= 0.0 and theta.max() <= 1.0
    assert np.all(theta[0] == 0.0)
    injector, far = theta[:, 3, 4, 2], theta[:, 0, 0, 8]
    assert np.all(np.diff(injector) >= -1e-3) and injector[-1] > 0.5
    assert far[-1] < injector[-1]
    cooled = (theta > 0.05).sum(axis=(1, 2, 3))
    assert cooled[7] > cooled[1]  # the plume grows


def test_cold_water_raises_the_injection_pressure_and_contracts():
    """Cold water is more viscous (the injector needs more pressure over the producer) and
    denser (it contracts: in a closed box the mean pressure falls)."""
    warm = pressure_change(reservoir(gap=0.0), 8)
    cold = pressure_change(reservoir(gap=-120.0), 8)
    lift = lambda dp: dp[7, 3, 4, 2] - dp[7, 3, 4, 6]  # noqa: E731  injector over producer
    assert lift(cold) > 1.2 * lift(warm) > 0
    assert cold[7].mean() < warm[7].mean() - 1e5


@pytest.mark.parametrize("case", ["isolated", "zero_perm_porosity", "no_injector", "well_in_inactive", "no_active"])
def test_awkward_reservoirs_give_finite_priors(case):
    res = reservoir()
    if case == "isolated":  # active cells with no active neighbour, one of them a well
        active = np.zeros(GRID, bool)
        active[::2, ::2, ::2] = True
        active[3, 4, 2] = active[3, 4, 6] = True
        res.active = active
    elif case == "zero_perm_porosity":
        perm = res.perm_xyz[0].copy()
        perm[:, :, 4] = 0.0
        res.perm_xyz = (perm, perm, perm)
        res.porosity = np.where(np.arange(GRID[2]) == 5, 0.0, 0.2).astype(np.float32) * np.ones(GRID, np.float32)
    elif case == "no_injector":
        res.inj_rate = np.minimum(res.inj_rate, 0.0)
    elif case == "well_in_inactive":
        res.active = np.ones(GRID, bool)
        res.active[3, 4, 2] = False
    else:
        res.active = np.zeros(GRID, bool)
    out = wr.priors(res, 5)
    assert out.shape == (5, schema.N_PRIORS) + GRID and np.isfinite(out.astype(np.float64)).all()
    if case == "no_active":
        assert not out.any()


def test_priors_use_the_water_of_synth():
    """One set of water formulas (water.py): the priors' water is synth's at 1 atm, clipped to a
    finite range for foreign files."""
    t = np.linspace(280.0, 520.0, 9)
    assert np.array_equal(wr.water_density(t), water.density(water.ATMOSPHERIC_PRESSURE, t, 4.5e-10))
    assert np.array_equal(wr.water_viscosity(t), water.viscosity(t))
    assert wr.water_viscosity(100.0) == water.viscosity(275.0) and np.isfinite(wr.water_density(1e4))


def test_injection_temperature_from_the_field_scalars():
    scalars = np.zeros((4, schema.N_SCALARS))
    t_inj = 330.0
    scalars[:, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")] = 20.0
    scalars[:, schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")] = \
        20.0 * schema.WATER_HEAT_CAPACITY * (t_inj - schema.ENTHALPY_ZERO_T)
    assert wr.injection_temperature(scalars) == pytest.approx(t_inj)
    scalars[:, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")] = 0.0
    assert wr.injection_temperature(scalars) is None


def test_without_outside_heat_exchange_the_plume_keeps_its_cold():
    """Conduction to the rock outside the active cells warms the plume back; a simulator without
    that rock (open-darts removes inactive cells) keeps the injected cold: theta is higher."""
    active = np.zeros(GRID, bool)
    active[2:4] = True  # a thin layer: most of its heat exchange is with the rock above and below
    warm_rock = reservoir(gap=-100.0, active=active)
    no_rock = reservoir(gap=-100.0, active=active, outside_heat_exchange=False)
    theta_rock, _ = wr.prior_fields(warm_rock, 6)
    theta_none, _ = wr.prior_fields(no_rock, 6)
    assert theta_none[5].sum() > 1.2 * theta_rock[5].sum()
    assert np.all(theta_none[5][active] >= theta_rock[5][active] - 1e-9)


@pytest.mark.parametrize("outside", [False, True])
def test_the_initial_gradient_relaxes_in_an_insulated_box_and_holds_where_the_rock_outside_carries_it(outside):
    """Cells no injected water reaches drift as the initial temperature itself moves: in a box that
    exchanges no heat with the outside, conduction evens out its geothermal gradient (the top warms,
    the base cools, the heat stays); where the rock outside carries the gradient's flux, a linear
    gradient is steady and nothing drifts."""
    grid = (12, 4, 4)
    t0 = (340.0 + 3.0 * np.arange(grid[0], dtype=np.float32))[:, None, None] * np.ones(grid, np.float32)
    res = reservoir(grid=grid, wells=((11, 0, 0, 1e-6), (11, 3, 3, -1e-6)), gap=-60.0,
                    outside_heat_exchange=outside)
    res.temperature0 = t0
    theta, _ = wr.prior_fields(res, 11)
    change = theta * res.injection_gap  # K: the prior's temperature change
    layers = change[10].mean(axis=(1, 2))
    if outside:
        assert np.abs(change).max() < 1e-3
        return
    assert layers[0] > 0.3 and layers[-1] < -0.3  # the top warms, the base cools (by year 10)
    # a linear gradient relaxes symmetrically (the contraction's slight flow moves it by ~0.1 %)
    np.testing.assert_allclose(layers, -layers[::-1], rtol=0.0, atol=0.005 * layers[0])
    assert abs(layers[grid[0] // 2]) < 0.1 * layers[0]  # the middle moves least
    assert abs(change[10].sum()) < 5e-3 * np.abs(change[10]).sum()  # uniform heat capacity: no heat made or lost
    assert np.all(np.diff(layers) < 0)  # monotonic from the top's warming to the base's cooling


@pytest.mark.parametrize("boundary", ["closed", "pore_volume"])
def test_iterative_solvers_of_large_grids_agree_with_the_direct_ones(monkeypatch, boundary):
    """AMG-CG (pressure) and flow-ordered BiCGSTAB (heat), used above DIRECT_SOLVE_MAX_CELLS."""
    res = reservoir(grid=(6, 10, 12), wells=((3, 3, 3, 5.0), (3, 7, 9, -4.0)), gap=-40.0, boundary=boundary,
                    boundary_multiplier=100.0)
    direct = wr.prior_fields(res, 6)
    monkeypatch.setattr(wr, "DIRECT_SOLVE_MAX_CELLS", 10)
    iterative = wr.prior_fields(res, 6)
    for d, i in zip(direct, iterative):
        assert np.abs(d).max() > 0
        np.testing.assert_allclose(i, d, rtol=1e-4, atol=1e-4 * np.abs(d).max())


def column_box(gap, grid=(11, 9, 9), **overrides):
    """An isotropic box 11 cells deep with one injector in the middle layer and no producer; the
    sides hold pressure, so the injected water can leave."""
    res = reservoir(grid=grid, wells=((5, 4, 4, 3.0),), gap=gap, boundary="pore_volume", boundary_multiplier=1000.0,
                    **overrides)
    res.perm_xyz = (res.perm_xyz[0] * 5, res.perm_xyz[1] * 5, res.perm_xyz[0] * 5)
    return res


@pytest.mark.parametrize("gap, sinks", [(-120.0, True), (80.0, False)])
def test_the_plume_moves_by_its_weight(gap, sinks):
    """Cold water is heavier than the reservoir's, so its plume sinks and spreads along the base;
    hot water rises. Without the water's weight the box is symmetric about the injector's layer."""
    theta, _ = wr.prior_fields(column_box(gap), 11)
    still, _ = wr.prior_fields(column_box(0.0), 11)  # no gap: no weight
    np.testing.assert_allclose(still[-1], still[-1][::-1], atol=1e-6)
    below, above = theta[-1, 5 + 3:].sum(), theta[-1, :5 - 3 + 1].sum()
    assert (below > 1.3 * above) if sinks else (above > 1.3 * below)
    for d in (2, 3, 4):  # along the injector's column and at the plume's edge
        lower, upper = theta[-1, 5 + d, 4, 4], theta[-1, 5 - d, 4, 4]
        assert (lower > upper) if sinks else (upper > lower)
        assert (theta[-1, 5 + d, 4, 1] > theta[-1, 5 - d, 4, 1]) == sinks


def test_the_thermal_prior_stays_within_zero_and_one_on_rough_ground():
    """Log-normal permeability over four decades, a strong gap, high rates and two producers:
    the share of the gap is a weighted mean of old, neighbour and injected values, in [0, 1]."""
    rng = np.random.default_rng(3)
    grid = (10, 8, 9)
    perm = (10.0 ** rng.uniform(-15, -11, grid)).astype(np.float32)
    for gap in (-150.0, 150.0):
        res = reservoir(grid=grid, wells=((2, 2, 2, 40.0), (7, 5, 6, 30.0), (5, 6, 1, -40.0), (3, 1, 7, -30.0)),
                        gap=gap, boundary="fixed_pressure", boundary_multiplier=10.0)
        res.perm_xyz = (perm, perm, perm * 0.3)
        theta, pressure = wr.prior_fields(res, 12)
        assert np.isfinite(pressure).all() and theta.min() >= 0.0 and theta.max() <= 1.0
        assert theta[-1].max() > 0.9


def test_hot_water_into_cold_rock_keeps_the_march_stable():
    """Water at 550 K is ~8x as mobile as at 300 K: the pressure step's lagged mobility must stay
    capped, or its error grows every year (and with it the flow the heat moves on)."""
    res = reservoir(grid=(10, 8, 9), wells=((5, 4, 2, 20.0), (5, 4, 6, -20.0)), gap=250.0)
    res.temperature0 = np.full((10, 8, 9), 300.0, np.float32)
    theta, pressure = wr.prior_fields(res, 31)
    peak = np.abs(pressure).max(axis=(1, 2, 3))
    assert np.isfinite(peak).all() and peak[30] < 2.0 * peak[5]
    assert 0.0 <= theta.min() and theta.max() <= 1.0 and theta[30, 5, 4, 2] > 0.9


def _with_pressure0(res, p0=200e5):
    """Hydrostatic initial pressure, ``p0`` in the top layer."""
    depth = np.arange(res.active.shape[0])[:, None, None] * CELL[2]
    res.pressure0 = np.broadcast_to(p0 + wr.water_density(400.0) * wr.GRAVITY * depth, res.active.shape).astype(np.float64)
    return res


@pytest.mark.parametrize("sign", [-1, 1])
def test_a_well_at_its_bottomhole_pressure_limit_delivers_only_what_holds_it(sign):
    """A closed box with one well (a column of two perforations): unlimited, its pressure moves
    without bound; with a declared limit the well's cells never pass it, the march follows the
    unlimited one until the limit binds, then levels off; a limit never reached changes nothing."""
    wells = ((2, 4, 4, sign * 0.01), (3, 4, 4, sign * 0.01))
    free = pressure_change(_with_pressure0(reservoir(wells=wells)), 12)
    limit_key = "producer_min_bhp" if sign < 0 else "injector_max_bhp"
    limit = 200e5 + sign * 60e5
    held = pressure_change(_with_pressure0(reservoir(wells=wells, **{limit_key: limit})), 12)
    res = _with_pressure0(reservoir())
    cells = held[:, 2:4, 4, 4] + res.pressure0[2:4, 4, 4]
    head = wr.water_density(400.0) * wr.GRAVITY * CELL[2]  # the wellbore's water column to the lower perforation
    assert np.all(sign * (cells - (limit + np.array([0.0, head]))) <= 1.0)
    assert sign * free[-1, 2, 4, 4] + 200e5 * sign > sign * limit + 50e5  # unlimited, it passes the limit far
    binding = np.flatnonzero(np.abs(held - free).max(axis=(1, 2, 3)) > 1.0)
    assert binding.size and binding[0] > 1  # the first years are the unlimited march
    np.testing.assert_array_equal(held[:binding[0]], free[:binding[0]])
    late = np.abs(held[-1] - held[-2]).mean()
    assert late < 0.1 * np.abs(free[-1] - free[-2]).mean()  # levelled off
    far = pressure_change(_with_pressure0(reservoir(wells=wells, **{limit_key: 200e5 + sign * 1e9})), 12)
    np.testing.assert_array_equal(far, free)
    # the same limit as a grid over the initial pressure (description "over_initial" at "well"):
    # the well reads it at its shallowest perforation
    over = res.pressure0 + (limit - res.pressure0[2, 4, 4])
    over[3, 4, 4] += 30e5  # the deeper perforation's value is not the well's limit
    np.testing.assert_array_equal(pressure_change(_with_pressure0(reservoir(wells=wells, **{limit_key: over})), 12), held)


def test_well_limits_need_the_initial_pressure_and_change_nothing_undeclared():
    wells = ((2, 4, 4, -3.0), (3, 2, 6, 1.0))
    plain = wr.prior_fields(reservoir(wells=wells, gap=-40.0), 6)
    no_p0 = wr.prior_fields(reservoir(wells=wells, gap=-40.0, producer_min_bhp=190e5), 6)  # no pressure0: no limits
    with_p0 = wr.prior_fields(_with_pressure0(reservoir(wells=wells, gap=-40.0)), 6)  # no limits declared
    for a, b in zip(plain, no_p0):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain, with_p0):
        np.testing.assert_array_equal(a, b)


def _delivered(res):
    """Each active cell's delivered rate (kg/s) in the first year's warm-water step."""
    faces = wr._Faces(res.active, res.perm_xyz, res.cell_size)
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    system = wr._pressure_system(faces, res, t0)
    _, q = solve_with_wells(system.wells, system.solve, system.sources, np.zeros(faces.n), np.zeros(faces.n))
    return faces.to_grid(q)


def test_a_cold_wellbore_drives_its_water_into_the_deep_perforations():
    """An injector perforating 8 layers of a uniform box, InjRate split evenly: the well delivers
    the sum of its InjRate; with water at the reservoir's temperature in the wellbore the split
    stays near even; cold water's weight in the wellbore sends most of it to the deep layers and
    the shallow ones take less than InjRate says (their plume is smaller); as_given keeps InjRate."""
    wells = tuple((z, 4, 2, 0.25) for z in range(1, 9)) + ((4, 4, 6, -2.0),)
    box = dict(grid=(10, 8, 9), wells=wells, cell_size=(50.0, 40.0, 25.0))  # a 200 m perforated column
    warm = _delivered(reservoir(gap=0.0, **box))[1:9, 4, 2]
    cold_res = reservoir(gap=-80.0, **box)
    cold = _delivered(cold_res)[1:9, 4, 2]
    assert warm.sum() == pytest.approx(2.0, rel=1e-9) and cold.sum() == pytest.approx(2.0, rel=1e-9)
    assert np.abs(warm / 0.25 - 1).max() < 0.2
    assert cold[-1] > 1.5 * cold[0] and np.all(np.diff(cold) > 0)
    given = _delivered(reservoir(gap=-80.0, wellbore=False, **box))
    np.testing.assert_array_equal(given[1:9, 4, 2], np.full(8, 0.25))
    theta, _ = wr.prior_fields(cold_res, 4)
    assert theta[3, 8, 4, 3] > theta[3, 1, 4, 3]  # next to the well: the deep layer's plume is ahead


def test_scenarios_that_change_only_rates_reuse_the_pressure_factorization(monkeypatch):
    """A sweep's scenarios on one geology: the second run with other rates factorizes nothing and
    gives bitwise what a fresh factorization gives; other geology (porosity) factorizes again."""
    calls = []
    factor = wr._factor
    monkeypatch.setattr(wr, "_factor", lambda A: calls.append(A.shape) or factor(A))
    wr._LAST_FACTOR.clear()
    base = reservoir(wells=((2, 4, 4, 2.0), (3, 2, 6, -2.0)), gap=-30.0)
    wr.prior_fields(base, 5)
    assert len(calls) == 1
    scaled = reservoir(wells=((2, 4, 4, 3.0), (3, 2, 6, -3.0)), gap=-30.0)
    reused = wr.prior_fields(scaled, 5)
    assert len(calls) == 1
    wr._LAST_FACTOR.clear()
    fresh = wr.prior_fields(scaled, 5)
    assert len(calls) == 2
    for a, b in zip(reused, fresh):
        np.testing.assert_array_equal(a, b)
    wr.prior_fields(reservoir(wells=((2, 4, 4, 3.0), (3, 2, 6, -3.0)), gap=-30.0, porosity=np.full(GRID, 0.1)), 5)
    assert len(calls) == 3 and len(wr._LAST_FACTOR) == 1


def test_a_held_producer_takes_in_its_cells_water_as_it_cools():
    """A closed box whose producer is held at its limit, its cells' water half as mobile as at the
    factorization (cold water reached it): the corrected solve on the warm factorization gives the
    pressures and rates of a matrix factorized with the cold J; the warm J alone leaves the box's
    pressure far lower (the producer draws as much water through half the drawdown: set3's
    closed box, whose held producer cooled 13-31 K, ran away from open-darts' pressure so)."""
    wells = ((2, 4, 2, 3.0), (2, 4, 6, -1.5), (3, 4, 6, -1.5))
    res = _with_pressure0(reservoir(wells=wells, producer_min_bhp=198e5))
    faces = wr._Faces(res.active, res.perm_xyz, res.cell_size)
    t0 = np.asarray(res.temperature0, np.float64).ravel()[faces.cells]
    system = wr._pressure_system(faces, res, t0)
    producer = [w for w, target in enumerate(system.wells.target) if target < 0][0]
    now = [index * (0.5 if w == producer else 1.0) for w, index in enumerate(system.wells.index)]
    columns = list(zip(system.wells.cells, now, system.wells.head, system.wells.target, system.wells.limit))
    cold_solve = wr._spd_solver(faces.laplacian(system.lam0) + sp.diags(system.storage + wells_diagonal(faces.n, columns)))
    cold = join_wells(faces, columns, cold_solve)
    zero = np.zeros(faces.n)
    dp_ref, dp, dp_warm, q = zero, zero, zero, None
    for _ in range(8):  # yearly steps, each correction starting from the year before's rates
        dp_ref, q_ref = solve_with_wells(cold, cold_solve, zero, system.storage * dp_ref, dp_ref)
        dp, q = solve_with_wells(system.wells, system.solve, zero, system.storage * dp, dp, index_now=now, q_before=q)
        dp_warm, _ = solve_with_wells(system.wells, system.solve, zero, system.storage * dp_warm, dp_warm)
    cells = system.wells.cells[producer]
    held = system.wells.limit[producer]
    assert np.all(dp_ref[cells] > held)  # held: its cells sit above its bottomhole pressure
    np.testing.assert_allclose(dp, dp_ref, atol=0.02 * np.ptp(dp_ref))
    np.testing.assert_allclose(q, q_ref, atol=0.02 * np.abs(q_ref).max())
    assert np.mean(dp_ref[cells] - dp_warm[cells]) > 0.3 * np.mean(dp_ref[cells] - held)
