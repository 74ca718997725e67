"""`voxel-ode synth --engine darts --plan`: a sweep plan's rows acting on an open-darts run's wells
(synth/darts_plan.py) the way `voxel-ode sweep` acts on the base's InjRate (inference/scenarios.py).
No open-darts needed: the draw, the file reading and the row's changes are numpy."""

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from voxel_ode import cli
from voxel_ode.data import plan, raw
from voxel_ode.inference import scenarios
from voxel_ode.synth import darts_draw, darts_plan
from voxel_ode.synth import open_darts as synth_darts
from voxel_ode.synth.darts_conventions import Conventions, file_arrays

GRID = (24, 12, 14)
ROWS = [{"name": "base"}, {"name": "half", "scale_rates": "0.5"}, {"name": "shut", "shut": "P1"},
        {"name": "mix", "rate_I1": "30", "shut": "I2", "scale_rates": "1.3"}, {"name": "p", "rate_P2": "-4.5"}]


def _run_with_two_of_each():
    """A drawn run with 2 injectors and 2 producers (the first seed that gives them)."""
    for index in range(1, 60):
        run = darts_draw.draw_run(GRID, 7, index)
        if run["params"]["n_inj"] == 2 and run["params"]["n_prod"] == 2:
            return run
    raise AssertionError("no draw with 2 + 2 wells")


def _sweep_base(run) -> scenarios.Base:
    """What `voxel-ode sweep` reads from the run's file (the grids as stored: float32)."""
    inj, is_well = darts_draw.well_grids(run, GRID)
    inj = inj.astype(np.float32).astype(np.float64)
    return scenarios.Base(Path("base.h5"), GRID, inj, is_well.astype(np.float64), run["active"],
                          run["permx"].astype(np.float32).astype(np.float64), np.zeros(26),
                          plan.find_wells(inj, run["active"]), {})


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_a_row_on_the_runs_wells_gives_the_sweeps_injrate(row):
    run = _run_with_two_of_each()
    base = _sweep_base(run)
    sc = plan.parse_row(dict(row), 1)
    changed = darts_plan.apply_scenario(run, sc)
    inj_sim, is_well_sim = darts_draw.well_grids(changed, GRID)
    inj_sweep, is_well_sweep, _ = scenarios.scenario_grids(base, sc)
    np.testing.assert_allclose(inj_sim, inj_sweep, rtol=1e-6, atol=1e-6 * np.abs(inj_sweep).max())
    np.testing.assert_array_equal(is_well_sim, is_well_sweep)  # a shut well stays drilled in both
    assert changed["params"]["q_inj"] == pytest.approx(inj_sweep[inj_sweep > 0].sum(), rel=1e-6)
    assert run["wells"] is not changed["wells"]  # the base run is left as it was


@pytest.mark.parametrize("row, words", [
    ({"name": "a", "add_well": "X:3:4:0:5:2"}, "add_well: not simulated"),
    ({"name": "m", "move_well": "I1:3:4:0:5"}, "move_well: not simulated"),
    ({"name": "t", "param:InjectionTemperature": "320"}, "param:InjectionTemperature: not simulated"),
    ({"name": "k", "rate_P1": "5"}, "would turn a producer into the other kind"),
    ({"name": "n", "shut": "I9"}, "no well 'I9'"),
])
def test_a_row_the_simulator_cannot_take_is_one_line(tmp_path, row, words):
    run = _run_with_two_of_each()
    path = tmp_path / "plan.json"
    path.write_text(json.dumps([{"name": "ok", "scale_rates": 2}, row]))
    with pytest.raises(plan.PlanError) as err:
        darts_plan.load_scenarios(path, run)
    assert len(err.value.lines) == 1 and "\n" not in err.value.lines[0]
    assert f"row 2 ('{row['name']}')" in err.value.lines[0] and words in err.value.lines[0]


