"""Simulator output voxel-ode did not write: other units, the first report at the end of year 1,
26 params that mean nothing to us, thin dipping layers, isolated cells, fill values.

The property: prep, train and rollout either work or stop with one line naming the file,
never a traceback; what was inferred is said, and nothing is read from ParamsScalar."""

from __future__ import annotations

import dataclasses
import json
import re

import h5py
import numpy as np
import pytest
import torch

from fixtures import write_raw_sim
from voxel_ode import cli, schema
from voxel_ode.data.description import infer_first_report, infer_permeability_unit

GRID = (10, 8, 9)
N_REPORTS = 5  # Output/*[r] = end of year r + 1
MD = 9.869233e-16
FILL = -999.0
# what the user of these files declares in the "full description" variant (no ParamsScalar entry)
DESCRIPTION = {"permeability_unit": "mD", "first_report": "year1", "lateral_boundary": "pore_volume",
               "quantities": {"CellSizeX": 50, "CellSizeY": 50, "CellSizeZ": {"value": 16.4, "unit": "ft"},
                              "BoundaryMultiplier": 1000, "TotalCompressibility": {"value": 5e-5, "unit": "1/bar"}}}


def foreign_arrays(seed=0, unit="mD", injector=True, fill=False):
    """A thin dipping active layer (~15 % of the box) plus a few isolated active cells; the
    first report is the end of year 1; ParamsScalar is noise; permeability in ``unit``."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = GRID
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    top = 2 + 0.6 * x
    active = (z >= top) & (z < top + 1.6)
    active |= rng.random(GRID) < 0.01  # isolated cells
    p0 = (2e7 + 1e4 * 5.0 * z).astype(np.float32)
    t0 = (380.0 + 0.03 * 5.0 * z).astype(np.float32)
    perm_md = 10 ** rng.uniform(-1, 3, GRID)
    perm = perm_md if unit == "mD" else perm_md * MD
    inj = np.zeros(GRID, np.float32)
    col_i, col_p = (2, 2), (ny - 3, nx - 3)
    for (jy, ix), rate in ((col_i, 10.0 if injector else 0.0), (col_p, -8.0)):
        cells = np.flatnonzero(active[:, jy, ix])
        inj[cells, jy, ix] = rate / max(len(cells), 1)
    years = np.arange(1, N_REPORTS + 1, dtype=np.float32)[:, None, None, None]
    near = np.exp(-((y - 2) ** 2 + (x - 2) ** 2) / 8.0)[None]
    pressure = (p0[None] + 2e5 * np.sqrt(years) * near * active).astype(np.float32)
    temperature = (t0[None] - 10.0 * (years / N_REPORTS) * near * active).astype(np.float32)
    arrays = {
        "FaultId": (x > nx // 2).astype(np.float32), "IsActive": active.astype(np.float32),
        "IsWell": (inj != 0).astype(np.float32), "InjRate": inj,
        "PermX": perm.astype(np.float32), "PermY": perm.astype(np.float32), "PermZ": (0.1 * perm).astype(np.float32),
        "Porosity": rng.uniform(0.0, 0.3, GRID).astype(np.float32), "Pressure0": p0, "Temperature0": t0,
        "ParamsScalar": rng.normal(0, 50, schema.N_PARAMS).astype(np.float32),
        "Pressure": pressure, "Temperature": temperature,
    }
    rates = np.full(N_REPORTS, 10.0 if injector else 0.0)
    scalars = {"FieldEnergyInjectionRate": rates * 2.3e5, "FieldEnergyProductionRate": np.full(N_REPORTS, 8 * 4.4e5),
               "FieldWaterInjectionRate": rates, "FieldWaterProductionRate": np.full(N_REPORTS, 8.0)}
    scalars["FieldEnergyProductionTotal"] = np.cumsum(scalars["FieldEnergyProductionRate"]) * 3.156e7
    arrays.update({k: v.astype(np.float64) for k, v in scalars.items()})
    if fill:  # inactive cells hold a fill value in every grid
        for name in ("PermX", "PermY", "PermZ", "Porosity"):
            arrays[name][~active] = FILL
    return arrays


def write_foreign_dir(root, n=4, description=None, **kwargs):
    paths = [write_raw_sim(root / f"v2.4_{i:04d}.h5", foreign_arrays(seed=i, **kwargs)) for i in range(n)]
    if description is not None:
        (root / "description.json").write_text(json.dumps(description))
    return paths


def run_cli(argv, capsys):
    """cli.main never raises: 0, or 1 with exactly one line on stderr naming the problem."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert rc == 0 or (rc == 1 and len(errors) == 1), (rc, captured.err[-2000:])
    return rc, captured


