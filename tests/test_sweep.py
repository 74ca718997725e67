"""`voxel-ode sweep`: a plan's scenarios of one run, forecast with one model, ranked in a table."""

import json
import shutil

import h5py
import numpy as np
import pytest

from fixtures import DESCRIPTION, write_raw_dir
from voxel_ode import schema
from voxel_ode.cli import main
from voxel_ode.data.plan import parse_row
from voxel_ode.data.description import Description
from voxel_ode.data.prep import prep
from voxel_ode.inference import bands, scenarios, sweep, sweep_table
from voxel_ode.inference.predict import predict_file
from voxel_ode.training.train import train

GRID = dict(grid=(12, 10, 8), n_t=6)
TINY = dict(base_channels=8, depth=1, receptive_field_radius=1, num_threads=1, quiet=True, max_steps=2,
            sample_mode="full", batch_size=2, amp="none")
T_INJ = schema.PARAM_NAMES.index("InjectionTemperature")  # declared as this ParamsScalar entry below
ADDED = "P2:3:4:2:8:-1.5"  # a producer in column x=3, y=4, layers 2..8
PLAN = "name,scale_rates,add_well,param:InjectionTemperature\nbase,,,\nzero,0,,\nextra,,{},320\n".format(ADDED)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model whose description declares the injection temperature as ParamsScalar[0]."""
    root = tmp_path_factory.mktemp("sweep")
    declared = json.loads(json.dumps(DESCRIPTION))
    declared["quantities"]["InjectionTemperature"] = {"param": T_INJ, "unit": "K"}
    for i, path in enumerate(write_raw_dir(root / "raw", n=4, description=declared, **GRID)):
        with h5py.File(path, "a") as f:
            f[schema.raw_path(schema.PARAMS_SCALAR)][T_INJ] = 300.0 + 5 * i
    prep(root / "raw", root / "prepped", n_test=1, patch_size=(8, 8, 8), stride=(4, 4, 4), progress=False)
    train(prepped_root=str(root / "prepped"), save_dir=str(root / "ck"), **TINY)
    (root / "plan.csv").write_text(PLAN)
    return {"root": root, "ckpt": root / "ck" / "last.pt", "base": root / "raw" / "v2.4_0002.h5",
            "desc": Description.from_dict(declared), "plan": root / "plan.csv"}


@pytest.fixture(scope="module")
def swept(trained):
    out = trained["root"] / "out"
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], out, save_predictions=True,
                           amp="none", progress=False)
    return out, rows


def _hand_made(base, dst, edit):
    """The base's Input/ only, its InjRate / IsWell / ParamsScalar changed by ``edit``."""
    shutil.copy(base, dst)
    with h5py.File(dst, "a") as f:
        del f[schema.OUTPUT_GROUP]
        arrays = {n: f[schema.raw_path(n)][()] for n in ("InjRate", "IsWell", "IsActive", "PermX", "ParamsScalar")}
        edit(arrays)
        for name in ("InjRate", "IsWell", "ParamsScalar"):
            f[schema.raw_path(name)][...] = arrays[name]
    return dst


def _zero(a):
    a["InjRate"][...] = 0.0  # the wells stay drilled (IsWell), shut


def _extra(a):
    ks = np.arange(2, 9)
    ks = ks[a["IsActive"][ks, 4, 3] == 1]
    weight = a["PermX"][ks, 4, 3].astype(np.float64)
    a["InjRate"][ks, 4, 3] = -1.5 * weight / weight.sum()
    a["IsWell"][ks, 4, 3] = 1.0
    a["ParamsScalar"][T_INJ] = 320.0


