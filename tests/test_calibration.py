"""Calibration (calibration.py): the priors' undeclared constants fitted on training runs."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from fixtures import write_raw_sim
from test_foreign import foreign_arrays, run_cli
from voxel_ode import schema
from voxel_ode.physics import calibration
from voxel_ode.data import description
from voxel_ode.physics import priors as physics_priors
from voxel_ode.data.stats import Stats
from voxel_ode.data import calibrate, pack

GRID = (8, 10, 12)


def _reservoir(seed, grid=GRID):
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    z = np.arange(nz)[:, None, None] * np.ones(grid)
    inj = np.zeros(grid)
    inj[:, 2, 2], inj[:, ny - 3, nx - 3] = 2.0, -1.5  # net injection: the boundary matters
    return physics_priors.Reservoir(
        np.ones(grid, bool), tuple(10 ** rng.uniform(-14, -12.5, grid) for _ in range(3)),
        rng.uniform(0.05, 0.3, grid), 350.0 + 0.1 * z, inj, (1.0, 1.0, 1.0))


def _runs_made_by(cell_size, compressibility, boundary, multiplier, n_reports=6, grid=GRID):
    runs = []
    for seed in (0, 1):
        res = _reservoir(seed, grid)
        truth = dataclasses.replace(res, cell_size=cell_size, compressibility=compressibility, boundary=boundary,
                                    boundary_multiplier=multiplier)
        runs.append(calibration.Run(res, physics_priors.warm_pressure_change(truth, n_reports)))
    return runs


def test_fit_recovers_the_constants_that_made_the_changes():
    """Changes made by the warm march with a candidate's aspect, c_t h^2 and boundary at another
    cell size: the fit finds them, and the cell size from the gain."""
    h, aspect, spread = 37.0, 0.1, 1e-5
    runs = _runs_made_by((h, h, aspect * h), spread / h ** 2, "pore_volume", 1000.0)
    fit = calibration.fit(runs)
    assert fit.error < 1e-6
    assert (fit.boundary, fit.multiplier) == ("pore_volume", 1000.0)
    np.testing.assert_allclose(fit.cell_size, (h, h, aspect * h), rtol=1e-6)
    np.testing.assert_allclose(fit.compressibility, spread / h ** 2, rtol=1e-6)


def test_declared_values_are_held_and_noise_fits_nothing():
    runs = _runs_made_by((20.0, 20.0, 2.0), 1e-6 / 20.0 ** 2, "closed", 0.0)
    held = calibration.fit(runs, boundary=("pore_volume", 10.0))
    assert (held.boundary, held.multiplier) == ("pore_volume", 10.0) and held.error < 0.8
    assert calibration.fit(runs).boundary == "closed"
    cells = [dataclasses.replace(r, cell_size=(20.0, 20.0, 2.0)) for r in runs]  # declared: only c_t, boundary
    fit = calibration.fit(cells)
    assert fit.cell_size == (20.0, 20.0, 2.0) and fit.boundary == "closed" and fit.error < 1e-6
    np.testing.assert_allclose(fit.compressibility, 1e-6 / 20.0 ** 2, rtol=1e-9)
    rng = np.random.default_rng(0)
    noise = [dataclasses.replace(r, true_change=rng.normal(size=r.true_change.shape)) for r in runs]
    assert calibration.fit(noise) is None  # no candidate explains it: no priors
    still = [dataclasses.replace(r, true_change=np.zeros_like(r.true_change)) for r in runs]
    assert calibration.fit(still) is None


def test_apply_marks_what_was_fitted_and_survives_stats():
    fit = calibration.Fit((40.0, 40.0, 4.0), 2e-9, "pore_volume", 100.0, 0.2)
    declared = description.Description(quantities={"RockCompressibility": {"value": 1e-10, "unit": "1/Pa"}})
    desc = calibrate.apply_calibration(declared, fit, 2)
    assert desc.lateral_boundary == "pore_volume" and "RockCompressibility" not in desc.quantities
    assert set(desc.calibrated) == {"CellSizeX", "CellSizeY", "CellSizeZ", "TotalCompressibility",
                                    "BoundaryMultiplier", "lateral_boundary"}
    again = description.Description.from_dict(json.loads(json.dumps(desc.to_dict())))  # stats.json round trip
    physics = description.resolve(again, np.zeros(26), np.ones(3), np.ones(3), np.ones(3), "run")
    assert physics.cell_size == (40.0, 40.0, 4.0) and physics.lateral_boundary == "pore_volume"
    assert physics.notes["CellSizeZ"].startswith("calibrated on 2 training runs")
    assert physics.notes["lateral_boundary"].endswith(": pore_volume")
    cells = description.Description(quantities={q: {"value": 10.0, "unit": "m"} for q in description.CELL_SIZE_QUANTITIES})
    only_boundary = calibrate.apply_calibration(dataclasses.replace(cells, quantities={
        **cells.quantities, "TotalCompressibility": {"value": 1e-9, "unit": "1/Pa"}}), fit, 2)
    assert set(only_boundary.calibrated) == {"BoundaryMultiplier", "lateral_boundary"}
    assert only_boundary.quantities["CellSizeX"]["value"] == 10.0


def test_prep_calibrates_and_a_raw_rollout_derives_the_same_priors(tmp_path, capsys):
    for i in range(3):
        write_raw_sim(tmp_path / "raw" / f"v2.4_{i:04d}.h5", foreign_arrays(seed=i))
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4"], capsys)
    assert rc == 0 and "physics priors: yes" in out.out and "CellSizeX: calibrated on 2 training runs" in out.out
    stats = Stats.load(tmp_path / "p")
    assert stats["priors"] is True and "lateral_boundary" in stats["description"]["calibrated"]
    # the test run (not used to fit) gets priors from the stored, calibrated description
    desc = description.Description.from_dict(stats["description"])
    mem = pack.prepare_arrays(tmp_path / "raw" / "v2.4_0000.h5", desc=desc)
    with h5py.File(tmp_path / "p" / "test" / ("v2.4_0000" + schema.PREPPED_SUFFIX)) as f:
        np.testing.assert_array_equal(mem["priors"], f[schema.PREPPED_PRIORS][()])
    assert np.abs(mem["priors"].astype(np.float32)).max() > 0


@pytest.mark.parametrize("flag", [["--no_calibration"], []])
def test_declared_description_is_never_recalibrated(tmp_path, capsys, flag):
    from test_foreign import DESCRIPTION, write_foreign_dir

    write_foreign_dir(tmp_path / "raw", n=3, description=DESCRIPTION)
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4", *flag], capsys)
    assert rc == 0 and "calibrated" not in out.out
    assert "calibrated" not in Stats.load(tmp_path / "p")["description"]



def test_grids_too_large_to_fit_are_said_and_left_without_priors(tmp_path, monkeypatch, capsys):
    paths = [write_raw_sim(tmp_path / f"v2.4_{i:04d}.h5", foreign_arrays(seed=i)) for i in range(3)]
    monkeypatch.setattr(calibration, "MAX_CELLS", 10)
    desc = calibrate.calibrate_description(description.Description(), [str(p) for p in paths[1:]], progress=False)
    assert not desc.calibrated and desc.lateral_boundary is None
    assert "calibration: skipped, more than 10 active cells" in capsys.readouterr().err


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
