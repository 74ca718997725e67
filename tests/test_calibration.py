"""Calibration (physics/calibration.py, data/calibrate.py): the priors' undeclared constants
inferred from training runs as continuous quantities, with a report of how well they are known."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from fixtures import write_raw_sim
from test_foreign import foreign_arrays, run_cli
from voxel_ode import schema
from voxel_ode.data import calibrate, description, limits, pack
from voxel_ode.data.stats import Stats
from voxel_ode.physics import calibration, reduced, thermal_fit
from voxel_ode.physics import priors as physics_priors

GRID = (8, 10, 12)


def _reservoir(seed, grid=GRID):
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    z = np.arange(nz)[:, None, None] * np.ones(grid)
    inj = np.zeros(grid)
    inj[:, 2 + seed % 3, 2], inj[:, ny - 3, nx - 3 - seed % 2] = 2.0, -1.5  # net injection: the boundary matters
    return physics_priors.Reservoir(
        np.ones(grid, bool), tuple(10 ** rng.uniform(-14, -12.5, grid) for _ in range(3)),
        rng.uniform(0.05, 0.3, grid), 350.0 + 0.1 * z, inj, (1.0, 1.0, 1.0),
        wellbore=False)  # as warm_pressure_change makes the changes: each cell at its InjRate


def _warm_runs(cell_size, compressibility, boundary, multiplier, seeds=(0, 1, 2), n_reports=6):
    runs = []
    for seed in seeds:
        res = _reservoir(seed)
        truth = dataclasses.replace(res, cell_size=cell_size, compressibility=compressibility, boundary=boundary,
                                    boundary_multiplier=multiplier)
        runs.append(calibration.Run(res, physics_priors.warm_pressure_change(truth, n_reports), name=f"run{seed}"))
    return runs


def _made_by_fit(run, fit):
    res = dataclasses.replace(run.reservoir, cell_size=fit.cell_size, compressibility=fit.compressibility,
                              boundary=fit.boundary, boundary_multiplier=fit.multiplier)
    return physics_priors.warm_pressure_change(res, run.true_change.shape[0])


def test_unit_cell_march_is_the_priors_march():
    run = _warm_runs((30.0, 30.0, 6.0), 1e-9, "fixed_pressure", 0.3)[0]
    a, h = 0.2, 30.0
    mine = reduced.UnitMarch(run.reservoir).march(a, 1e-9 * h ** 2, "fixed_pressure", 0.3, 6) / (a * h)
    np.testing.assert_allclose(mine, run.true_change, rtol=1e-9, atol=1e-9 * np.abs(mine).max())


def test_unit_cell_march_splits_a_wells_rate_as_the_priors_wellbore_does():
    """With wellbores (the priors' default) the unit-cell march takes Peaceman's log as a generic
    constant: it stays within a few per cent of the priors' warm march, whose log is exact."""
    res = dataclasses.replace(_reservoir(0), wellbore=True)
    truth = dataclasses.replace(res, cell_size=(30.0, 30.0, 6.0), compressibility=1e-9, boundary="fixed_pressure",
                                boundary_multiplier=0.3)
    priors_march = physics_priors.warm_pressure_change(truth, 6)
    mine = reduced.UnitMarch(res).march(0.2, 1e-9 * 30.0 ** 2, "fixed_pressure", 0.3, 6) / (0.2 * 30.0)
    as_given = physics_priors.warm_pressure_change(dataclasses.replace(truth, wellbore=False), 6)
    err = np.linalg.norm(mine - priors_march) / np.linalg.norm(priors_march)
    assert err < 0.03 < np.linalg.norm(as_given - priors_march) / np.linalg.norm(priors_march)


@pytest.mark.parametrize("cell, ct, kind, mult", [
    ((40.0, 40.0, 8.0), 1e-9, "pore_volume", 300.0),  # dz/dx 0.2, multiplier 300: in no list
    ((60.0, 60.0, 21.0), 7e-10, "fixed_pressure", 1e4),  # dz/dx 0.35, support 10^4
])
def test_values_outside_any_list_are_recovered(cell, ct, kind, mult):
    """Changes made by the warm march: the fit reproduces them with the true aspect and cell size;
    what the changes tell of the boundary (here the side storage m c_t h^2) is recovered too."""
    runs = _warm_runs(cell, ct, kind, mult)
    fit = calibration.fit(runs)
    assert fit.error < 1e-3 and fit.boundary == kind
    np.testing.assert_allclose(fit.cell_size, cell, rtol=1e-2)
    for run in runs:
        assert np.linalg.norm(_made_by_fit(run, fit) - run.true_change) < 1e-2 * np.linalg.norm(run.true_change)
    if kind == "pore_volume":
        np.testing.assert_allclose(fit.multiplier * fit.compressibility, mult * ct, rtol=0.05)
    assert set(fit.report()["runs"]) == {"run0", "run1", "run2"}
    assert json.loads(json.dumps(fit.report()))["fitted"]["CellSizeZ"]["spread_decades"] < 0.05


def test_declared_values_are_held():
    runs = _warm_runs((20.0, 20.0, 2.0), 1e-6 / 20.0 ** 2, "closed", 0.0)
    held = calibration.fit(runs, calibration.Declared(boundary=("pore_volume", 10.0)))
    assert (held.boundary, held.multiplier) == ("pore_volume", 10.0) and "BoundaryMultiplier" not in held.fitted
    cells = [dataclasses.replace(r, cell_size=(20.0, 20.0, 2.0)) for r in runs]  # declared: only c_t, boundary
    fit = calibration.fit(cells)
    assert fit.cell_size == (20.0, 20.0, 2.0) and fit.boundary == "closed" and fit.error < 1e-4
    assert set(fit.fitted) == {"TotalCompressibility", "lateral_boundary"}
    np.testing.assert_allclose(fit.compressibility, 1e-6 / 20.0 ** 2, rtol=1e-3)


def test_fewer_than_three_distinct_runs_are_not_used():
    runs = _warm_runs((20.0, 20.0, 4.0), 1e-9, "closed", 0.0, seeds=(0, 1))
    fit = calibration.fit(runs + [dataclasses.replace(runs[0], name="copy")])  # the same data under another name
    assert not fit.used and "2 distinct runs" in fit.warnings[0] and fit.error < 1e-3
    assert calibration.fit(_warm_runs((20.0, 20.0, 4.0), 1e-9, "closed", 0.0)).used


def test_a_value_on_a_bound_of_its_search_is_not_used():
    """Cells of 5 km: beyond the physical range of the search (2 km)."""
    fit = calibration.fit(_warm_runs((5000.0, 5000.0, 1000.0), 1e-9, "closed", 0.0))
    assert not fit.used
    assert any("bound" in w and "CellSizeX" in w for w in fit.warnings), fit.warnings


def test_a_run_the_fit_does_not_explain_is_named():
    runs = _warm_runs((40.0, 40.0, 8.0), 1e-9, "closed", 0.0, seeds=(0, 1, 2, 3))
    rng = np.random.default_rng(0)
    noise = rng.normal(size=runs[3].true_change.shape) * np.abs(runs[3].true_change).max()
    noise[0] = 0.0
    runs[3] = dataclasses.replace(runs[3], true_change=noise)
    fit = calibration.fit(runs)
    assert fit.used and any(w.startswith("run run3 explains too little") for w in fit.warnings)
    assert fit.run_errors["run3"]["pressure_error"] > 0.5 > fit.run_errors["run0"]["pressure_error"]
    still = [dataclasses.replace(r, true_change=np.zeros_like(r.true_change)) for r in runs]
    assert not calibration.fit(still).used


def test_a_run_that_disagrees_is_named_and_the_fit_used():
    """Four runs agree; a fifth was made with 4x the compressibility (its changes 4x smaller): the
    four are fitted as if it were not there (one gain for all must not follow it), it is named."""
    runs = _warm_runs((40.0, 40.0, 8.0), 1e-9, "closed", 0.0, seeds=(0, 1, 2, 3, 4))
    runs[4] = dataclasses.replace(_warm_runs((40.0, 40.0, 8.0), 4e-9, "closed", 0.0, seeds=(4,))[0], name="odd")
    fit = calibration.fit(runs)
    assert fit.used and all(fit.run_errors[f"run{i}"]["pressure_error"] < 1e-3 for i in range(4))
    assert any(w.startswith("runs disagree: run odd:") for w in fit.warnings), fit.warnings
    assert not any("run run0" in w for w in fit.warnings)


def _prior_made(seed, truth, t_inj, n_reports=8):
    res = _reservoir(seed)
    made = dataclasses.replace(res, injection_gap=t_inj - np.asarray(res.temperature0), **truth)
    theta, pressure = physics_priors.prior_fields(made, n_reports)
    active = res.active
    return res, pressure[:, active], (theta * made.injection_gap)[:, active]


def test_thermal_constants_are_recovered_from_prior_made_changes():
    """Temperature changes of the thermal prior with rock heat 3.1e6 J/(m^3 K), no outside
    exchange and water injected 4 K colder than the field scalars say: all three come back."""
    truth = dict(cell_size=(40.0, 40.0, 8.0), compressibility=1e-9, boundary="closed", boundary_multiplier=0.0,
                 rock_heat_per_volume=3.1e6, outside_heat_exchange=False)
    runs = []
    for seed in (0, 1, 2):
        res, dp, dT = _prior_made(seed, truth, 320.0)
        runs.append(calibration.Run(res, dp, (40.0, 40.0, 8.0), dT, 324.0, f"run{seed}"))
    fit = calibration.fit(runs, calibration.Declared(boundary=("closed", 0.0), compressibility=1e-9))
    assert fit.used and fit.temperature_error < 0.02
    np.testing.assert_allclose(fit.rock_heat, 3.1e6, rtol=0.03)
    np.testing.assert_allclose(fit.injection_offset, -4.0, atol=0.3)
    assert fit.outside_heat_exchange is False
    assert set(fit.fitted) == {"RockHeatCapacityVolumetric", "InjectionTemperatureOffset", "outside_heat_exchange"}


def test_a_width_chosen_by_the_temperature_keeps_the_storage_the_pressure_needs():
    """A closed box, its rock heat capacity declared 1.5x the truth: the temperature changes move
    the cells' width away from the pressure's (the plume's reach goes with width^2 x heat); the
    other pressure constants are refitted there, so the box's storage (c_t x cell volume) stays the
    truth's and the pressure error stays small (at the pressure fit's c_t the width move was
    refused: the pressure got worse)."""
    truth = dict(cell_size=(60.0, 60.0, 4.0), compressibility=5e-10, boundary="closed", boundary_multiplier=0.0,
                 rock_heat_per_volume=2.3e6, outside_heat_exchange=False)
    runs = []
    for seed in (0, 1, 2):
        res, dp, dT = _prior_made(seed, truth, 320.0, n_reports=10)
        runs.append(calibration.Run(res, dp, None, dT, 320.0, f"run{seed}"))
    fit = calibration.fit(runs, calibration.Declared(rock_heat=3.5e6, outside_heat_exchange=False))
    assert fit.used and fit.cell_size[0] < 0.95 * 60.0, fit.warnings
    assert any(w.startswith("cells' width") for w in fit.warnings)
    storage = fit.compressibility * np.prod(fit.cell_size)
    assert storage == pytest.approx(5e-10 * 60.0 * 60.0 * 4.0, rel=0.02)
    assert fit.error < 0.01


def test_a_heat_capacity_beyond_its_physical_range_drops_the_thermal_constants_only():
    """A thermal constant on a bound of its search is not used; the pressure constants are (a
    failed thermal fit vetoed sound pressure constants on the development set)."""
    truth = {"cell_size": (40.0, 40.0, 8.0), "compressibility": 1e-9, "boundary": "closed", "boundary_multiplier": 0.0,
             "rock_heat_per_volume": 9e6, "outside_heat_exchange": False}
    runs = []
    for seed in (0, 1, 2):
        res, dp, dT = _prior_made(seed, truth, 320.0)
        runs.append(calibration.Run(res, dp, (40.0, 40.0, 8.0), dT, 320.0, f"run{seed}"))
    fit = calibration.fit(runs, calibration.Declared(boundary=("closed", 0.0), compressibility=1e-9,
                                                     outside_heat_exchange=False))
    assert any("bound" in w and "RockHeatCapacityVolumetric" in w for w in fit.warnings), fit.warnings
    assert fit.used and fit.rock_heat is None and fit.injection_offset is None and fit.outside_heat_exchange is None
    assert not set(calibration.THERMAL_FITTED) & set(fit.fitted) and fit.temperature_error is not None
    assert all(e["temperature_error"] is not None for e in fit.run_errors.values())
    desc = calibrate.apply_calibration(description.Description(), fit, 3)
    assert "RockHeatCapacityVolumetric" not in desc.quantities and "InjectionTemperatureOffset" not in desc.quantities


def test_apply_marks_what_was_fitted_and_survives_stats():
    fit = calibration.Fit((40.0, 40.0, 4.0), 2e-9, "pore_volume", 100.0, 0.2, rock_heat=2.9e6, injection_offset=-3.0,
                          outside_heat_exchange=False)
    declared = description.Description(quantities={"RockCompressibility": {"value": 1e-10, "unit": "1/Pa"}})
    desc = calibrate.apply_calibration(declared, fit, 3)
    assert desc.lateral_boundary == "pore_volume" and "RockCompressibility" not in desc.quantities
    assert set(desc.calibrated) == {"CellSizeX", "CellSizeY", "CellSizeZ", "TotalCompressibility", "BoundaryMultiplier",
                                    "lateral_boundary", "RockHeatCapacityVolumetric", "InjectionTemperatureOffset",
                                    "outside_heat_exchange"}
    again = description.Description.from_dict(json.loads(json.dumps(desc.to_dict())))  # stats.json round trip
    physics = description.resolve(again, np.zeros(26), np.ones(3), np.ones(3), np.ones(3), "run")
    assert physics.cell_size == (40.0, 40.0, 4.0) and physics.lateral_boundary == "pore_volume"
    assert physics.notes["CellSizeZ"].startswith("calibrated on 3 training runs")
    assert physics.notes["outside_heat_exchange"].endswith(": False") and physics.outside_heat_exchange is False
    scalars = np.zeros((3, schema.N_SCALARS))
    scalars[:, schema.SCALAR_NAMES.index("FieldWaterInjectionRate")] = 10.0
    scalars[:, schema.SCALAR_NAMES.index("FieldEnergyInjectionRate")] = 10.0 * 4200.0 * 50.0
    assert pack.injection_temperature(physics, scalars) == pytest.approx(273.15 + 50.0 - 3.0)
    cells = description.Description(quantities={q: {"value": 10.0, "unit": "m"} for q in description.CELL_SIZE_QUANTITIES},
                                    outside_heat_exchange=True)
    only_boundary = calibrate.apply_calibration(dataclasses.replace(cells, quantities={
        **cells.quantities, "TotalCompressibility": {"value": 1e-9, "unit": "1/Pa"},
        "InjectionTemperature": {"value": 320.0, "unit": "K"}, "RockHeatCapacityVolumetric": 2e6}), fit, 3)
    assert set(only_boundary.calibrated) == {"BoundaryMultiplier", "lateral_boundary"}
    assert only_boundary.quantities["CellSizeX"]["value"] == 10.0 and only_boundary.outside_heat_exchange is True


def _march_made_files(folder, n, truth):
    """Foreign-convention files (all cells active, one injector and one producer column) whose
    pressure and temperature are the priors' own at ``truth``."""
    paths = []
    for i in range(n):
        arrays = foreign_arrays(seed=i)
        shape = arrays["IsActive"].shape
        arrays["IsActive"] = np.ones(shape, np.float32)
        inj = np.zeros(shape, np.float32)
        for (y, x), total in (((2 + i % 2, 2), 2.0), ((shape[1] - 3, shape[2] - 3 - i % 3), -1.5)):
            kh = arrays["PermX"][:, y, x].astype(np.float64)  # split as a simulator's well would, warm
            inj[:, y, x] = total * kh / kh.sum()
        arrays["InjRate"], arrays["IsWell"] = inj, (inj != 0).astype(np.float32)
        arrays["FieldWaterInjectionRate"] = np.full(arrays["FieldWaterInjectionRate"].shape, 2.0)
        arrays["FieldEnergyInjectionRate"] = 2.0 * 2.3e5 * (1.0 + 0.002 * i) + 0.0 * arrays["FieldWaterInjectionRate"]
        mask = arrays["IsActive"] > 0.5
        perm = tuple(arrays[k].astype(np.float64) * description.PERMEABILITY_UNITS["mD"] for k in ("PermX", "PermY", "PermZ"))
        t_inj = physics_priors.injection_temperature(np.stack([arrays[k] for k in schema.SCALAR_NAMES], axis=1)) - 3.0
        t0 = arrays["Temperature0"].astype(np.float64)
        res = physics_priors.Reservoir(mask, perm, arrays["Porosity"], t0, inj, injection_gap=t_inj - t0, **truth)
        theta, dp = physics_priors.prior_fields(res, arrays["Pressure"].shape[0] + 1)
        arrays["Pressure"] = (arrays["Pressure0"] + dp[1:]).astype(np.float32)
        arrays["Temperature"] = (t0 + theta[1:] * (t_inj - t0)).astype(np.float32)
        paths.append(write_raw_sim(folder / f"v2.4_{i:04d}.h5", arrays))
    return paths


def test_prep_stores_the_report_and_a_raw_rollout_derives_the_same_priors(tmp_path, capsys):
    truth = dict(cell_size=(50.0, 50.0, 6.0), compressibility=8e-10, boundary="pore_volume", boundary_multiplier=50.0,
                 rock_heat_per_volume=2.6e6, outside_heat_exchange=True)
    _march_made_files(tmp_path / "raw", 4, truth)
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4"], capsys)
    assert rc == 0 and "physics priors: yes" in out.out and "CellSizeX: calibrated on 3 training runs" in out.out
    stats = Stats.load(tmp_path / "p")
    report = stats["calibration"]
    assert report["used"] is True and set(report["runs"]) == {f"v2.4_{i:04d}.h5" for i in (1, 2, 3)}
    assert all(r["pressure_error"] < 0.05 for r in report["runs"].values())
    np.testing.assert_allclose(report["fitted"]["CellSizeZ"]["value"], 6.0, rtol=0.05)
    assert "CellSizeZ" in stats["description"]["calibrated"] and "InjectionTemperatureOffset" in stats["description"]["calibrated"]
    assert stats["priors"] is True and "lateral_boundary" in stats["description"]["calibrated"]
    # the test run (not used to fit) gets priors from the stored, calibrated description
    desc = description.Description.from_dict(stats["description"])
    mem = pack.prepare_arrays(tmp_path / "raw" / "v2.4_0000.h5", desc=desc)
    with h5py.File(tmp_path / "p" / "test" / ("v2.4_0000" + schema.PREPPED_SUFFIX)) as f:
        np.testing.assert_array_equal(mem["priors"], f[schema.PREPPED_PRIORS][()])
    assert np.abs(mem["priors"].astype(np.float32)).max() > 0


def test_prep_on_two_training_runs_says_why_there_are_no_priors(tmp_path, capsys):
    for i in range(3):
        write_raw_sim(tmp_path / "raw" / f"v2.4_{i:04d}.h5", foreign_arrays(seed=i))
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4"], capsys)
    assert rc == 0 and "calibration: fitted on 2 distinct runs (fewer than 3): not used" in out.err
    stats = Stats.load(tmp_path / "p")
    assert stats["priors"] is False and stats["calibration"]["used"] is False
    assert "calibrated" not in stats["description"]


@pytest.mark.parametrize("flag", [["--no_calibration"], []])
def test_declared_description_is_never_recalibrated(tmp_path, capsys, flag):
    from test_foreign import DESCRIPTION, write_foreign_dir

    write_foreign_dir(tmp_path / "raw", n=3, description=DESCRIPTION)
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4", *flag], capsys)
    assert rc == 0 and "calibrated" not in out.out
    stats = Stats.load(tmp_path / "p")
    assert "calibrated" not in stats["description"] and stats["calibration"] is None


def test_grids_above_the_limit_are_fitted_on_blocks(tmp_path, monkeypatch, capsys):
    """Above MAX_CELLS active cells a run is fitted on blocks (said, and in the report); blocks
    that still leave too many cells are said and leave the dataset without priors."""
    paths = [str(write_raw_sim(tmp_path / f"v2.4_{i:04d}.h5", foreign_arrays(seed=i))) for i in range(4)]
    n_active = calibrate._calibration_run(paths[1], description.Description(), None)[0].true_change.shape[1]
    monkeypatch.setattr(calibration, "MAX_CELLS", n_active // 3)
    desc, report = calibrate.calibrate_description(description.Description(), paths[1:], progress=False)
    blocks = report["blocks"]
    assert np.prod(blocks) >= 2 and "calibration: fitting on blocks of" in capsys.readouterr().err
    # the reported sizes are the cells', not the blocks' (this tiny grid's fit is not used, but said)
    block_fit = calibration.fit([reduced.upscaled_run(calibrate._calibration_run(p, description.Description(), None)[0],
                                                      blocks) for p in paths[1:]])
    assert report["fitted"]["CellSizeZ"]["value"] == pytest.approx(block_fit.cell_size[2] / blocks[0], rel=1e-3)  # rounded
    assert report["fitted"]["CellSizeX"]["value"] == pytest.approx(block_fit.cell_size[0] / blocks[2], rel=1e-3)
    desc, report = calibrate.calibrate_description(description.Description(), paths[1:], progress=False, blocks=(1, 1, 1))
    assert not desc.calibrated and desc.lateral_boundary is None and report["used"] is False
    assert f"calibration: skipped, more than {n_active // 3} active blocks" in capsys.readouterr().err


def test_calibration_warnings_are_repeated_where_the_stats_are_used(small_prepped, tmp_path, capsys):
    """What prep's calibration found doubtful (stats.json "calibration") is said again by every stage
    that uses those stats: here training and a rollout's loading of the checkpoint."""
    import shutil

    from voxel_ode.model import checkpoint
    from voxel_ode.training.train import train

    root = tmp_path / "p"
    shutil.copytree(small_prepped, root)
    data = json.loads((root / schema.STATS_FILE).read_text())
    data["calibration"] = {"warnings": ["run v2.4_0002.h5 explained poorly (error 0.91)"], "used": True}
    (root / schema.STATS_FILE).write_text(json.dumps(data))
    assert Stats.load(root).calibration_warnings == ["run v2.4_0002.h5 explained poorly (error 0.91)"]
    train(prepped_root=str(root), save_dir=str(tmp_path / "ck"), max_steps=1, base_channels=4, depth=1,
          receptive_field_radius=1, batch_size=1, sample_mode="full", quiet=True, num_threads=1, amp="none")
    assert "note: calibration: run v2.4_0002.h5 explained poorly (error 0.91)" in capsys.readouterr().out
    checkpoint.load_for_inference(tmp_path / "ck" / "last.pt")
    assert "note: calibration: run v2.4_0002.h5 explained poorly" in capsys.readouterr().out


def _layered_runs(grid, cell, ct, kind, mult, seeds=(0, 1, 2), n_reports=6):
    """Warm-march changes on layered rock (permeability and porosity by layer, 0.15 decades of
    noise in each cell): the geology block upscaling is meant for."""
    runs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        nz, ny, nx = grid
        inj = np.zeros(grid)
        inj[:, 3 + seed % 3, 3], inj[:, ny - 4, nx - 4 - seed % 2] = 2.0, -1.5
        k = 10 ** rng.uniform(-14, -12.5, (nz, 1, 1)) * 10 ** rng.normal(0, 0.15, grid)
        res = physics_priors.Reservoir(np.ones(grid, bool), (k, k, k * 0.1),
                                       rng.uniform(0.1, 0.25, (nz, 1, 1)) * np.ones(grid),
                                       350.0 + 0.1 * np.arange(nz)[:, None, None] * np.ones(grid), inj, (1.0, 1.0, 1.0))
        truth = dataclasses.replace(res, cell_size=cell, compressibility=ct, boundary=kind, boundary_multiplier=mult)
        runs.append(calibration.Run(res, physics_priors.warm_pressure_change(truth, n_reports), name=f"run{seed}"))
    return runs


def test_upscaled_runs_keep_pore_volume_rates_and_declared_sizes():
    run = _layered_runs((6, 8, 10), (40.0, 40.0, 8.0), 1e-9, "closed", 0.0, seeds=(0,))[0]
    run = dataclasses.replace(run, cell_size=(40.0, 40.0, 8.0))
    up = reduced.upscaled_run(run, (2, 2, 2))
    assert up.reservoir.active.shape == (3, 4, 5) and up.cell_size == (80.0, 80.0, 16.0)
    assert np.prod((2, 2, 2)) * up.reservoir.porosity.sum() == pytest.approx(run.reservoir.porosity.sum())
    assert up.reservoir.inj_rate.sum() == pytest.approx(run.reservoir.inj_rate.sum())
    assert np.abs(up.reservoir.inj_rate).sum() == pytest.approx(np.abs(run.reservoir.inj_rate).sum())
    uniform = dataclasses.replace(run, true_change=np.full_like(run.true_change, 3.0))
    np.testing.assert_allclose(reduced.upscaled_run(uniform, (2, 2, 2)).true_change, 3.0)
    assert reduced.upscaled_run(run, (1, 1, 1)) is run


def test_a_fit_on_blocks_gives_the_cells_constants():
    """Fitted on 2 x 2 x 2 blocks and mapped back to cells (sizes / 2, the side cells' extra pore
    volume as one side cell holds it), the constants reproduce the cells' own changes within
    0.1; the block multiplier taken as the cells' would not."""
    runs = _layered_runs((12, 16, 16), (40.0, 40.0, 8.0), 1e-9, "pore_volume", 300.0)
    on_blocks = calibration.fit([reduced.upscaled_run(r, (2, 2, 2)) for r in runs])
    fit = calibrate._per_cell(on_blocks, (2, 2, 2))
    assert fit.boundary == "pore_volume" and fit.used
    np.testing.assert_allclose(fit.cell_size, (40.0, 40.0, 8.0), rtol=0.4)
    assert fit.fitted["CellSizeX"]["value"] == pytest.approx(on_blocks.cell_size[0] / 2)
    for run in runs:
        error = np.linalg.norm(_made_by_fit(run, fit) - run.true_change) / np.linalg.norm(run.true_change)
        assert error < 0.1
    unmapped = dataclasses.replace(fit, multiplier=on_blocks.multiplier)
    assert max(np.linalg.norm(_made_by_fit(r, unmapped) - r.true_change) / np.linalg.norm(r.true_change)
               for r in runs) > 0.15


def test_runs_whose_wells_fell_short_of_their_rates_are_not_calibrated_on(tmp_path):
    """A run whose field delivered less than InjRate asks (a well held at a bottomhole limit) is not
    a calibration run where enough others held their rates; rates in another unit than InjRate's
    (every run alike) exclude nothing; too few runs that held: all are used."""
    from fixtures import make_raw_arrays

    def runs(factors, unit=1.0):
        paths = []
        for i, factor in enumerate(factors):
            a = make_raw_arrays(seed=i)
            inj = np.where(a["IsActive"] > 0.5, a["InjRate"], 0.0)  # inactive cells take nothing
            a["InjRate"] = np.where(a["IsActive"] > 0.5, a["InjRate"], 99.0).astype(np.float32)
            a["FieldWaterInjectionRate"] = np.full(a["FieldWaterInjectionRate"].shape, unit * inj[inj > 0].sum())
            a["FieldWaterProductionRate"] = np.full(a["FieldWaterProductionRate"].shape, unit * inj[inj < 0].sum())
            a["FieldWaterProductionRate"][3:] *= factor  # held back from year 3 on
            paths.append(str(write_raw_sim(tmp_path / f"u{unit}" / f"v2.4_{len(factors)}{i:03d}.h5", a)))
        return paths

    paths = runs([1.0, 0.97, 1.0, 1.0, 0.9995, 1.0])
    assert calibrate.delivered_share(paths[1]) == pytest.approx(0.97)
    picks, short = calibrate._picks(paths)
    assert short == [paths[1]] and picks == [p for p in paths if p != paths[1]]
    assert calibrate._picks(runs([1.0] * 4, unit=3.6)) == (runs([1.0] * 4, unit=3.6), [])
    few = runs([1.0, 0.9, 0.9, 1.0])
    assert calibrate._picks(few) == (few, [])


def test_contraction_march_scales_with_the_width_squared():
    """The unit-cell march's contraction part x h^2 plus its rates' part / (a h) is the priors' march
    driven by the same temperatures: one layer (no weight), rates too small for the cold water's
    viscosity to matter, side cells with 50x their pore volume (their water contracts too)."""
    grid = (1, 10, 12)
    res = _reservoir(0, grid)
    res = dataclasses.replace(res, inj_rate=np.asarray(res.inj_rate) * 1e-6)
    rng = np.random.default_rng(3)
    n = 6
    cooling = -np.cumsum(rng.uniform(0.0, 4.0, (n, res.active.sum())), axis=0)
    cooling[0] = 0.0
    h, dz, ct = 40.0, 8.0, 1e-9
    truth = dataclasses.replace(res, cell_size=(h, h, dz), compressibility=ct, boundary="pore_volume",
                                boundary_multiplier=50.0)
    driven = physics_priors.driven_pressure_change(truth, np.asarray(res.temperature0)[res.active] + cooling, n)
    unit = reduced.UnitMarch(res)
    a = dz / h
    rates, contraction = unit.marches(a, ct * h * h, "pore_volume", 50.0, n, unit.contraction(cooling))
    model = rates / (a * h) + h * h * contraction
    assert np.abs(h * h * contraction).max() > 100 * np.abs(rates / (a * h)).max()  # the contraction's march
    np.testing.assert_allclose(model, driven, rtol=0, atol=1e-3 * np.abs(driven).max())


def _balanced_reservoir(seed, grid=GRID):
    res = _reservoir(seed, grid)
    q = np.asarray(res.inj_rate, np.float64)
    return dataclasses.replace(res, inj_rate=np.where(q < 0, -q[q > 0].sum() / (q < 0).sum(), q))


def test_a_closed_box_whose_change_is_its_water_contracting_is_recovered():
    """Balanced mass rates into a closed box of water 40 K colder than the rock: the pressure falls
    as the cooled water shrinks, which the warm march (what calibration fitted alone before) does
    not explain at all; fitted with the runs' own temperatures, the constants come back (the width by
    the temperature changes at the declared rock heat capacity: with the water's temperatures given,
    the pressure leaves it open, and undeclared, the heat capacity trades off against it)."""
    truth = dict(cell_size=(40.0, 40.0, 8.0), compressibility=6e-10, boundary="closed", boundary_multiplier=0.0,
                 rock_heat_per_volume=physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME, outside_heat_exchange=False)
    runs = []
    for seed in (0, 1, 2):
        res = _balanced_reservoir(seed)
        made = dataclasses.replace(res, injection_gap=310.0 - np.asarray(res.temperature0), **truth)
        theta, pressure = physics_priors.prior_fields(made, 8)
        runs.append(calibration.Run(res, pressure[:, res.active], None, (theta * made.injection_gap)[:, res.active],
                                    310.0, f"run{seed}"))
        warm = physics_priors.warm_pressure_change(made, 8)
        assert np.linalg.norm(warm - runs[-1].true_change) > 0.8 * np.linalg.norm(runs[-1].true_change)
    fit = calibration.fit(runs, calibration.Declared(rock_heat=physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME))
    assert fit.used and fit.error < 0.1 and fit.temperature_error < 0.05, fit.warnings
    np.testing.assert_allclose(fit.cell_size, (40.0, 40.0, 8.0), rtol=0.1)
    np.testing.assert_allclose(fit.compressibility, 6e-10, rtol=0.1)
    assert fit.boundary == "closed" or fit.multiplier < 3.0


def test_the_temperature_changes_choose_the_width_the_pressure_leaves_open():
    """One layer at rates into closed sides: the pressure barely tells the cells' width (the lateral
    transmissibility k dz does not depend on it); the plume's reach in cells does. From twice the
    true width, ``thermal_fit.width`` walks back to it at the generic rock heat capacity."""
    grid = (1, 10, 12)
    truth = dict(cell_size=(40.0, 40.0, 8.0), compressibility=1e-9, boundary="closed", boundary_multiplier=0.0,
                 rock_heat_per_volume=physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME, outside_heat_exchange=False)
    runs = []
    for seed in (0, 1):
        res = _balanced_reservoir(seed, grid)
        made = dataclasses.replace(res, injection_gap=320.0 - np.asarray(res.temperature0), **truth)
        theta, pressure = physics_priors.prior_fields(made, 8)
        runs.append(calibration.Run(res, pressure[:, res.active], None, (theta * made.injection_gap)[:, res.active],
                                    320.0, f"run{seed}"))
    wide = thermal_fit.Pressure((80.0, 80.0, 8.0), 1e-9, "closed", 0.0)
    found, thermal, spread = thermal_fit.width(runs, wide, calibration.Declared(), False, calibration.CELL_RANGE)
    np.testing.assert_allclose(found.cell_size, (40.0, 40.0, 8.0), rtol=0.05)
    assert thermal.error < 0.05 and 0 < spread < 0.2


def test_side_blocks_contract_with_their_side_cells_water():
    """On lateral blocks a side block's aquifer (side cells with 1000x their pore volume) is its side
    cells' water, which barely cools; the block's mean temperature, dragged down by a plume in its
    inner column, would shrink the whole aquifer. Upscaled runs carry the side cells' own change."""
    res = _reservoir(0)
    inj = np.zeros(GRID)
    inj[:, 4, 1], inj[:, 6, 9] = 2.0, -2.0  # the injector in a side block's inner column
    res = dataclasses.replace(res, inj_rate=inj)
    truth = dict(cell_size=(40.0, 40.0, 8.0), compressibility=6e-10, boundary="pore_volume", boundary_multiplier=1000.0,
                 rock_heat_per_volume=physics_priors.GENERIC_ROCK_HEAT_PER_VOLUME, outside_heat_exchange=False)
    made = dataclasses.replace(res, injection_gap=310.0 - np.asarray(res.temperature0), **truth)
    theta, pressure = physics_priors.prior_fields(made, 8)
    run = calibration.Run(res, pressure[:, res.active], None, (theta * made.injection_gap)[:, res.active], 310.0)
    blocks = reduced.upscaled_run(run, (1, 2, 2))
    on_blocks = thermal_fit.Pressure((80.0, 80.0, 8.0), 6e-10, "pore_volume", 1.0 + 999.0 / 2)

    def error(r):
        driven = thermal_fit.driven_pressures([r], on_blocks, calibration.Declared())[0]
        return np.linalg.norm(driven[1:] - r.true_change[1:]) / np.linalg.norm(r.true_change[1:])

    # 0.33 (what upscaling these random layers costs) against 6.8
    assert error(blocks) < 0.5 < 2.0 < error(dataclasses.replace(blocks, side_temperature_change=None))


def test_a_producers_limit_the_runs_fell_short_at_is_recovered(tmp_path, monkeypatch):
    """Runs at four depths, their field rates made by the priors' own wells with the producers
    held at one minimum bottomhole pressure (in another unit than InjRate's): the shallow runs fell
    short, the deep ones held; the limit comes back as a pressure (not one over each well's initial
    pressure, which differs between the runs), and injectors, which held, get none."""
    from fixtures import DESCRIPTION, make_raw_arrays

    (tmp_path / "d.json").write_text(json.dumps(DESCRIPTION))
    desc = description.load(tmp_path / "d.json")
    paths, runs = [], []
    for i in range(4):
        a = make_raw_arrays(seed=i)
        a["InjRate"] *= np.float32(0.01)  # a few bar a year in this small closed box:
        a["InjRate"][:, 1, 1] = np.float32(0.005)  # more produced than injected, so the pressure falls
        for name in ("Pressure0", "Pressure"):
            a[name] = a[name] + np.float32(2e6 * i)
        paths.append(write_raw_sim(tmp_path / f"v2.4_{i:04d}.h5", a))
        runs.append(limits._load(paths[-1], desc, None, np.ones((6, 2)), np.ones(2)))
    name = "ProducerMinBottomholePressure"
    lowest = []
    for run in runs:
        res = pack.reservoir(run.statics, run.physics, run.gap)
        pressure = np.zeros((run.n_reports,) + res.active.shape)
        pressure[:, res.active] = physics_priors.driven_pressure_change(res, run.temperature, run.n_reports)
        producer = np.nonzero((np.asarray(run.statics["InjRate"]) < 0) & np.asarray(res.active))
        top = tuple(c[np.argmin(producer[0])] for c in producer)
        lowest.append(float(run.statics["Pressure0"][top] + pressure[:, top[0], top[1], top[2]].min()))
    truth = 0.5 * (lowest[0] + lowest[1])  # below the shallowest run's lowest pressure, above the deeper ones'
    for path, run in zip(paths, runs):
        _write_outputs(path, run, {name: ("absolute", truth)}, unit=3.6)
    shares = {str(p): calibrate.delivered_shares(p) for p in paths}
    assert shares[str(paths[0])][:, 1].min() < 3.6 * 0.99 and shares[str(paths[3])][:, 1].min() > 3.6 * 0.999
    fitted, report, warnings = limits.calibrate_limits(desc, [str(p) for p in paths], shares, progress=False)
    assert set(report) == {name} and report[name]["form"] == "absolute", report
    np.testing.assert_allclose(report[name]["value"], truth, rtol=0.01)
    assert report[name]["share_error"] < 0.01 and fitted.quantities[name]["value"] == report[name]["value"]
    assert name in fitted.calibrated and name not in desc.quantities and not warnings
    # prep's calibration runs it after a used fit of the constants (here: the declared ones) and reports it
    bare = dataclasses.replace(desc, lateral_boundary=None)
    monkeypatch.setattr(calibrate, "_calibrate_constants", lambda d, *a: (
        desc, {"runs": {}, "fitted": {}, "warnings": [], "used": True}))
    through, whole = calibrate.calibrate_description(bare, [str(p) for p in paths], progress=False)
    assert whole["limits"] == report and whole["used"] and through.quantities[name] == fitted.quantities[name]
    # a description that declares cells and boundary is not calibrated, its limits neither
    assert calibrate.calibrate_description(desc, [str(p) for p in paths], progress=False) == (desc, None)


def test_both_kinds_of_well_held_are_fitted_together(tmp_path):
    """Deep runs' injectors held at a maximum early, shallow runs' producers at a minimum late (a
    pressure each): both limits come back within 1 %, each from the runs held at it."""
    from fixtures import DESCRIPTION, make_raw_arrays

    (tmp_path / "d.json").write_text(json.dumps(DESCRIPTION))
    desc = description.load(tmp_path / "d.json")
    paths, runs, highest, lowest = [], [], [], []
    for i in range(4):
        a = make_raw_arrays(seed=i)
        a["InjRate"] *= np.float32(0.01)
        a["InjRate"][:, 1, 1] = np.float32(0.005)
        for name in ("Pressure0", "Pressure"):
            a[name] = a[name] + np.float32(2e6 * i)
        paths.append(write_raw_sim(tmp_path / f"v2.4_{i:04d}.h5", a))
        runs.append(limits._load(paths[-1], desc, None, np.ones((6, 2)), np.ones(2)))
        res = pack.reservoir(runs[-1].statics, runs[-1].physics, runs[-1].gap)
        bhp, _, kinds = physics_priors.held_well_pressures(res, runs[-1].temperature, 6, np.ones((5, 2)))
        highest.append(bhp[:, kinds > 0].max())
        lowest.append(bhp[:, kinds < 0].min())
    truth = {"InjectorMaxBottomholePressure": ("absolute", 0.5 * (highest[2] + highest[3])),
             "ProducerMinBottomholePressure": ("absolute", 0.5 * (lowest[0] + lowest[1]))}
    for path, run in zip(paths, runs):
        _write_outputs(path, run, truth)
    shares = {str(p): calibrate.delivered_shares(p) for p in paths}
    assert shares[str(paths[3])][:, 0].min() < 0.99 and shares[str(paths[0])][:, 1].min() < 0.99
    _, report, warnings = limits.calibrate_limits(desc, [str(p) for p in paths], shares, progress=False)
    assert set(report) == set(truth) and not warnings, (report, warnings)
    for name, (form, value) in truth.items():
        assert report[name]["form"] == form
        np.testing.assert_allclose(report[name]["value"], value, rtol=0.01)
    assert report["InjectorMaxBottomholePressure"]["runs"] == [paths[3].name]
    assert report["ProducerMinBottomholePressure"]["runs"] == [paths[0].name]


def _write_outputs(path, run, truth, unit=1.0):
    """The file's field water rates (its wells' rates, InjRate, x the priors' delivered shares, in
    ``unit``) and pressures as the priors' wells make them with the limits ``truth``."""
    shares, change = limits._marched(run, truth)
    q = np.where(np.asarray(run.statics["IsActive"]) > 0.5, np.asarray(run.statics["InjRate"], np.float64), 0.0)
    with h5py.File(path, "r+") as f:
        for column, scalar in enumerate(("FieldWaterInjectionRate", "FieldWaterProductionRate")):
            target = q[q > 0].sum() if column == 0 else -q[q < 0].sum()
            f[schema.raw_path(scalar)][...] = unit * target * np.concatenate([[1.0], shares[:, column]])
        pressure = f[schema.raw_path("Pressure")][...]
        pressure[:, np.asarray(run.statics["IsActive"]) > 0.5] = np.asarray(run.statics["Pressure0"])[
            np.asarray(run.statics["IsActive"]) > 0.5] + change
        f[schema.raw_path("Pressure")][...] = pressure