def test_a_sweep_gives_what_separate_forecasts_give(trained, swept, tmp_path):
    out, rows = swept
    assert sorted(r["name"] for r in rows) == ["base", "extra", "zero"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    energy = [r["energy_total"] for r in rows]
    assert energy == sorted(energy, reverse=True)  # best first: the most energy
    for name, edit in (("base", lambda a: None), ("zero", _zero), ("extra", _extra)):
        src = _hand_made(trained["base"], tmp_path / f"{name}.h5", edit)
        predict_file(trained["ckpt"], src, tmp_path / f"{name}_pred.h5", device="cpu", amp="none", progress=False)
        with h5py.File(tmp_path / f"{name}_pred.h5") as a, h5py.File(out / "predictions" / f"{name}.h5") as b:
            grid = a["predicted/outputs_grid"][()]
            scalar = a["predicted/outputs_scalar"][()]
            np.testing.assert_array_equal(grid, b["predicted/outputs_grid"][()])
            np.testing.assert_array_equal(scalar, b["predicted/outputs_scalar"][()])
        with h5py.File(src) as f:
            rate = f[schema.raw_path("InjRate")][()].astype(np.float64)
            producers = (f[schema.raw_path("IsActive")][()] == 1) & (rate < 0)
        row = next(r for r in rows if r["name"] == name)
        total = scalar[:, schema.SCALAR_NAMES.index("FieldEnergyProductionTotal")]
        assert row["energy_total"] == pytest.approx(total[-1] - total[0], rel=1e-12)
        for i, scalar_name in enumerate(schema.SCALAR_NAMES):
            assert row[scalar_name] == pytest.approx(scalar[-1, i], rel=1e-12)
        if producers.any():  # the producers' temperature, weighted by their rates
            temp = (grid[:, 1][:, producers] * -rate[producers]).sum(axis=1) / -rate[producers].sum()
            assert row["production_temperature_end"] == pytest.approx(temp[-1], rel=1e-9)
            assert row["production_temperature_drop"] == pytest.approx(temp[0] - temp[-1], abs=1e-6)
        else:
            assert row["production_temperature_end"] is None
    table = (out / "scenarios.csv").read_text().splitlines()
    assert table[0].startswith("rank,name,energy_total") and len(table) == 4
    assert "dp_end_P2" in table[0] and (out / "sweep.png").stat().st_size > 0
    everything = json.loads((out / "scenarios.json").read_text())
    assert len(everything["scenarios"][0]["series"]["production_temperature"]) == 6
    for key in ("seconds", "cpu_seconds"):  # where each scenario's time went
        assert set(everything["scenarios"][0]["series"][key]) == {"inputs", "priors", "model", "outputs"}
    # what lies beyond the training runs is named per scenario: no rates at all; 320 K injected
    # (training runs 305-315 K); the base, a training run itself, has nothing to name
    beyond = {r["name"]: r["out_of_range"] for r in rows}
    assert beyond["base"] == "" and "injection rate (kg/s, total) = 0" in beyond["zero"]
    assert "(InjectionTemperature) = 320" in beyond["extra"]
    with h5py.File(out / "predictions" / "zero.h5") as f:
        assert any(n.startswith("injection rate") for n in json.loads(f.attrs["out_of_range"]))


def test_scenario_changes_act(trained, swept):
    out, _ = swept
    with h5py.File(out / "predictions" / "base.h5") as a, h5py.File(out / "predictions" / "zero.h5") as b:
        assert not np.array_equal(a["predicted/outputs_grid"][()], b["predicted/outputs_grid"][()])
    base = scenarios.load_base(trained["base"], trained["desc"])
    assert [w.name for w in base.wells] == ["I1", "P1"]
    i1, p1 = base.wells
    sc = parse_row({"name": "s", "shut": "I1", "rate_P1": "-3"}, 1)
    scenarios.check_scenario(sc, base, trained["desc"])
    inj, is_well, _ = scenarios.scenario_grids(base, sc)
    assert (inj[i1.zs, i1.y, i1.x] == 0).all() and (is_well[i1.zs, i1.y, i1.x] == 1).all()  # shut, still drilled
    assert inj[p1.zs, p1.y, p1.x].sum() == pytest.approx(-3.0)
    np.testing.assert_allclose(inj[p1.zs, p1.y, p1.x] / -3.0, p1.rates / p1.total)  # its cells keep their shares
    untouched = np.ones(base.grid, bool)
    untouched[i1.zs, i1.y, i1.x] = untouched[p1.zs, p1.y, p1.x] = False
    np.testing.assert_array_equal(inj[untouched], base.inj_rate[untouched])
    moved = parse_row({"name": "m", "move_well": "I1:3:4:0:11"}, 2)  # no rate: keeps its total
    scenarios.check_scenario(moved, base, trained["desc"])
    inj, is_well, wells = scenarios.scenario_grids(base, moved)
    assert (inj[i1.zs, i1.y, i1.x] == 0).all() and (is_well[i1.zs, i1.y, i1.x] == 0).all()
    new = next(w for w in wells if w.name == "I1")
    assert (new.y, new.x) == (4, 3) and base.active[new.zs, 4, 3].all() and (is_well[new.zs, 4, 3] == 1).all()
    assert inj[:, 4, 3].sum() == pytest.approx(i1.total)
    share = base.permx[new.zs, 4, 3] / base.permx[new.zs, 4, 3].sum()  # split by PermX
    np.testing.assert_allclose(inj[new.zs, 4, 3], i1.total * share)


def test_bad_plan_rows_are_one_line_each_and_nothing_runs(trained, tmp_path, capsys):
    plan = tmp_path / "bad.csv"
    plan.write_text("name,rat_I1,rate_X9,scale_rates,add_well,param:Porosity\n"
                    "fine,,,,,\ntypo,3,,,,\nghost,,1,,,\nword,,,abc,,\nfar,,,,N1:99:1:0:3:2,\nporo,,,,,0.2\n")
    args = ["sweep", "--ckpt_path", str(trained["ckpt"]), "--base", str(trained["base"]), "--plan", str(plan),
            "--out", str(tmp_path / "out"), "--no_progress"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    for line, (row, name, what) in zip(err, [(2, "typo", "unknown column 'rat_I1'"), (3, "ghost", "no well 'X9'"),
                                             (4, "word", "not a number"), (5, "far", "outside the grid"),
                                             (6, "poro", "declares no ParamsScalar entry")]):
        assert f"row {row} ('{name}')" in line and what in line, line
    assert not (tmp_path / "out" / "sweep.json").exists() and not (tmp_path / "out" / "scenarios").exists()
    plan.write_text("name,rate_I1\nok,5\nbad,five\n")  # one bad row: one line
    assert main(args) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_killed_sweep_resumes(trained, tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"name": "a"}, {"name": "b", "scale_rates": 0.5}, {"name": "c", "shut": "P1"}]))
    calls = []
    real = sweep.rollout

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "rollout", dies_on_the_second)
    run = dict(amp="none", progress=False)
    with pytest.raises(RuntimeError):
        sweep.run_sweep(trained["ckpt"], trained["base"], plan, tmp_path / "out", **run)
    assert [p.name for p in (tmp_path / "out" / "scenarios").glob("*.json")] == ["a.json"]
    calls.clear()
    monkeypatch.setattr(sweep, "rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    capsys.readouterr()
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], plan, tmp_path / "out", objective="-energy_total", **run)
    assert len(calls) == 2 and "skipping 1 finished scenario" in capsys.readouterr().out
    assert sorted(r["name"] for r in rows) == ["a", "b", "c"]
    energy = [r["energy_total"] for r in rows]
    assert energy == sorted(energy)  # "-name": lowest first
    assert len((tmp_path / "out" / "scenarios.csv").read_text().splitlines()) == 4