def test_a_file_gives_back_its_run(tmp_path):
    """run_from_file rebuilds the draw from a file in other conventions (m2, shuffled ParamsScalar):
    the same rock, parameters and InjRate."""
    conv = Conventions(permeability_unit="m2", params_order=tuple(reversed(range(26))))
    run = _run_with_two_of_each()
    inj, is_well = darts_draw.well_grids(run, GRID)
    n = 2
    sim = {"FaultId": run["fault_id"], "IsActive": run["active"].astype(np.uint8), "IsWell": is_well,
           "InjRate": inj.astype(np.float32), "PermX": run["permx"], "PermY": run["permx"], "PermZ": run["permz"],
           "Porosity": run["poro"].astype(np.float32), "ParamsScalar": darts_draw.params_vector(run),
           "Pressure0": np.ones(GRID, np.float32),
           "Temperature0": np.broadcast_to(run["temperature_profile"][:, None, None], GRID).astype(np.float32),
           "Pressure": np.ones((n + 1,) + GRID, np.float32), "Temperature": np.ones((n + 1,) + GRID, np.float32),
           "report_days": np.arange(n + 1) * 365.0, "wells": run["wells"], "seed": 7, "index": 3}
    sim |= {name: np.zeros(n + 1) for name in ("FieldEnergyInjectionRate", "FieldEnergyProductionRate",
                                               "FieldEnergyProductionTotal", "FieldWaterInjectionRate",
                                               "FieldWaterProductionRate")}
    path = raw.write_simulation(tmp_path / "v2.4_0001.h5", file_arrays(sim, conv), None)
    back, grid = darts_plan.run_from_file(path, conv)
    assert grid == GRID and back["seed"] == 7
    np.testing.assert_allclose(back["permx"], run["permx"], rtol=1e-6)
    for key in ("t_inj", "top_depth", "hcap", "cond"):
        assert back["params"][key] == pytest.approx(run["params"][key], rel=1e-6)
    np.testing.assert_allclose(darts_draw.well_grids(back, grid)[0], inj, rtol=1e-5, atol=1e-6)


def test_the_cli_sends_each_row_to_a_worker(monkeypatch, tmp_path):
    """--plan with --base_seed/--base_index: one worker job per row, named by the row, the row in it."""
    monkeypatch.setattr(synth_darts, "darts_available", lambda: True)
    run = _run_with_two_of_each()
    index = next(i for i in range(1, 60) if darts_draw.draw_run(GRID, 7, i)["wells"] == run["wells"])
    (tmp_path / "plan.csv").write_text("name,scale_rates,shut\nbase,,\nlow,0.5,P2\n")
    jobs = []

    def fake_run(cmd, cwd, **kwargs):
        jobs.append(json.loads(cmd[-1]))
        return subprocess.CompletedProcess(cmd, 0, stdout="VOXEL_ODE_DONE x 1.0\n", stderr="")

    monkeypatch.setattr(synth_darts.subprocess, "run", fake_run)
    args = ["synth", "--engine", "darts", "--base_seed", "7", "--base_index", str(index), "--grid", *map(str, GRID),
            "--plan", str(tmp_path / "plan.csv"), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    assert [Path(j["path"]).name for j in jobs] == ["base.h5", "low.h5"]
    assert jobs[1]["row"] == {"name": "low", "scale_rates": "0.5", "shut": "P2"}
    assert jobs[1]["base"] == {"seed": 7, "index": index}
    assert cli.main(args[:4] + args[6:]) == 1  # --plan without a base


DEV_RUN = Path(__file__).resolve().parents[2] / "shared" / "darts-dev" / "data" / "v2.4_0000.h5"


@pytest.mark.skipif(not synth_darts.darts_available() or not DEV_RUN.exists(),
                    reason="needs open-darts and ../shared/darts-dev")
def test_a_darts_dev_run_resimulated_with_a_plan(tmp_path):
    """One year of darts-dev run 0: unchanged, the file's energy; P2 shut and the rest x1.2, the
    producers deliver what the row asks."""
    (tmp_path / "plan.csv").write_text("name,scale_rates,shut\nbase,,\nshut,1.2,P2\n")
    done = synth_darts.simulate_plan(tmp_path / "out", {"file": str(DEV_RUN)}, tmp_path / "plan.csv", n_steps=1,
                                     progress=False)
    wells = darts_plan.named_wells(darts_plan.run_from_file(DEV_RUN)[0])
    p1 = next(w for w in wells if w.name == "P1")
    with h5py.File(DEV_RUN) as dev, h5py.File(done["base"][0]) as base, h5py.File(done["shut"][0]) as shut:
        assert base["Output/FieldEnergyProductionTotal"][0] == pytest.approx(
            dev["Output/FieldEnergyProductionTotal"][0], rel=1e-4)
        assert shut["Output/FieldWaterProductionRate"][0] == pytest.approx(-1.2 * p1.total, rel=1e-3)
        assert json.loads(shut.attrs["scenario"]) == {"name": "shut", "scale_rates": "1.2", "shut": "P2"}