def test_inference_of_units_and_time_origin():
    a = foreign_arrays()
    act = a["IsActive"] > 0
    assert infer_permeability_unit(a["PermX"][act]) == "mD"
    assert infer_permeability_unit(a["PermX"][act] * MD) == "m2"
    assert infer_first_report(a["Pressure0"][act], a["Pressure"][0][act]) == "year1"
    assert infer_first_report(a["Pressure0"][act], a["Pressure0"][act]) == "initial"


def test_prep_without_description_infers_says_so_and_starts_from_the_initial_state(tmp_path, capsys):
    write_foreign_dir(tmp_path / "raw", n=3)
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4", "--no_calibration"], capsys)
    assert rc == 0
    assert "inferred: mD" in out.out and "inferred: year1" in out.out and "physics priors: no" in out.out
    stats = json.loads((tmp_path / "p" / schema.STATS_FILE).read_text())
    assert stats["priors"] is False and stats["n_timesteps"] == N_REPORTS + 1
    raw = foreign_arrays(seed=1)
    with h5py.File(tmp_path / "p/train/v2.4_0001.prepped.h5") as f:
        grid = f[schema.PREPPED_OUTPUTS_GRID][()]
        static = f[schema.PREPPED_STATIC][()]
        assert f.attrs["first_report"] == "year1"
        total = f[schema.PREPPED_OUTPUTS_SCALAR][:, schema.SCALAR_NAMES.index("FieldEnergyProductionTotal")]
    np.testing.assert_array_equal(grid[0, 0], raw["Pressure0"])  # t = 0 is the initial state
    np.testing.assert_array_equal(grid[1:, 0], raw["Pressure"])  # then every report
    assert total[0] == 0.0 and total[1] == raw["FieldEnergyProductionTotal"][0]
    perm = static[schema.STATIC_NAMES.index("PermX")]
    active = static[schema.STATIC_NAMES.index("IsActive")] > 0
    np.testing.assert_allclose(perm[active], raw["PermX"][active] * MD, rtol=1e-6)  # stored in m^2


@pytest.mark.parametrize("variant", [dict(), dict(unit="m2", fill=True), dict(injector=False)])
@pytest.mark.parametrize("described", [False, True])
def test_prep_train_rollout_work_or_say_one_line(tmp_path, capsys, variant, described):
    desc = dict(DESCRIPTION, permeability_unit=None) if described else None
    files = write_foreign_dir(tmp_path / "raw", n=3, description=desc, **variant)
    fill = ["--fill_value", FILL] if variant.get("fill") else []
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p", "--n_test", "1",
                       "--patch_size", "8", "8", "8", "--stride", "4", "4", "4", *fill], capsys)
    assert rc == 0
    stats = json.loads((tmp_path / "p" / schema.STATS_FILE).read_text())
    calibrated = bool(stats["description"].get("calibrated"))
    assert stats["priors"] is (described or calibrated)  # undeclared constants: fitted, or no priors
    assert ("physics priors: yes" in out.out) is stats["priors"] and ("calibrated on" in out.out) is calibrated
    rc, _ = run_cli(["train", "--prepped_root", tmp_path / "p", "--save_dir", tmp_path / "ck", "--max_steps", "2",
                     "--batch_size", "2", "--base_channels", "4", "--depth", "1", "--receptive_field_radius", "1",
                     "--sample_mode", "full", "--eval_every", "0", "--num_threads", "1", "--quiet"], capsys)
    assert rc == 0
    config = torch.load(tmp_path / "ck/last.pt", weights_only=True)["model_config"]
    assert config["temperature_residual"] is (not described)  # T's only source without priors; fitted ones: help
    rc, out = run_cli(["rollout", "--raw_sim_path", files[0], "--ckpt_path", tmp_path / "ck/last.pt",
                       "--save_path", tmp_path / "pred.h5", "--no_progress", *fill], capsys)
    assert rc == 0
    with h5py.File(tmp_path / "pred.h5") as f:
        pred = f["predicted/outputs_grid"][()]
        assert pred.shape == (N_REPORTS + 1, 2) + GRID and np.isfinite(pred).all()
        assert json.loads(f.attrs["times_years"]) == list(range(N_REPORTS + 1))
        assert f.attrs["first_report"] == "year1"


