"""`voxel-ode synth --engine darts` (open-darts 2.0.0): the conventions, their conversion and the CLI
without open-darts; real runs skipped where open-darts is not installed (CI)."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from voxel_ode import cli, schema
from voxel_ode.cli import build_parser
from voxel_ode.cli.synth import darts_conventions
from voxel_ode.data import description, raw
from voxel_ode.data import pack
from voxel_ode.synth import darts_draw
from voxel_ode.synth import open_darts as synth_darts
from voxel_ode.synth.darts_conventions import PARAM_NAMES, Conventions, file_arrays, random_params_order
from voxel_ode.synth.darts_conventions import description as darts_description

MD = 9.869233e-16  # m^2
DEV_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "descriptions" / "darts-dev.json"


def test_missing_darts_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "darts", None)  # "import darts" fails, find_spec raises
    assert not synth_darts.darts_available()
    rc = cli.main(["synth", "--engine", "darts", "--out", str(tmp_path / "out"), "--n", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err == "voxel-ode synth: error: " + synth_darts.MISSING_MESSAGE
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_a_relative_out_reaches_the_worker_as_an_absolute_path(monkeypatch, tmp_path):
    """The worker runs in a folder of its own: the output path it gets must not be relative."""
    monkeypatch.setattr(synth_darts, "darts_available", lambda: True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    jobs = []

    def fake_run(cmd, cwd, **kwargs):
        jobs.append(json.loads(cmd[-1]))
        return subprocess.CompletedProcess(cmd, 0, stdout="VOXEL_ODE_DONE 1.0\n", stderr="")

    monkeypatch.setattr(synth_darts.subprocess, "run", fake_run)
    path, _ = synth_darts.run_one(Path("out") / "v2.4_0001.h5", (4, 3, 3), seed=0, index=1, n_steps=1)
    assert Path(jobs[0]["path"]) == tmp_path / "out" / "v2.4_0001.h5" == path
    assert Path(jobs[0]["tmp"]).is_absolute()


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
    assert pack.validate_raw(path) == []
    desc = description.find(darts_run)
    assert desc.permeability_unit == "mD" and desc.first_report == "year1" and desc.lateral_boundary == "pore_volume"
    arrays = pack.prepare_arrays(path, desc=desc)  # raises on any problem with its description
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


# ---------------------------------------------------------------------------
# Conventions: the conversion from the simulator's arrays to the files (no open-darts needed)
# ---------------------------------------------------------------------------
def fake_sim(grid=(8, 5, 6), n_years=3, seed=0) -> dict:
    """A run as synth.darts_model.simulate returns it (darts_conventions.SIM_STATIC and below), with
    random but physical values: t = 0 and n_years year ends, permeability in mD, dev-order params."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    active = np.zeros(grid, bool)
    active[2:6] = True
    depth = 2000.0 + 5.0 * (np.arange(nz) + 0.5)
    p0 = np.broadcast_to((1e5 + 1000 * 9.81 * depth)[:, None, None], grid).astype(np.float32)
    t0 = np.broadcast_to((288.0 + 0.03 * depth)[:, None, None], grid).astype(np.float32)
    pressure = np.repeat(p0[None], n_years + 1, axis=0)
    temperature = np.repeat(t0[None], n_years + 1, axis=0)
    for r in range(1, n_years + 1):  # active cells move, inactive ones keep their initial values
        pressure[r][active] += (1e5 * r * rng.uniform(0.5, 1.5, active.sum())).astype(np.float32)
        temperature[r][active] -= (0.5 * r * rng.uniform(0.5, 1.5, active.sum())).astype(np.float32)
    inj = np.zeros(grid, np.float32)
    inj[2:6, 1, 1], inj[2:6, ny - 2, nx - 2] = 5.0, -5.0
    perm = 10.0 ** rng.uniform(1.0, 3.0, grid)  # mD
    params = np.full(26, -1.0)
    params[:18] = [310.0, 20.0, 20.0, 2300.0, 2.5, 30.0, 288.0, 2000.0, 2.0, 0.5, 0.2, 0.1, 300.0, 10.0, 0, 0, 1, 1]
    params[18:22] = [1, 1, nx - 2, ny - 2]
    sim = {"FaultId": np.zeros(grid, np.int32), "IsActive": active.astype(np.uint8),
           "IsWell": (inj != 0).astype(np.uint8),
           "InjRate": inj, "PermX": perm, "PermY": perm, "PermZ": 0.1 * perm,
           "Porosity": rng.uniform(0.1, 0.3, grid).astype(np.float32), "Pressure0": p0, "Temperature0": t0,
           "ParamsScalar": params, "Pressure": pressure, "Temperature": temperature,
           "report_days": 365.0 * np.arange(n_years + 1), "wells": [], "seed": seed, "index": 1}
    for i, name in enumerate(schema.SCALAR_NAMES):
        sim[name] = 1e6 * (i + 1) * (1.0 + 0.1 * np.arange(n_years + 1))
    sim["FieldEnergyProductionTotal"] = np.concatenate([[0.0], np.cumsum(sim["FieldEnergyProductionRate"][1:])]) * 3e7
    return sim


