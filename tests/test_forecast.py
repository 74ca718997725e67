"""Forecasts of runs nobody simulated: a raw file with Input/ only rolls out from its initial state."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fixtures import DESCRIPTION, write_raw_dir, write_raw_sim
from voxel_ode import schema
from voxel_ode.data import description, pack
from voxel_ode.cli import main
from voxel_ode.data.prep import prep
from voxel_ode.inference.predict import predict_file
from voxel_ode.training.train import train
from voxel_ode.utils import UserError

GRID = dict(grid=(12, 10, 8), n_t=6)
TINY = dict(base_channels=8, depth=1, receptive_field_radius=1, num_threads=1, quiet=True, max_steps=2,
            sample_mode="full", batch_size=2, amp="none")


def _inputs_only(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f[schema.OUTPUT_GROUP]
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("forecast")
    declared = json.loads(json.dumps(DESCRIPTION))
    declared["quantities"]["InjectionTemperature"] = {"value": 300.0, "unit": "K"}  # no field scalars in a forecast
    write_raw_dir(base / "raw", n=4, description=declared, **GRID)
    prep(base / "raw", base / "prepped", n_test=1, patch_size=(8, 8, 8), stride=(4, 4, 4), progress=False)
    train(prepped_root=str(base / "prepped"), save_dir=str(base / "ck"), **TINY)
    return base


def test_an_inputs_only_file_rolls_out_like_the_simulated_one(trained, tmp_path, capsys):
    raw = trained / "raw" / "v2.4_0001.h5"
    forecast_in = _inputs_only(raw, tmp_path / "plan.h5")
    ckpt = trained / "ck" / "last.pt"
    predict_file(ckpt, raw, tmp_path / "sim.h5", device="cpu", amp="none", progress=False)
    predict_file(ckpt, forecast_in, tmp_path / "forecast.h5", device="cpu", amp="none", progress=False,
                 plots_dir=tmp_path / "plots")
    assert "forecast: " in capsys.readouterr().out
    with h5py.File(tmp_path / "sim.h5") as a, h5py.File(tmp_path / "forecast.h5") as b:
        assert json.loads(b.attrs["forecast"]) is True and json.loads(a.attrs["forecast"]) is False
        assert "truth" not in b
        # the same start (Input/*0 = the first report here) and inputs: the same fields, every year
        np.testing.assert_array_equal(a["predicted/outputs_grid"][()], b["predicted/outputs_grid"][()])
        assert np.isfinite(b["predicted/outputs_scalar"][()]).all()
    assert (tmp_path / "forecast.xdmf").exists() and list((tmp_path / "plots").glob("slices_step*.png"))
    assert (tmp_path / "plots" / "scalars.png").exists()


def test_a_forecast_without_a_declared_injection_temperature_is_one_line(tmp_path, capsys):
    write_raw_dir(tmp_path / "raw", n=3, **GRID)  # the description declares no injection temperature
    prep(tmp_path / "raw", tmp_path / "prepped", n_test=1, patch_size=(8, 8, 8), stride=(4, 4, 4), progress=False)
    train(prepped_root=str(tmp_path / "prepped"), save_dir=str(tmp_path / "ck"), **TINY)
    plan = _inputs_only(tmp_path / "raw" / "v2.4_0001.h5", tmp_path / "plan.h5")
    capsys.readouterr()
    rc = main(["rollout", "--raw_sim_path", str(plan), "--ckpt_path", str(tmp_path / "ck" / "last.pt"),
               "--save_path", str(tmp_path / "p.h5"), "--no_progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "plan.h5: (description): InjectionTemperature: not declared, and a forecast has no field scalars" in err[0]
    with pytest.raises(UserError, match="InjectionTemperature"):
        predict_file(tmp_path / "ck" / "last.pt", plan, tmp_path / "p.h5", device="cpu", progress=False)


def test_a_forecast_names_each_input_outside_the_training_runs(trained, tmp_path, capsys):
    """A training run's own inputs lie inside the ranges; tripled well rates and a ParamsScalar
    entry far beyond any training run's are each named, in stdout and in predictions.h5."""
    ckpt = trained / "ck" / "last.pt"
    inside = _inputs_only(trained / "raw" / "v2.4_0002.h5", tmp_path / "inside.h5")
    predict_file(ckpt, inside, tmp_path / "inside_pred.h5", device="cpu", amp="none", progress=False)
    with h5py.File(tmp_path / "inside_pred.h5") as f:
        assert json.loads(f.attrs["out_of_range"]) == []
    outside = _inputs_only(trained / "raw" / "v2.4_0002.h5", tmp_path / "outside.h5")
    with h5py.File(outside, "a") as f:
        f["Input/InjRate"][...] = f["Input/InjRate"][()] * 3
        f["Input/ParamsScalar"][5] = 1e6
    capsys.readouterr()
    predict_file(ckpt, outside, tmp_path / "outside_pred.h5", device="cpu", amp="none", progress=False)
    printed = capsys.readouterr().out
    with h5py.File(tmp_path / "outside_pred.h5") as f:
        notes = json.loads(f.attrs["out_of_range"])
    names = [n.split(" = ")[0] for n in notes]
    assert names == ["injection rate (kg/s, total)", "production rate (kg/s, total)", "ParamsScalar[5]"]
    assert all(f"warning: outside the training runs: {n}" in printed for n in notes)