@pytest.mark.parametrize("bad", ["nan_active", "non_binary_active", "huge_cell_size", "no_active"])
def test_bad_foreign_files_give_their_own_one_line_error(tmp_path, capsys, bad):
    desc = dict(DESCRIPTION)
    arrays = foreign_arrays()
    if bad == "nan_active":
        arrays["Porosity"][arrays["IsActive"] > 0] = np.nan
        expect = "Input/Porosity: NaN/Inf"
    elif bad == "non_binary_active":
        arrays["IsActive"][0, 0, 0] = 2.0
        expect = "Input/IsActive: 1 cells are neither 0 nor 1"
    elif bad == "huge_cell_size":
        desc = dict(DESCRIPTION, quantities={**DESCRIPTION["quantities"], "CellSizeX": 5e6})
        expect = "CellSizeX = 5e+06 m"
    else:
        arrays["IsActive"][:] = 0
        expect = "no active cell"
    write_raw_sim(tmp_path / "raw" / "v2.4_0000.h5", arrays)
    (tmp_path / "raw" / "description.json").write_text(json.dumps(desc))
    rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p"], capsys)
    assert rc == 1 and expect in out.err and "v2.4_0000.h5" in out.err


def test_description_errors_are_one_line(tmp_path, capsys):
    write_foreign_dir(tmp_path / "raw", n=2)
    for text, expect in (("{", "not readable JSON"), ('{"permeability_unit": "darcy"}', "darcy"),
                         ('{"quantities": {"Colour": 1}}', "unknown quantity"),
                         ('{"quantities": {"CellSizeX": {"param": 40}}}', "index 0..25"),
                         ('{"lateral_boundary": "pore_volume"}', "BoundaryMultiplier"),
                         ('{"outside_heat_exchange": "no"}', "not true or false"),
                         ('{"well_inflow": "pumped"}', "wellbore"),
                         ('{"well_inflow": "as_given", "quantities": {"ProducerMinBottomholePressure": 20}}',
                          "no bottomhole pressure")):
        (tmp_path / "raw" / "description.json").write_text(text)
        rc, out = run_cli(["prep", "--input_root", tmp_path / "raw", "--out_root", tmp_path / "p"], capsys)
        assert rc == 1 and expect in out.err


def test_notes_say_which_constants_take_generic_values():
    from voxel_ode.data.description import Description, resolve

    cells = {"CellSizeX": 50, "CellSizeY": 50, "CellSizeZ": 5}
    ones = np.ones(4)
    for extra, generic in (({}, True), ({"RockHeatCapacity": 900}, True),
                           ({"RockHeatCapacity": 900, "RockDensity": 2600}, False),
                           ({"RockHeatCapacityVolumetric": 2.3e6}, False)):
        desc = Description.from_dict({"lateral_boundary": "closed", "quantities": {**cells, **extra}})
        notes = resolve(desc, np.zeros(26), ones * 1e-13, ones, ones, "f").notes
        assert notes.get("RockHeatCapacityVolumetric", "").startswith("not declared") is generic, extra