def test_another_plan_on_the_folder_is_refused(trained, swept, tmp_path, capsys):
    out, _ = swept
    plan = tmp_path / "other.csv"
    plan.write_text("name,scale_rates\nother,2\n")
    capsys.readouterr()
    rc = main(["sweep", "--ckpt_path", str(trained["ckpt"]), "--base", str(trained["base"]), "--plan", str(plan),
               "--out", str(out), "--no_progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "holds a sweep of another plan" in err[0]
    assert not (out / "scenarios" / "other.json").exists()


def test_workers_give_the_serial_numbers(trained, swept, tmp_path):
    _, serial = swept
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], tmp_path / "out", workers=2,
                           amp="none", progress=False)
    assert rows == serial


def test_a_sweep_with_bands_gives_each_scenario_its_bands(trained, tmp_path):
    """A bands file (hand-made here: a floor-only scale, 10 % scalar bands) puts the field scalars'
    bands into each scenario's JSON and the grid bands into its predictions.h5."""
    n_steps = GRID["n_t"]
    grid_entry = {"weights": [0.0, 0.0, 0.0, 1.0], "quantiles": [0.0] + [1.0] * (n_steps - 1), "run_factor": 1.0}
    made = bands.write(tmp_path / "b.json", {
        "format": bands.FORMAT, "checkpoint": "last.pt", "checkpoint_sha256": bands.checkpoint_digest(trained["ckpt"]),
        "coverage": 0.9, "calibration_runs": [], "n_steps": n_steps,
        "grid": {"Pressure": grid_entry, "Temperature": grid_entry},
        "scalars": {n: {"power": 0.0, "quantile": 0.1} for n in schema.SCALAR_NAMES}})
    out = tmp_path / "out"
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], out, save_predictions=True, amp="none",
                           progress=False, bands_path=made)
    for row in rows:  # the energy produced's band in the table: 10 % of the total each side here
        total = json.loads((out / "scenarios" / f"{row['name']}.json").read_text())["field_scalars"]
        start, end = total["FieldEnergyProductionTotal"][0], total["FieldEnergyProductionTotal"][-1]
        assert row["energy_total_low"] == pytest.approx(0.9 * end - start, rel=1e-6)
        assert row["energy_total_high"] == pytest.approx(1.1 * end - start, rel=1e-6)
    assert "energy_total_low" in (out / "scenarios.csv").read_text().splitlines()[0]
    band = sweep_table.objective_band(rows, "energy_total")  # the picture's error bars
    np.testing.assert_allclose(band[0], [r["energy_total"] - r["energy_total_low"] for r in rows])
    assert (band > 0).all() and sweep_table.objective_band(rows, "energy_last_year") is None
    first = sorted((out / "scenarios").glob("*.json"))[0]
    result = json.loads(first.read_text())
    low, high = result["field_scalars_band"]["FieldWaterInjectionRate"]
    rate = result["field_scalars"]["FieldWaterInjectionRate"]
    assert low[-1] == pytest.approx(0.9 * rate[-1]) and high[-1] == pytest.approx(1.1 * rate[-1])
    with h5py.File(out / "predictions" / (first.stem + ".h5")) as f:
        assert f["predicted/band_low"].shape == f["predicted/outputs_grid"].shape


