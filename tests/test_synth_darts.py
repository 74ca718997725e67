"""`voxel-ode synth --engine darts` (open-darts 2.0.0). Skipped where open-darts is not installed (CI)."""

import json
import sys

import h5py
import numpy as np
import pytest

from voxel_ode import cli
from voxel_ode.data import prep as data_prep
from voxel_ode.data import description
from voxel_ode.synth import open_darts as synth_darts


def test_missing_darts_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "darts", None)  # "import darts" fails, find_spec raises
    assert not synth_darts.darts_available()
    rc = cli.main(["synth", "--engine", "darts", "--out", str(tmp_path / "out"), "--n", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err == "voxel-ode synth: error: " + synth_darts.MISSING_MESSAGE
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_out_checks_come_before_any_darts_run(monkeypatch, tmp_path, capsys):
    """--out is checked as for the voxel engine (cli.synth.checked_out_dir) before open-darts is needed."""
    monkeypatch.setattr(synth_darts, "darts_available", lambda: True)
    (tmp_path / "v2.4_0001.h5").write_bytes(b"")
    assert cli.main(["synth", "--engine", "darts", "--out", str(tmp_path), "--n", "1"]) == 1
    assert "already holds 1 v2.4_*.h5 files; use --overwrite" in capsys.readouterr().err
    assert cli.main(["synth", "--engine", "darts", "--out", str(tmp_path / "v2.4_0001.h5"), "--n", "1"]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err


def test_voxel_ode_never_imports_darts():
    assert "darts.engines" not in sys.modules


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory):
    if not synth_darts.darts_available():
        pytest.skip("open-darts is not installed")
    out = tmp_path_factory.mktemp("darts")
    rc = cli.main(["synth", "--engine", "darts", "--out", str(out), "--n", "1", "--grid", "12", "6", "8",
                   "--seed", "0", "--n_steps", "3"])
    assert rc == 0
    return out


def test_tiny_run_is_valid_v24(darts_run):
    path = darts_run / "v2.4_0001.h5"
    assert data_prep.validate_raw(path) == []
    desc = description.find(darts_run)
    assert desc.permeability_unit == "mD" and desc.first_report == "year1" and desc.lateral_boundary == "pore_volume"
    arrays = data_prep.prepare_arrays(path, desc=desc)  # raises on any problem with its description
    assert arrays["outputs_grid"].shape == (4, 2, 12, 6, 8)  # prep puts t = 0 (Input/*0) before year 1
    with h5py.File(path, "r") as f:
        assert f["Input/FaultId"].dtype == np.int32 and f["Input/IsActive"].dtype == np.uint8
        assert f["Input/ParamsScalar"].shape == (26,) and f["Output/Pressure"].compression == "gzip"
        assert list(f.attrs["report_times_days"]) == [365.0, 730.0, 1095.0]
        assert len(json.loads(f.attrs["param_names"])) == 26


def test_tiny_run_mass_and_energy(darts_run):
    with h5py.File(darts_run / "v2.4_0001.h5", "r") as f:
        wells = json.loads(f.attrs["wells"])
        params = f["Input/ParamsScalar"][()]
        inj = sum(w["rate"] for w in wells if w["inj"])
        prod = -sum(w["rate"] for w in wells if not w["inj"])
        out = {k: f["Output/" + k][()] for k in f["Output"]}
        inj_rate = f["Input/InjRate"][()]
        active = f["Input/IsActive"][()] > 0
        p0, t0 = f["Input/Pressure0"][()], f["Input/Temperature0"][()]
    # every well held its target rate on this small, permeable draw
    np.testing.assert_allclose(out["FieldWaterInjectionRate"], inj, rtol=1e-5)
    np.testing.assert_allclose(out["FieldWaterProductionRate"], prod, rtol=1e-5)
    np.testing.assert_allclose(params[1:3], [inj, prod], rtol=1e-5)
    np.testing.assert_allclose(inj_rate[inj_rate > 0].sum(), inj, rtol=1e-5)
    np.testing.assert_allclose(-inj_rate[inj_rate < 0].sum(), prod, rtol=1e-5)
    # the first report is the end of year 1; inactive cells never change
    assert np.abs(out["Pressure"][0] - p0)[active].max() > 1e4
    assert np.all(out["Pressure"][:, ~active] == p0[~active]) and np.all(out["Temperature"][:, ~active] == t0[~active])
    # absolute IAPWS-95 enthalpy of liquid water: ~4.18 kJ/(kg K) above the triple point, plus up to
    # ~35 kJ/kg for the well's pressure (v dp at <= 400 bar)
    h_inj = out["FieldEnergyInjectionRate"] / out["FieldWaterInjectionRate"]
    h_t = 4180.0 * (params[0] - 273.16)
    assert np.all((h_inj > 0.97 * h_t) & (h_inj < h_t + 35e3))
    # cumulative energy is increasing and about rate x time
    total = out["FieldEnergyProductionTotal"]
    assert np.all(np.diff(total) > 0)
    year = 365 * 86400.0
    assert 0.7 < total[-1] / (out["FieldEnergyProductionRate"].mean() * 3 * year) < 1.3