DARTS_DEV = Path(__file__).resolve().parents[2] / "shared" / "darts-dev" / "data" / "v2.4_0000.h5"


@pytest.mark.skipif(not DARTS_DEV.exists(), reason="needs ../shared/darts-dev")
def test_an_inputs_only_file_under_a_year1_description(tmp_path):
    """A forecast's file has no reports: a declared first_report year1 (darts-dev's) is not
    contradicted by it (Input/Pressure0 is not 'Output/Pressure[0]')."""
    desc = description.load(Path(__file__).resolve().parents[1] / "benchmarks" / "descriptions" / "darts-dev.json")
    start = pack.prepare_forecast(_inputs_only(DARTS_DEV, tmp_path / "in.h5"), desc, 3)
    assert start["first_report"] == "initial" and start["priors"].shape[0] == 3


def test_a_forecast_accepts_a_description_that_declares_the_first_report_at_year_one(tmp_path):
    """The same without darts-dev: a fixture file under a declared year1 forecasts from t = 0."""
    declared = json.loads(json.dumps(DESCRIPTION))
    declared["first_report"] = "year1"
    declared["quantities"]["InjectionTemperature"] = {"value": 300.0, "unit": "K"}
    plan = _inputs_only(write_raw_sim(tmp_path / "v2.4_0001.h5", **GRID), tmp_path / "plan.h5")
    sim = pack.prepare_forecast(plan, description.Description.from_dict(declared, "test"), 4)
    assert sim["forecast"] and len(sim["priors"]) == 4 and sim["first_report"] == "initial"


def _enthalpy_mw(temperature):
    """A convention unlike synth's: MJ/kg (energy rates in MW), zero 20 kJ/kg below 0 C, c = 4180."""
    return (4180.0 * (np.asarray(temperature, np.float64) - 273.15) + 2.0e4) * 1e-6


def _rewrite_energy_rates(path, t_inj):
    """The file's field rates made consistent with its wells and _enthalpy_mw."""
    with h5py.File(path, "a") as f:
        active = f["Input/IsActive"][()] > 0.5
        rate = np.where(active, f["Input/InjRate"][()], 0.0).astype(np.float64)
        t0 = f["Input/Temperature0"][()].astype(np.float64)
        inj, prod = np.maximum(rate, 0.0), np.maximum(-rate, 0.0)
        n_t = len(f[schema.raw_path("FieldEnergyProductionRate")])
        values = {"FieldWaterInjectionRate": inj.sum(), "FieldWaterProductionRate": prod.sum(),
                  "FieldEnergyInjectionRate": inj.sum() * _enthalpy_mw(t_inj),
                  "FieldEnergyProductionRate": float((prod * _enthalpy_mw(t0)).sum())}
        for name, value in values.items():
            f[schema.raw_path(name)][...] = np.full(n_t, value)
        f[schema.raw_path("FieldEnergyProductionTotal")][...] = values["FieldEnergyProductionRate"] * 3.15e7 * np.arange(n_t)
        return np.array([f[schema.raw_path(n)][0] for n in schema.SCALAR_NAMES])


