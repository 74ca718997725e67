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
    responses = well_response.pressure_responses(active, perm, poro, temp, inj, (dx, dy, dz))
    assert len(responses) == len(well_response.SUPPORT_STRENGTHS) == len(schema.RESPONSE_NAMES)
    *supported, closed = responses
    assert well_response.SUPPORT_STRENGTHS[-1] == 0.0
    mob = 1.0 / well_response.water_viscosity(350.0)
    t_face = dy * dz * k / dx * mob
    q = rate / well_response.WATER_DENSITY
    for strength, dp in zip(well_response.SUPPORT_STRENGTHS, supported):
        t_end = strength * dy * dz * k / (dx / 2) * mob
        expected = 0.5 * q * ((n // 2) / t_face + 1 / t_end)
        # at 0.1 % support the buildup is so large that storage takes ~0.06 % of the water
        assert dp[0, 0, n // 2] == pytest.approx(expected, rel=1e-4 if strength >= 0.01 else 2e-3)
        np.testing.assert_allclose(dp[0, 0, ::-1], dp[0, 0], rtol=1e-6)  # symmetric about the well
        assert np.all(np.diff(dp[0, 0, n // 2:]) < 0)  # falls off towards the supported ends
    # weaker support (open -> 0.1 %): a larger buildup at each step of the scale
    peaks = [dp.max() for dp in supported]
    assert all(b > 1.2 * a for a, b in zip(peaks, peaks[1:]))
    # closed sides: only storage takes the water, so the buildup is larger still and spreads to the ends
    assert closed.max() > 4 * peaks[-1] and closed[0, 0, 0] > 0.5 * closed.max()


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


def test_heat_front_arrival_on_a_line_follows_the_heated_volume():
    # A vertical line (no box sides on Z) with a falling pressure: uniform flux F from the top
    # cell, where the injector adds F. The front needs one cell's heated volume / F per cell.
    n, k, dx, dy, dz, poro = 12, 1e-13, 50.0, 50.0, 10.0, 0.2
    active = np.ones((n, 1, 1), bool)
    perm = [np.full(active.shape, k)] * 3
    temp = np.full(active.shape, 350.0)
    response = np.linspace(2e5, 1e5, n).reshape(active.shape)  # Pa, > 0: nothing flows in from the sides
    mob = 1.0 / well_response.water_viscosity(350.0)
    flux = dx * dy * k / dz * mob * (response[0, 0, 0] - response[1, 0, 0])  # m^3/s per face
    inj = np.zeros(active.shape)
    inj[0] = flux * well_response.WATER_DENSITY
    tau = well_response.thermal_arrival(active, perm, np.full(active.shape, poro), temp, inj, (dx, dy, dz), response)
    heated = dx * dy * dz * (poro + (1 - poro) * well_response.ROCK_HEAT_PER_VOLUME
                             / well_response.WATER_HEAT_PER_VOLUME)
    expected = np.arange(1, n + 1) * heated / flux / well_response.YEAR_SECONDS
    assert expected[-1] < 0.1 * well_response.ARRIVAL_CAP_YEARS  # far from the cap: the leak term is negligible
    np.testing.assert_allclose(tau[:, 0, 0], expected, rtol=0.02)
    # reversed flow: the injector's cell is now downstream of everything, the rest is never reached
    tau_rev = well_response.thermal_arrival(active, perm, np.full(active.shape, poro), temp, inj, (dx, dy, dz),
                                            response[::-1].copy())
    assert np.all(tau_rev[1:] > 0.9 * well_response.ARRIVAL_CAP_YEARS)


def test_heat_front_reaches_the_injectors_first():
    active, perm, poro, temp, inj = _box(seed=1)
    cell = (100.0, 80.0, 10.0)
    weak = well_response.pressure_responses(active, perm, poro, temp, inj, cell)[1]
    tau = well_response.thermal_arrival(active, perm, poro, temp, inj, cell, weak)
    assert tau.dtype == np.float32 and np.all(tau[~active] == 0)
    assert np.all(tau[active] > 0) and np.all(tau[active] <= well_response.ARRIVAL_CAP_YEARS * 1.0001)
    injector = inj > 0
    assert tau[injector].max() < np.median(tau[active])  # the wells' own cells are reached first
    faster = well_response.thermal_arrival(active, perm, poro, temp, 2 * inj, cell, 2 * weak)
    near = tau < 0.01 * well_response.ARRIVAL_CAP_YEARS
    np.testing.assert_allclose(faster[near], tau[near] / 2, rtol=0.05)  # twice the rate: half the time


def test_injection_gap_comes_from_the_field_injection_enthalpy():
    active, perm, poro, temp, inj = _box(seed=2)
    t_inj = 310.0
    scalars = np.zeros((4, schema.N_SCALARS))
    water = schema.SCALAR_NAMES.index("FieldWaterInjectionRate")
    energy = schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")
    scalars[1:, water] = 12.0  # a first report before the wells start is ignored
    scalars[1:, energy] = 12.0 * schema.WATER_HEAT_CAPACITY * (t_inj - schema.ENTHALPY_ZERO_T)
    assert well_response.injection_temperature(scalars) == pytest.approx(t_inj)
    fields = well_response.well_fields(active, perm, poro, temp, inj, (100.0, 80.0, 10.0), scalars)
    later = set(schema.COLD_RESPONSE_NAMES)  # they need the thermal prior: prep derives them after it
    assert list(fields) == [f.name for f in schema.DERIVED_STATIC_FIELDS[1:] if f.name not in later]
    gap = fields[schema.INJECTION_GAP]
    np.testing.assert_allclose(gap[active], t_inj - temp[active], rtol=1e-5)
    assert np.all(gap[~active] == 0)
    no_injection = well_response.well_fields(active, perm, poro, temp, inj, (100.0, 80.0, 10.0), np.zeros_like(scalars))
    assert np.all(no_injection[schema.INJECTION_GAP] == 0)


def _prior_line(n=60, rate_scale=1.0, conductivity=1e-9):
    """A vertical line with a uniform downward flux F from an injector in the top cell (as in the
    arrival test), heated volume / F = 0.5 year per cell; all three flow fields the same."""
    k, dx, dy, dz, poro = 1e-13, 50.0, 50.0, 10.0, 0.2
    active = np.ones((n, 1, 1), bool)
    perm = [np.full(active.shape, k)] * 3
    temp = np.full(active.shape, 350.0)
    heated = dx * dy * dz * (poro + (1 - poro) * well_response.ROCK_HEAT_PER_VOLUME / well_response.WATER_HEAT_PER_VOLUME)
    flux = rate_scale * heated / (0.5 * well_response.YEAR_SECONDS)  # m^3/s
    mob = 1.0 / well_response.water_viscosity(350.0)
    drop = flux / (dx * dy * k / dz * mob)  # Pa per face for that flux
    response = (1e7 - drop * np.arange(n)).reshape(active.shape)  # > 0: nothing enters from the sides
    inj = np.zeros(active.shape)
    inj[0] = flux * well_response.WATER_DENSITY
    responses = {name: response for name in schema.RESPONSE_NAMES}
    return well_response.thermal_prior(active, perm, np.full(active.shape, poro), temp, inj, (dx, dy, dz),
                                       responses, 30, rock_conductivity=conductivity)


def test_thermal_prior_on_a_line_moves_the_front_with_the_heated_volume():
    theta = _prior_line().astype(np.float64)
    assert theta.shape == (30, schema.N_THERMAL_PRIOR, 60, 1, 1) and theta.dtype == np.float64
    assert np.all(theta[0] == 0) and theta.min() >= 0 and theta.max() <= 1
    np.testing.assert_array_equal(theta[:, 0], theta[:, 2])  # same flow field, same prior
    line = theta[:, 0, :, 0, 0]
    assert np.all(np.diff(line, axis=0) >= -1e-3)  # cells only ever warm towards the injection (float16)
    for year in (4, 8, 14):
        front = np.argmax(line[year] < 0.5)  # first cell the front has not half reached
        assert abs(front - 2 * year) <= 2, (year, front)  # two cells per year
        # implicit upwind smears the front over ~sqrt(distance) cells each side, like dispersion
        assert line[year, : year].min() > 0.9 and line[year, 3 * year + 4:].max() < 0.05
        assert line[year].sum() == pytest.approx(2 * year, rel=0.01)  # all the injected heat is stored
    faster = _prior_line(rate_scale=2.0)[10, 0, :, 0, 0].astype(np.float64)
    assert faster.sum() == pytest.approx(40, rel=0.01)  # twice the rate: twice the heat, front twice as far


def test_thermal_prior_loses_heat_to_the_surrounding_rock():
    insulated = _prior_line()[:, 0, :, 0, 0].astype(np.float64)
    conducting = _prior_line(conductivity=3.0)[:, 0, :, 0, 0].astype(np.float64)
    # the line's cells touch rock held at the initial temperature on four sides: the plume stays
    # warmer than the injected water and its front lags
    assert conducting[20, :20].mean() < insulated[20, :20].mean() - 0.05
    assert np.argmax(conducting[20] < 0.5) < np.argmax(insulated[20] < 0.5)


def test_thermal_prior_is_zero_without_injection_and_agrees_on_both_solver_paths(monkeypatch):
    active, perm, poro, temp, inj = _box(seed=4)
    cell = (90.0, 70.0, 9.0)
    responses = dict(zip(schema.RESPONSE_NAMES, well_response.pressure_responses(active, perm, poro, temp, inj, cell)))
    direct = well_response.thermal_prior(active, perm, poro, temp, inj, cell, responses, 6).astype(np.float64)
    assert np.all(direct[:, :, ~active] == 0) and direct[-1].max() > 0.5
    injector = inj > 0
    assert direct[-1][:, injector].mean() > direct[-1][:, active].mean()  # the wells' cells cool first
    monkeypatch.setattr(well_response, "DIRECT_SOLVE_MAX_CELLS", 0)  # ILU + BiCGSTAB, the full-grid path
    iterative = well_response.thermal_prior(active, perm, poro, temp, inj, cell, responses, 6).astype(np.float64)
    np.testing.assert_allclose(iterative, direct, atol=2e-3)  # float16 storage
    none = well_response.thermal_prior(active, perm, poro, temp, np.minimum(inj, 0), cell, responses, 6)
    assert np.all(none == 0)


def test_cold_water_needs_more_pressure_where_the_prior_has_cooled():
    active, perm, poro, temp, inj = _box(seed=5)
    cell = (90.0, 70.0, 9.0)
    responses = dict(zip(schema.RESPONSE_NAMES, well_response.pressure_responses(active, perm, poro, temp, inj, cell)))
    prior = well_response.thermal_prior(active, perm, poro, temp, inj, cell, responses, 30)
    gap = np.where(active, 300.0 - temp, 0.0)  # injected at 300 K, colder than every cell
    change = well_response.cold_response_change(active, perm, poro, temp, inj, cell, responses, prior, gap)
    assert list(change) == list(schema.COLD_RESPONSE_NAMES)
    injector = inj > 0
    for cold_name, name in zip(schema.COLD_RESPONSE_NAMES, schema.RESPONSE_NAMES):
        d = change[cold_name]
        assert d.dtype == np.float32 and np.all(d[~active] == 0)
        # more viscous water in the cooled cells: the injectors need more pressure, by a real amount
        assert np.all(d[injector] > 0) and d[injector].mean() > 0.05 * responses[name][injector].mean()
    none = well_response.cold_response_change(active, perm, poro, temp, inj, cell, responses, np.zeros_like(prior), gap)
    assert all(np.abs(v).max() <= 1e-6 * np.abs(responses[n]).max() for v, n in zip(none.values(), schema.RESPONSE_NAMES))


def _pressure_prior_case(seed=6, n_t=6, gap_k=-100.0, balanced=False):
    """A box with its wells, their thermal prior and a uniform injection gap (K, < 0: cold water)."""
    active, perm, poro, temp, inj = _box(seed=seed)
    if balanced:  # producers take exactly what the injectors put in
        inj = np.where(inj > 0, inj, inj * inj[inj > 0].sum() / -inj[inj < 0].sum())
    cell = (90.0, 70.0, 9.0)
    responses = dict(zip(schema.RESPONSE_NAMES, well_response.pressure_responses(active, perm, poro, temp, inj, cell)))
    prior = well_response.thermal_prior(active, perm, poro, temp, inj, cell, responses, n_t)
    gap = np.where(active, gap_k, 0.0)
    return (active, perm, poro, temp, inj, cell), prior, gap


def _stored_mass_change(args, dp, gap, prior, c_t):
    """kg: what a closed box stores per cell from the pressure change (rho(T0) c_t) and the cooling
    (rho(T) - rho(T0)) of the prior's 1 % flow field, summed over the active cells."""
    active, _, poro, temp, _, (dx, dy, dz) = args
    theta = prior[:, schema.THERMAL_PRIOR_RESPONSES.index(schema.ARRIVAL_FLOW_RESPONSE)].astype(np.float64)
    pore = dx * dy * dz * np.clip(poro, 1e-4, None)
    rho0 = well_response.water_density(temp)
    cooled = well_response.water_density(temp + gap * theta) - rho0
    return np.array([(pore * (rho0 * c_t * dp[t] + cooled[t]))[active].sum() for t in range(len(dp))])


def test_pressure_prior_of_a_closed_box_stores_the_net_injection():
    """Closed sides, no cooling: the box stores exactly the water the wells put in, year after year
    (mass balance; fluxes and gravity cancel between neighbours)."""
    args, prior, gap = _pressure_prior_case(gap_k=0.0)
    active, inj = args[0], args[4]
    c_t = 2e-9
    dp = well_response.pressure_prior(*args, prior, gap, support=0.0, compressibility=c_t)
    assert dp.shape == (6,) + active.shape and dp.dtype == np.float32 and np.all(dp[:, ~active] == 0)
    dp = dp.astype(np.float64)
    assert np.all(dp[0] == 0)
    net = inj[active].sum() * well_response.YEAR_SECONDS * np.arange(6)  # kg
    # the march keeps rho(T0) per cell without cooling, so the balance holds to float32 storage
    np.testing.assert_allclose(_stored_mass_change(args, dp, gap, prior, c_t)[1:], net[1:], rtol=1e-4)


def test_pressure_prior_falls_where_cold_water_contracts_and_support_limits_it():
    """Balanced wells in a closed box: only the cooling's contraction moves the mean pressure, down,
    by what the contraction takes (to within the change of rho c_t over the years); lateral support
    brings the pressure back towards the initial one, the more so the stronger."""
    args, prior, gap = _pressure_prior_case(balanced=True)
    c_t = 2e-9
    closed = well_response.pressure_prior(*args, prior, gap, support=0.0, compressibility=c_t).astype(np.float64)
    stored = _stored_mass_change(args, closed, gap, prior, c_t)
    active = args[0]
    assert closed[-1][active].mean() < 0  # contraction: the box loses pressure
    contraction = _stored_mass_change(args, np.zeros_like(closed), gap, prior, c_t)
    assert np.all(np.abs(stored[1:]) < 0.02 * np.abs(contraction[1:]))  # stored = what the wells add = 0
    level = [np.abs(well_response.pressure_prior(*args, prior, gap, support=s, compressibility=c_t)[-1]).mean()
             for s in (1.0, 0.01, 0.0)]
    assert level[0] < level[1] < level[2]
    # a run whose params say nothing usable: closed sides and the generic compressibility
    generic = well_response.pressure_prior(*args, prior, gap, support=np.nan, compressibility=0.0)
    np.testing.assert_array_equal(generic, well_response.pressure_prior(
        *args, prior, gap, support=0.0, compressibility=well_response.TOTAL_COMPRESSIBILITY))


def test_pressure_prior_is_zero_without_wells_and_agrees_on_both_solver_paths(monkeypatch):
    args, prior, gap = _pressure_prior_case(n_t=4)
    direct = well_response.pressure_prior(*args, prior, gap, support=0.05, compressibility=1e-9)
    assert np.abs(direct[-1]).max() > 1e4  # bars, not noise
    monkeypatch.setattr(well_response, "DIRECT_SOLVE_MAX_CELLS", 0)  # AMG-preconditioned CG, the full-grid path
    iterative = well_response.pressure_prior(*args, prior, gap, support=0.05, compressibility=1e-9)
    np.testing.assert_allclose(iterative, direct, rtol=1e-5, atol=1e-3 * np.abs(direct).max())
    no_wells = list(args)
    no_wells[4] = np.zeros_like(args[4])
    assert np.all(well_response.pressure_prior(*no_wells, prior, gap, support=0.05) == 0)