def test_default_conventions_are_the_dev_set():
    """Conventions() describes its files as benchmarks/descriptions/darts-dev.json does (no heat
    exchange with the rock outside the active cells: open-darts removes those cells)."""
    dev = description.load(DEV_JSON)
    assert darts_description().to_dict() == dev.to_dict()
    assert darts_description().outside_heat_exchange is False


def test_m2_permeability_is_md_times_the_factor():
    sim = fake_sim()
    md = file_arrays(sim, Conventions())
    m2 = file_arrays(sim, Conventions(permeability_unit="m2"))
    for name in ("PermX", "PermY", "PermZ"):
        np.testing.assert_array_equal(md[name], sim[name].astype(np.float32))
        np.testing.assert_array_equal(m2[name], (sim[name] * MD).astype(np.float32))
        np.testing.assert_allclose(m2[name] / md[name], MD, rtol=1e-6)
    for conv, arrays in ((Conventions(), md), (Conventions(permeability_unit="m2"), m2)):
        declared = darts_description(conv).permeability_unit
        assert declared == conv.permeability_unit == description.infer_permeability_unit(arrays["PermX"])


def test_first_report_initial_starts_with_the_initial_state():
    sim = fake_sim(n_years=3)
    initial = file_arrays(sim, Conventions(first_report="initial"))
    year1 = file_arrays(sim, Conventions())
    active = sim["IsActive"] > 0
    assert initial["Pressure"].shape[0] == 4 and year1["Pressure"].shape[0] == 3
    for name in ("Pressure", "Temperature"):
        np.testing.assert_array_equal(initial[name][0], initial[name + "0"])
        np.testing.assert_array_equal(initial[name][1:], year1[name])
        assert np.all(year1[name][0][active] != year1[name + "0"][active])
    for name in schema.SCALAR_NAMES:
        assert initial[name].shape == (4,) and year1[name].shape == (3,) and initial[name].dtype == np.float32
        np.testing.assert_array_equal(initial[name][1:], year1[name])
    assert initial["FieldEnergyProductionTotal"][0] == 0.0
    assert list(initial["_attrs"]["report_times_days"]) == [0.0, 365.0, 730.0, 1095.0]
    assert list(year1["_attrs"]["report_times_days"]) == [365.0, 730.0, 1095.0]
    for conv, arrays in ((Conventions(first_report="initial"), initial), (Conventions(), year1)):
        inferred = description.infer_first_report(arrays["Pressure0"][active], arrays["Pressure"][0][active])
        assert darts_description(conv).first_report == conv.first_report == inferred


def test_shuffled_params_round_trip_through_the_description():
    sim = fake_sim()
    order = random_params_order(7)
    assert order != tuple(range(26)) and sorted(order) == list(range(26))
    shuffled = file_arrays(sim, Conventions(params_order=order))
    dev = file_arrays(sim, Conventions())
    np.testing.assert_array_equal(shuffled["ParamsScalar"], sim["ParamsScalar"][list(order)].astype(np.float32))
    names = json.loads(shuffled["_attrs"]["param_names"])
    assert [names.index(PARAM_NAMES[k]) for k in range(26)] == [order.index(k) for k in range(26)]
    # what prep reads through each description is the same, whatever the order
    active = sim["IsActive"] > 0
    resolved = [description.resolve(darts_description(conv), arrays["ParamsScalar"], arrays["PermX"][active],
                                    arrays["Pressure0"][active], arrays["Pressure"][0][active], "test").values
                for conv, arrays in ((Conventions(params_order=order), shuffled), (Conventions(), dev))]
    assert resolved[0] == resolved[1]
    assert resolved[0]["InjectionTemperature"] == pytest.approx(310.0)
    assert resolved[0]["RockHeatCapacityVolumetric"] == pytest.approx(2.3e6)
    assert resolved[0]["RockThermalConductivity"] == pytest.approx(2.5)