def test_a_forecast_starts_its_energy_rates_in_the_training_data_s_enthalpy_convention(tmp_path):
    """Energy rates in MW with another zero: prep fits the convention on the training runs'
    first reports, and a forecast's t = 0 energy rates match what the simulator reported; synth's
    c_w (T - 273.15) in W would have been a million times too large."""
    from voxel_ode.data import start_scalars

    declared = json.loads(json.dumps(DESCRIPTION))
    declared["quantities"]["InjectionTemperature"] = {"value": 300.0, "unit": "K"}
    paths = write_raw_dir(tmp_path / "raw", n=5, description=declared, **GRID)
    reports = [_rewrite_energy_rates(p, 300.0) for p in paths]
    prep(tmp_path / "raw", tmp_path / "prepped", n_test=1, patch_size=(8, 8, 8), stride=(4, 4, 4), progress=False)
    fitted = json.loads((tmp_path / "prepped" / "stats.json").read_text())[start_scalars.KEY]
    assert fitted["runs"] == 4 and fitted["left_out_relative_error"] < 1e-4
    train(prepped_root=str(tmp_path / "prepped"), save_dir=str(tmp_path / "ck"), **TINY)
    test_run = json.loads((tmp_path / "prepped" / "stats.json").read_text())["test_sims"][0]
    index = [p.stem for p in paths].index(Path(test_run).name.split(".prepped")[0])
    plan = _inputs_only(paths[index], tmp_path / "plan.h5")
    predict_file(tmp_path / "ck" / "last.pt", plan, tmp_path / "p.h5", device="cpu", amp="none", progress=False)
    with h5py.File(tmp_path / "p.h5") as f:
        start = f["predicted/outputs_scalar"][0]
    np.testing.assert_allclose(start, reports[index], rtol=1e-4)
    unfitted = start_scalars.estimate(pack.prepare_forecast(plan, description.Description.from_dict(declared, "t"), 2)["static"])
    energy = schema.SCALAR_NAMES.index("FieldEnergyProductionRate")
    assert unfitted[energy] > 1e5 * reports[index][energy]


def test_the_enthalpy_form_is_chosen_by_the_runs_it_did_not_see():
    """A pressure term in the data's enthalpy (IAPWS-like): the form with it predicts left-out
    runs best and is chosen; with too few runs for its coefficients, only simpler forms are tried."""
    from voxel_ode.data import start_scalars

    rng = np.random.default_rng(0)
    h = lambda t, p: 4150.0 * (t - 273.16) + 1.0e-3 * p  # noqa: E731
    runs = [[[t, p, h(t, p)] for t, p in ((rng.uniform(300, 330), rng.uniform(1e7, 3e7)),
                                          (rng.uniform(340, 400), rng.uniform(1e7, 3e7)))] for _ in range(8)]
    fitted = start_scalars.fit([{"enthalpy": r, "water": []} for r in runs])
    assert fitted["form"] == "affine_temperature_pressure" and fitted["left_out_relative_error"] < 1e-9
    assert abs(start_scalars.enthalpy(fitted, 350.0, 2e7) - h(350.0, 2e7)) < 1e-6 * h(350.0, 2e7)
    assert start_scalars.fit([{"enthalpy": r, "water": []} for r in runs[:3]])["form"] != "affine_temperature_pressure"
    assert start_scalars.fit([{"enthalpy": [], "water": []}] * 2) is None


def test_a_forecast_starts_from_the_delivered_rates_where_the_training_reports_follow_them():
    """Training runs whose first reports hold what a well held at its limit delivered (less than
    its rate, as the priors' wells deliver it): the fit takes the delivered rates and a forecast's
    t = 0 water and energy rates follow them; runs that reported their prescribed rates keep those."""
    from voxel_ode.data import start_scalars

    static = np.zeros((schema.N_STATIC, 2, 2, 2), np.float32)
    channel = lambda name: static[schema.STATIC_NAMES.index(name)]  # noqa: E731
    channel("IsActive")[...] = 1.0
    channel("InjRate")[0, 0, 0], channel("InjRate")[1, 1, 1] = 10.0, -10.0
    channel("Temperature0")[...], channel("Pressure0")[...] = 350.0, 2e7
    channel(schema.INJECTION_GAP)[0, 0, 0] = -40.0
    h = lambda t: 4200.0 * (t - 273.15)  # noqa: E731
    limited = [(10.0 * f, 10.0 * g) for f, g in ((0.6, 0.62), (0.8, 0.79), (0.7, 0.72), (1.0, 1.0))]
    row = lambda inj, prod: [inj * h(310.0), prod * h(350.0), 0.0, inj, prod]  # noqa: E731
    per_report = lambda d: np.array([[10.0, 10.0], d])  # noqa: E731  (row 0: the prescribed rates)
    held = start_scalars.fit([start_scalars.run_samples(static, [row(*d)], per_report(d)) for d in limited])
    assert held["water_rates"] == "delivered"
    start = start_scalars.estimate(static, held, delivered=per_report((6.5, 6.6)))
    np.testing.assert_allclose(start, row(6.5, 6.6), rtol=1e-6)
    kept = start_scalars.fit([start_scalars.run_samples(static, [row(10.0, 10.0)], per_report(d)) for d in limited])
    assert kept["water_rates"] == "prescribed"
    np.testing.assert_allclose(start_scalars.estimate(static, kept, delivered=per_report((6.5, 6.6))), row(10.0, 10.0),
                               rtol=1e-6)
    # a simulator that reports its initial state before the wells open: a forecast starts the same way
    closed = start_scalars.fit([start_scalars.run_samples(static, [row(0.0, 0.0)], per_report(d)) for d in limited])
    assert closed["water_rates"] == "none"
    np.testing.assert_array_equal(start_scalars.estimate(static, closed, delivered=per_report((6.5, 6.6))), np.zeros(5))