def test_declared_bottomhole_pressure_limits_reach_the_priors_in_pascal():
    from voxel_ode.data import pack
    from voxel_ode.data.description import Description, resolve

    quantities = {"CellSizeX": 50, "CellSizeY": 50, "CellSizeZ": 5, "WellRadius": {"value": 0.5, "unit": "ft"},
                  "ProducerMinBottomholePressure": {"value": 20, "unit": "bar"},
                  "InjectorMaxBottomholePressure": {"value": 4000, "unit": "psi"}}
    ones = np.ones(4)
    physics = resolve(Description.from_dict({"lateral_boundary": "closed", "quantities": quantities}),
                      np.zeros(26), ones * 1e-13, ones, ones, "f")
    grid = (2, 2, 1)
    statics = {n: np.ones(grid, np.float32) for n in ("IsActive", "PermX", "PermY", "PermZ", "Porosity",
                                                       "Temperature0", "InjRate", "Pressure0")}
    res = pack.reservoir(statics, physics, np.zeros(grid, np.float32))
    assert res.producer_min_bhp == pytest.approx(20e5)
    assert res.injector_max_bhp == pytest.approx(4000 * 6894.757)
    assert res.well_radius == pytest.approx(0.1524)
    assert res.pressure0 is statics["Pressure0"]
    undeclared = resolve(Description.from_dict({"lateral_boundary": "closed", "quantities": {
        k: quantities[k] for k in ("CellSizeX", "CellSizeY", "CellSizeZ")}}), np.zeros(26), ones * 1e-13, ones, ones, "f")
    res = pack.reservoir(statics, undeclared, np.zeros(grid, np.float32))
    assert res.producer_min_bhp is None and res.injector_max_bhp is None


def test_bottomhole_limits_over_the_initial_pressure_resolve_per_run():
    """A limit given over an initial pressure: "well" over each cell's own (a grid, so each well
    reads its shallowest perforation's), "base" over the deepest active layer's mean; the entry
    round-trips through to_dict; a missing or unknown reference is one line naming the entry."""
    from voxel_ode.data import pack
    from voxel_ode.data.description import Description, resolve
    from voxel_ode.utils import UserError

    grid = (3, 2, 2)
    statics = {n: np.ones(grid, np.float32) for n in ("IsActive", "PermX", "PermY", "PermZ", "Porosity",
                                                       "Temperature0", "InjRate")}
    statics["IsActive"][2, 1, 1] = 0.0
    statics["Pressure0"] = (100e5 + 1e5 * np.arange(3)[:, None, None] + np.zeros(grid)).astype(np.float32)
    statics["Pressure0"][2, 1, 1] = 900e5  # inactive: not the base's pressure
    quantities = {"CellSizeX": 50, "CellSizeY": 50, "CellSizeZ": 5,
                  "InjectorMaxBottomholePressure": {"over_initial": 150, "unit": "bar", "at": "base"},
                  "ProducerMinBottomholePressure": {"over_initial": -2, "unit": "MPa", "at": "well"}}
    desc = Description.from_dict({"lateral_boundary": "closed", "quantities": quantities})
    assert Description.from_dict(desc.to_dict()).quantities == desc.quantities
    ones = np.ones(4)
    physics = resolve(desc, np.zeros(26), ones * 1e-13, ones, ones, "f")
    assert physics.notes["InjectorMaxBottomholePressure"].startswith("declared: +150 bar over the initial pressure at the base")
    fitted = dataclasses.replace(desc, calibrated={"ProducerMinBottomholePressure": "calibrated on 2 training runs"})
    assert resolve(fitted, np.zeros(26), ones * 1e-13, ones, ones, "f").notes["ProducerMinBottomholePressure"] == (
        "calibrated on 2 training runs: -20 bar over the initial pressure at the well")  # not "declared"
    res = pack.reservoir(statics, physics, np.zeros(grid, np.float32))
    assert res.injector_max_bhp == pytest.approx(102e5 + 150e5)
    np.testing.assert_allclose(res.producer_min_bhp, statics["Pressure0"].astype(np.float64) - 20e5)
    for spec, fragment in (({"over_initial": 150, "unit": "bar"}, "at None is not one of well, base"),
                           ({"over_initial": 150, "unit": "bar", "at": "top"}, "at 'top' is not one of"),
                           ({"over_initial": "x", "at": "well"}, "over_initial must be a finite pressure"),
                           ({"over_initial": 1, "at": "well", "value": 3}, "unknown key 'value'")):
        with pytest.raises(UserError, match="quantities.InjectorMaxBottomholePressure: " + re.escape(fragment)):
            Description.from_dict({"quantities": {"InjectorMaxBottomholePressure": spec}})