def test_cells_and_boundary_are_declared():
    closed = Conventions(cell_size=(40, 30, 8), lateral_boundary="closed")
    d = darts_description(closed)
    assert d.lateral_boundary == "closed" and "BoundaryMultiplier" not in d.quantities
    assert [d.quantities[n]["value"] for n in ("CellSizeX", "CellSizeY", "CellSizeZ")] == [40.0, 30.0, 8.0]
    attrs = file_arrays(fake_sim(), closed)["_attrs"]
    fixed = json.loads(attrs["fixed_settings"])
    assert (fixed["DX"], fixed["DY"], fixed["DZ"], fixed["aquifer_volume_mult"]) == (40.0, 30.0, 8.0, 1.0)
    assert list(attrs["grid_cell_size_m"]) == [8.0, 30.0, 40.0]
    d = darts_description(Conventions(boundary_multiplier=250))
    assert d.lateral_boundary == "pore_volume" and d.quantities["BoundaryMultiplier"]["value"] == 250.0


def test_prep_sees_the_same_run_in_any_conventions(tmp_path):
    """One run written in the dev set's conventions and in m2 / initial / shuffled / other cells:
    prep (with each description.json) gives the same states and SI permeability."""
    sim = fake_sim()
    other = Conventions(cell_size=(50, 50, 5), permeability_unit="m2", first_report="initial",
                        params_order=random_params_order(3))
    prepped = []
    for name, conv in (("dev", Conventions()), ("other", other)):
        path = raw.write_simulation(tmp_path / name / raw.run_file_name(1), file_arrays(sim, conv))
        description.write(tmp_path / name / description.FILE_NAME, darts_description(conv))
        assert pack.validate_raw(path) == []
        prepped.append(pack.prepare_arrays(path, desc=description.find(path.parent)))
    a, b = prepped
    assert a["outputs_grid"].shape == b["outputs_grid"].shape == (4, 2, 8, 5, 6)
    np.testing.assert_array_equal(a["outputs_grid"], b["outputs_grid"])
    np.testing.assert_array_equal(a["outputs_scalar"][1:], b["outputs_scalar"][1:])
    np.testing.assert_allclose(a["static"], b["static"], rtol=1e-6)


def test_draw_follows_the_conventions():
    grid = (12, 8, 10)
    conv = Conventions(cell_size=(40, 30, 8), injection_rate=(5, 6))
    run = darts_draw.draw_run(grid, 1, 2, conv)
    assert np.allclose(np.diff(run["depth"]), 8.0) and run["cell_size"] == (8.0, 30.0, 40.0)
    assert 5 <= run["params"]["q_inj"] <= 6
    inj_rate, _ = darts_draw.well_grids(run, grid)
    assert inj_rate[inj_rate > 0].sum() == pytest.approx(run["params"]["q_inj"])
    assert run["params"]["q_prod"] != pytest.approx(run["params"]["q_inj"])  # +-10 % on this draw
    closed = darts_draw.draw_run(grid, 1, 2, Conventions(cell_size=(40, 30, 8), injection_rate=(5, 6),
                                                         lateral_boundary="closed"))
    assert closed["params"]["q_prod"] == closed["params"]["q_inj"] == run["params"]["q_inj"]
    np.testing.assert_array_equal(closed["permx"], run["permx"])  # the same draw otherwise