def test_water_rates_follow_the_priors_wells_where_the_training_reports_do():
    """Runs whose wells are held at a limit: their reported water rates fall year after year as
    the priors' wells' delivered rates do; the fit then takes those rates after the start, and a
    step's water rates become them, its energy rates and energy produced scaled alike. Where the
    reports hold the prescribed rates the model's own rates stay."""
    from voxel_ode.data import start_scalars

    static = np.zeros((schema.N_STATIC, 2, 2, 2), np.float32)
    channel = lambda name: static[schema.STATIC_NAMES.index(name)]  # noqa: E731
    channel("IsActive")[...] = 1.0
    channel("InjRate")[0, 0, 0], channel("InjRate")[1, 1, 1] = 10.0, -10.0
    channel("Temperature0")[...], channel("Pressure0")[...] = 350.0, 2e7
    years = np.arange(6)
    falling = np.stack([10.0 * 0.8 ** years, 10.0 * 0.85 ** years], 1)  # (T, 2) injected, produced
    reports = lambda water: np.column_stack([water[:, 0] * 1e5, water[:, 1] * 3e5, 0 * years, water])  # noqa: E731
    held = start_scalars.fit([start_scalars.run_samples(static, reports(falling * f), falling * f) for f in (1.0, 0.9)])
    assert held["rates_after_start"] == "delivered"
    kept = start_scalars.fit([start_scalars.run_samples(static, reports(np.full((6, 2), 10.0)), falling)] * 2)
    assert kept["rates_after_start"] == "model"

    previous = np.array([1e6, 3e6, 5e13, 10.0, 10.0])
    predicted = np.array([1e6, 3e6, 5e13 + 9e13, 10.0, 10.0])  # the model kept its rates
    step = start_scalars.follow_delivered(predicted, previous, (8.0, 5.0))
    np.testing.assert_allclose(step, [0.8e6, 1.5e6, 5e13 + 4.5e13, 8.0, 5.0])


@pytest.mark.parametrize("entry", ["no", {"form": "cubic", "coefficients": [1.0]},
                                   {"form": "affine_temperature", "coefficients": [1.0]},
                                   {"form": "scaled_linear", "coefficients": [1.0], "water_rates": "guessed"}])
def test_a_broken_start_enthalpy_entry_is_one_line(entry):
    from voxel_ode.data import start_scalars

    with pytest.raises(UserError, match="stats.json: start_enthalpy: not a known form"):
        start_scalars.check(entry, "stats.json")
    start_scalars.check({"form": "affine_temperature", "coefficients": [1.0, 4200.0]}, "stats.json")


def test_the_forecast_start_is_said_in_one_line():
    from voxel_ode.data import start_scalars

    assert "no enthalpy fitted" in start_scalars.describe(None)
    fitted = {"form": "affine_temperature", "coefficients": [0.0, 4200.0], "runs": 4, "left_out_relative_error": 0.01,
              "water_rates": "delivered", "rates_after_start": "delivered"}
    line = start_scalars.describe(fitted)
    assert "\n" not in line and "delivered in year 1" in line and "after it: the priors' delivered ones" in line
    assert "after it" not in start_scalars.describe(dict(fitted, rates_after_start="model"))
    assert "delivered rates" in start_scalars.after_start_note(fitted)
    assert start_scalars.after_start_note(dict(fitted, rates_after_start="model")) is None