def test_a_compiled_sweep_gives_the_eager_numbers(trained, swept, tmp_path, capsys):
    _, serial = swept
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], tmp_path / "out", amp="none",
                           progress=False, compile_model="yes")
    assert "compiling the model" in capsys.readouterr().out
    assert [r["name"] for r in rows] == [r["name"] for r in serial]
    for got, want in zip(rows, serial):
        assert got["energy_total"] == pytest.approx(want["energy_total"], rel=1e-4)


def test_a_failed_compile_goes_on_without_it(trained, swept, tmp_path, capsys, monkeypatch):
    """Where torch.compile cannot build (no C compiler, say) the first rollout fails: one line says
    so and the sweep forecasts with the plain model, the same numbers as without compiling."""
    import torch

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model
            self.receptive_field, self.config = model.receptive_field, model.config

        def forward(self, *args, **kwargs):
            raise RuntimeError("no working C compiler\nmore")

    monkeypatch.setattr(torch, "compile", lambda model: Broken(model))
    _, serial = swept
    rows = sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], tmp_path / "out", amp="none",
                           progress=False, compile_model="yes")
    said = [line for line in capsys.readouterr().out.splitlines() if "torch.compile failed" in line]
    assert said == ["torch.compile failed (RuntimeError: no working C compiler); going on without it"]
    assert rows == serial
    with pytest.raises(Exception, match="--compile: 'maybe' is not one of auto, yes, no"):
        sweep.run_sweep(trained["ckpt"], trained["base"], trained["plan"], tmp_path / "o2", compile_model="maybe")