@pytest.mark.parametrize("flags, message", [
    (["--lateral_boundary", "fixed_pressure"], "'fixed_pressure' is not one of pore_volume, closed"),
    (["--lateral_boundary", "closed", "--boundary_multiplier", "5"], "--boundary_multiplier: only with"),
    (["--params_order", "1", "2"], "--params_order: need a permutation of 0..25"),
    (["--params_order", "x"], "--params_order: give 26 integers or 'random'"),
    (["--cell_size", "50", "0", "5"], "--cell_size: need 3 number(s)"),
    (["--injection_rate", "60", "5"], "--injection_rate: low 60 > high 5"),
    (["--cell_size", "50", "50", "100"], "the box is 4800 m high"),
    (["--injector_limit", "0"], "--injector_limit: need 1 number(s) in [1, 10000]"),
    (["--producer_limit", "nan"], "--producer_limit: need 1 number(s) in [1, 10000]"),
])
def test_bad_convention_flags_are_one_line(monkeypatch, tmp_path, capsys, flags, message):
    monkeypatch.setattr(synth_darts, "darts_available", lambda: True)
    out = tmp_path / "out"
    rc = cli.main(["synth", "--engine", "darts", "--out", str(out), "--n", "1", "--grid", "48", "20", "24"] + flags)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("voxel-ode synth: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_convention_flags_need_the_darts_engine(tmp_path, capsys):
    rc = cli.main(["synth", "--out", str(tmp_path / "out"), "--n", "1", "--perm_unit", "m2"])
    assert rc == 1 and "--perm_unit: only with --engine darts" in capsys.readouterr().err


def test_flags_make_the_conventions():
    parser, _ = build_parser("synth")
    args = parser.parse_args(["--out", "x", "--engine", "darts", "--seed", "4"])
    assert darts_conventions(args) == Conventions()
    args = parser.parse_args(["--out", "x", "--engine", "darts", "--seed", "4", "--cell_size", "40", "40", "8",
                              "--injection_rate", "5", "100", "--lateral_boundary", "closed", "--perm_unit", "m2",
                              "--first_report", "initial", "--params_order", "random"])
    assert darts_conventions(args) == Conventions((40, 40, 8), (5, 100), "closed", 1000.0, "m2", "initial",
                                                  random_params_order(4))
    order = list(range(25, -1, -1))
    args = parser.parse_args(["--out", "x", "--engine", "darts", "--params_order"] + [str(i) for i in order])
    assert darts_conventions(args).params_order == tuple(order)
    args = parser.parse_args(["--out", "x", "--engine", "darts", "--injector_limit", "60", "--producer_limit", "35"])
    conv = darts_conventions(args)
    assert (conv.injector_limit, conv.producer_limit) == (60.0, 35.0)
    assert Conventions.from_dict(conv.to_dict()) == conv


def test_the_wells_limits_are_declared_and_recorded():
    """The description declares the injectors' limit over the base's initial pressure and the
    producers' minimum as given; the files' fixed settings record both."""
    conv = Conventions(injector_limit=60.0, producer_limit=35.0)
    q = darts_description(conv).quantities
    assert q["InjectorMaxBottomholePressure"] == {"over_initial": 60e5, "at": "base", "unit": "Pa"}
    assert q["ProducerMinBottomholePressure"]["value"] == pytest.approx(35e5)
    fixed = json.loads(file_arrays(fake_sim(), conv)["_attrs"]["fixed_settings"])
    assert (fixed["inj_bhp_max_over_init"], fixed["prod_bhp_min"]) == (60.0, 35.0)


@pytest.fixture(scope="module")
def darts_other_run(tmp_path_factory):
    """A real open-darts run in conventions nobody tuned for."""
    if not synth_darts.darts_available():
        pytest.skip("open-darts is not installed")
    out = tmp_path_factory.mktemp("darts-other")
    rc = cli.main(["synth", "--engine", "darts", "--out", str(out), "--n", "1", "--grid", "12", "6", "8",
                   "--seed", "0", "--n_steps", "2", "--cell_size", "40", "30", "4", "--injection_rate", "1", "3",
                   "--lateral_boundary", "closed", "--perm_unit", "m2", "--first_report", "initial",
                   "--params_order", "random"])
    assert rc == 0
    return out


def test_real_run_in_other_conventions(darts_other_run):
    path = darts_other_run / "v2.4_0001.h5"
    desc = description.find(darts_other_run)
    assert (desc.permeability_unit, desc.first_report, desc.lateral_boundary) == ("m2", "initial", "closed")
    assert pack.validate_raw(path) == []
    assert pack.prepare_arrays(path, desc=desc)["outputs_grid"].shape == (3, 2, 12, 6, 8)
    with h5py.File(path, "r") as f:
        out = {k: f["Output/" + k][()] for k in f["Output"]}
        p0, perm, params = f["Input/Pressure0"][()], f["Input/PermX"][()], f["Input/ParamsScalar"][()]
        active = f["Input/IsActive"][()] > 0
        names = json.loads(f.attrs["param_names"])
        assert list(f.attrs["grid_cell_size_m"]) == [4.0, 30.0, 40.0]
    assert out["Pressure"].shape[0] == 3 and np.array_equal(out["Pressure"][0], p0)
    assert np.abs(out["Pressure"][1] - p0)[active].max() > 1e4
    assert description.infer_permeability_unit(perm[active]) == "m2"
    order = random_params_order(0)
    assert names == [PARAM_NAMES[i] for i in order]
    q_inj, q_prod = params[names.index("Q_inj_total_kg_s")], params[names.index("Q_prod_total_kg_s")]
    assert 1 <= q_inj <= 3 and q_prod == q_inj  # a closed box produces what it injects
    np.testing.assert_allclose(out["FieldWaterInjectionRate"], q_inj, rtol=1e-5)
    np.testing.assert_allclose(out["FieldWaterProductionRate"], q_prod, rtol=1e-5)
    assert params[desc.quantities["InjectionTemperature"]["param"]] == params[names.index("T_inj_K")]
