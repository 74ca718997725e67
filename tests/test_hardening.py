"""Hostile files, edited statistics and leftovers (issue #24): each case gives one line naming
the file and the problem, or the clean input's result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fixtures import DESCRIPTION, make_raw_arrays, write_raw_dir, write_raw_sim
from voxel_ode import cli, schema
from voxel_ode.data import checks
from voxel_ode.data import prep as dp
from voxel_ode.data.description import Description
from voxel_ode.utils import UserError
from voxel_ode.data.stats import Stats
from voxel_ode.model import checkpoint
from voxel_ode.data import pack
from voxel_ode.data import stats as stats_mod

REPO = Path(__file__).resolve().parents[1]
GRID = dict(grid=(6, 5, 4), n_t=3)
SMALL = dict(patch_size=(4, 4, 4), stride=(2, 2, 2), progress=False)


def _active_cells(a) -> np.ndarray:
    return np.argwhere(a["IsActive"] == 1)


def _one_line_cli(capsys, argv) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, [line for line in captured.err.splitlines() if "error" in line] + \
        [line for line in captured.out.splitlines() if line.startswith("  ")]


# ---------------------------------------------------------------------------
# raw files: physical ranges, before any solve
# ---------------------------------------------------------------------------
def _perm_everywhere(a):
    a["PermX"][a["IsActive"] == 1] = 1e30


def _perm_one_cell(a):
    a["PermX"][tuple(_active_cells(a)[3])] = 1e30


RANGE_CASES = {
    "perm_all_active": (_perm_everywhere, "Input/PermX", "value 1e+30"),
    "perm_one_cell": (_perm_one_cell, "Input/PermX", "value 1e+30"),
    "perm_negative": (lambda a: a["PermZ"].__setitem__(tuple(_active_cells(a)[0]), -1e-14), "Input/PermZ", "-1e-14"),
    "porosity_above_1": (lambda a: a["Porosity"].__setitem__(tuple(_active_cells(a)[0]), 1.5), "Input/Porosity", "1.5"),
    "pressure_zero": (lambda a: a["Pressure"].__setitem__((1,) + tuple(_active_cells(a)[0]), 0.0),
                      "Output/Pressure", "at t=1"),
    "temperature_hot": (lambda a: a["Temperature0"].__setitem__(tuple(_active_cells(a)[0]), 5000.0),
                        "Input/Temperature0", "5000"),
    "no_active_cell": (lambda a: a["IsActive"].__setitem__(slice(None), 0.0), "Input/IsActive", "no active cell"),
    "no_well": (lambda a: (a["IsWell"].__setitem__(slice(None), 0.0), a["InjRate"].__setitem__(slice(None), 0.0)),
                "Input/IsWell", "no well"),
    "cell_size_zero": (lambda a: a["ParamsScalar"].__setitem__(schema.PARAM_NAMES.index("CellSizeX"), 0.0),
                       "(description)", "CellSizeX = 0 m"),
}


@pytest.mark.parametrize("case", sorted(RANGE_CASES))
def test_impossible_values_are_one_line_errors_in_validate_inspect_and_prep(tmp_path, capsys, monkeypatch, case):
    change, dataset, what = RANGE_CASES[case]
    # a solve must never run on such a file: make any solve fail loudly
    monkeypatch.setattr(pack, "derive_channels", lambda *a, **k: pytest.fail("a solve ran on an impossible file"))
    raw = tmp_path / "raw"
    a = make_raw_arrays(**GRID, seed=5)
    change(a)
    bad = write_raw_sim(raw / "v2.4_0002.h5", a)
    (raw / "description.json").write_text(json.dumps(DESCRIPTION))
    problems = pack.validate_raw(bad)
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: {dataset}: ") and what in problems[0], problems
    assert cli.main(["inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"problems:\n  {problems[0]}" in out
    rc, lines = _one_line_cli(capsys, ["prep", "--input_root", str(raw), "--out_root", str(tmp_path / "out")])
    assert rc == 1 and lines == [f"voxel-ode prep: error: {problems[0]}"]  # its own line, not the bar's


def test_skip_bad_skips_impossible_values_and_the_rest_equals_a_clean_prep(tmp_path):
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    write_raw_dir(raw, n=3, **GRID)
    write_raw_dir(clean, n=3, **GRID)
    a = make_raw_arrays(**GRID, seed=7)
    _perm_everywhere(a)
    write_raw_sim(raw / "v2.4_0004.h5", a)
    s = dp.prep(raw, tmp_path / "out", n_test=1, skip_bad=True, **SMALL)
    assert len(s["skipped"]) == 1 and "v2.4_0004.h5: Input/PermX: value 1e+30" in s["skipped"][0]
    dp.prep(clean, tmp_path / "out_clean", n_test=1, **SMALL)
    got, want = Stats.load(tmp_path / "out"), Stats.load(tmp_path / "out_clean")
    assert stats_mod.first_difference(stats_mod.result_part(got), stats_mod.result_part(want)) is None


def test_unusual_values_are_warnings_that_inspect_lists(tmp_path, capsys):
    a = make_raw_arrays(**GRID)
    a["Pressure0"] /= 1e5  # bar, not Pa
    a["Pressure"] /= 1e5
    path = write_raw_sim(tmp_path / "v2.4_0001.h5", a)
    assert pack.validate_raw(path) == []  # legal: not an error
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"  warning: {path}: Input/Pressure0: " in out and "bar or MPa" in out
    assert "Output/Pressure: " in out and "problems: none" not in out


def test_permeability_in_millidarcy_passes_the_range_checks():
    # (the solves need m^2: converting is unit inference's job, not the range checks')
    a = make_raw_arrays(**GRID)
    for name in ("PermX", "PermY", "PermZ"):
        a[name] = (a[name] / 9.869233e-16).astype(np.float32)  # m^2 -> mD: ~100 mD
    mask = a["IsActive"] == 1
    assert checks.grid_problems(a, mask, (100.0, 80.0, 10.0)) == (None, [])
    a["PermX"][mask] = 2e7  # above 10,000 darcy in mD: impossible in either unit
    assert "Input/PermX: value 2e+07" in checks.grid_problems(a, mask, (100.0, 80.0, 10.0))[0]


def test_a_failing_solve_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from voxel_ode.physics import priors as physics_priors

    def singular(*args, **kwargs):
        raise RuntimeError("Factor is exactly singular")

    monkeypatch.setattr(physics_priors, "priors", singular)
    path = write_raw_sim(tmp_path / "v2.4_0001.h5", **GRID)
    desc = Description.from_dict(DESCRIPTION)
    problems, _ = pack.scan_sim(path, desc=desc)
    assert problems == [f"{path}: (derived channels): physics priors failed (Factor is exactly singular); "
                        "check the permeability, porosity and InjRate values and the dataset description"]


# ---------------------------------------------------------------------------
# a tiny trained checkpoint for the statistics / checkpoint cases
# ---------------------------------------------------------------------------
TINY = dict(base_channels=8, depth=2, receptive_field_radius=1, num_threads=1, quiet=True,
            batch_size=8, log_every=1, eval_every=0)


@pytest.fixture(scope="module")
def trained(small_prepped, tmp_path_factory):
    from voxel_ode.training.train import train

    save = tmp_path_factory.mktemp("hardening_ckpt")
    train(prepped_root=str(small_prepped), save_dir=str(save), max_steps=2, ckpt_every=100, **TINY)
    return small_prepped, save / "last.pt"


def _rollout(capsys, ckpt, sim, tmp_path, *extra) -> tuple[int, list[str]]:
    return _one_line_cli(capsys, ["rollout", "--ckpt_path", str(ckpt), "--prepped_sim_path", str(sim),
                                  "--save_path", str(tmp_path / "pred.h5"), "--no_progress", "--no-xdmf", *extra])


def _test_sim(prepped) -> Path:
    return next((prepped / "test").glob("*" + schema.PREPPED_SUFFIX))


STATS_EDITS = {
    "transform": (lambda s: s["static"]["transform"].__setitem__(schema.STATIC_NAMES.index("Porosity"), "log10"),
                  "static/transform[", "values differ"),
    "per_sim_rms": (lambda s: s["delta"]["per_sim_rms"][0].__setitem__(0, s["delta"]["per_sim_rms"][0][0] * 3),
                    "delta/per_sim_rms[0][0]", "values differ"),
    "quantile": (lambda s: s["delta"]["abs_quantiles"]["0.9"].__setitem__(1, 7.0),
                 "delta/abs_quantiles/0.9[1]", "values differ"),
    "description": (lambda s: s["description"].__setitem__("permeability_unit", "mD"), "description",
                    "values differ"),
    "unknown_transform": (lambda s: s["params"]["transform"].__setitem__(0, "sqrt"), "params/transform",
                          "unknown transform 'sqrt'"),
    "zero_std": (lambda s: s["dynamic"]["std"].__setitem__(0, 0.0), "dynamic/std", "not > 0"),
    "nan_quantile": (lambda s: s["delta"]["abs_quantiles"]["0.5"].__setitem__(0, float("nan")),
                     "delta/abs_quantiles/0.5", "non-finite"),
}


@pytest.mark.parametrize("case", sorted(STATS_EDITS))
def test_edited_stats_json_given_to_rollout_is_one_line(trained, tmp_path, capsys, case):
    prepped, ckpt = trained
    edit, where, what = STATS_EDITS[case]
    stats = json.loads((prepped / schema.STATS_FILE).read_text())
    edit(stats)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    rc, lines = _rollout(capsys, ckpt, _test_sim(prepped), tmp_path, "--stats_path", str(path))
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"voxel-ode rollout: error: {path}: {where}") and what in lines[0], lines
    assert not (tmp_path / "pred.h5").exists()


def test_unedited_stats_json_passes_and_checkpoints_without_their_record_are_refused(trained, tmp_path, capsys):
    prepped, ckpt = trained
    rc, _ = _rollout(capsys, ckpt, _test_sim(prepped), tmp_path, "--stats_path", str(prepped / schema.STATS_FILE))
    assert rc == 0 and (tmp_path / "pred.h5").is_file()
    # without the stats or their digest nothing tells what data the model fits: refused, not trusted
    for key in ("stats_digest", "stats"):
        old = torch.load(ckpt, weights_only=True)
        del old[key]
        torch.save(old, tmp_path / "old.pt")
        rc, lines = _rollout(capsys, tmp_path / "old.pt", _test_sim(prepped), tmp_path, "--stats_path",
                             str(prepped / schema.STATS_FILE))
        assert rc == 1 and len(lines) == 1 and f"old.pt: {key}: missing, so nothing tells what data" in lines[0]


@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0])
def test_checkpoint_with_bad_embedded_std_is_refused(trained, tmp_path, capsys, value):
    prepped, ckpt = trained
    state = torch.load(ckpt, weights_only=True)
    state["stats"]["dynamic"]["std"][0] = value
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    rc, lines = _rollout(capsys, bad, _test_sim(prepped), tmp_path)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"voxel-ode rollout: error: {bad} (stats inside): "
                                                              "dynamic/std: "), lines
    assert not (tmp_path / "pred.h5").exists()


def test_checkpoint_whose_stats_were_edited_within_range_fails_its_digest(trained, tmp_path, capsys):
    prepped, ckpt = trained
    state = torch.load(ckpt, weights_only=True)
    state["stats"]["dynamic"]["mean"][0] += 200.0  # a plausible value: only the digest can tell
    torch.save(state, tmp_path / "edited.pt")
    rc, lines = _rollout(capsys, tmp_path / "edited.pt", _test_sim(prepped), tmp_path)
    assert rc == 1 and lines == [f"voxel-ode rollout: error: {tmp_path / 'edited.pt'}: stats: the stored stats do not "
                                 "match the digest written with them (edited checkpoint?)"]


def test_huge_model_config_is_refused_before_allocating(trained, tmp_path, monkeypatch):
    from voxel_ode.model import network as M
    from voxel_ode.training.train import train

    prepped, ckpt = trained
    state = torch.load(ckpt, weights_only=True)
    state["model_config"]["base_channels"] = 100_000
    bad = tmp_path / "huge.pt"
    torch.save(state, bad)
    monkeypatch.setattr(M.VoxelAutoRegressor, "__init__", lambda *a, **k: pytest.fail("allocated a model"))
    with pytest.raises(UserError) as err:
        checkpoint.load_model(bad)
    assert str(err.value) == (f"{bad}: model config: base_channels: 100000 is not an integer in [1, 2048]")
    with pytest.raises(UserError) as err:
        train(prepped_root=str(prepped), save_dir=str(tmp_path / "r"), resume=str(bad), max_steps=3, **TINY)
    assert str(err.value).startswith(f"{bad}: model config: base_channels: 100000")
    with pytest.raises(UserError, match=r"about 5.8e\+10 parameters"):  # each value in bounds, the product not
        M.ModelConfig(base_channels=2048, depth=256)


def test_truncated_checkpoint_to_resume_names_the_cause(trained, tmp_path):
    from voxel_ode.training.train import train

    prepped, ckpt = trained
    data = Path(ckpt).read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        train(prepped_root=str(prepped), save_dir=str(tmp_path / "r"), resume=str(bad), max_steps=3, **TINY)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: checkpoint: cannot load with weights_only=True (RuntimeError: ") and "\n" not in msg
    assert "failed finding central directory" in msg  # the reader's own words, not just the type
    from voxel_ode.model.checkpoint import load_model

    with pytest.raises(UserError) as err:  # rollout's loader reads through the same function
        load_model(bad)
    assert str(err.value) == msg


def test_resume_with_other_stats_is_refused(trained, tmp_path):
    from voxel_ode.training.train import train

    prepped, ckpt = trained
    other = tmp_path / "prepped"
    shutil.copytree(prepped, other)
    stats = json.loads((other / schema.STATS_FILE).read_text())
    stats["delta"]["std"][1] *= 2
    (other / schema.STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(UserError, match=r"stats.json: delta/std\[1\]: values differ from the stats the checkpoint"):
        train(prepped_root=str(other), save_dir=str(tmp_path / "r"), resume=str(ckpt), max_steps=3, **TINY)


# ---------------------------------------------------------------------------
# damaged or empty prepped files in training and rollout
# ---------------------------------------------------------------------------
def test_truncated_prepped_file_in_training_is_one_line(small_prepped, tmp_path):
    from voxel_ode.training.train import train

    root = tmp_path / "prepped"
    shutil.copytree(small_prepped, root)
    victim = sorted((root / "train").glob("*" + schema.PREPPED_SUFFIX))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError) as err:
        train(prepped_root=str(root), save_dir=str(tmp_path / "ck"), max_steps=2, **TINY)
    assert str(err.value).startswith(f"{victim}: (file): cannot open the prepped run (truncated or not HDF5?")


def test_prepped_run_without_active_cells_is_refused_by_rollout(trained, tmp_path, capsys):
    prepped, ckpt = trained
    empty = tmp_path / "empty.prepped.h5"
    shutil.copy(_test_sim(prepped), empty)
    with h5py.File(empty, "r+") as f:
        f[schema.PREPPED_STATIC][schema.STATIC_NAMES.index("IsActive")] = 0.0
    rc, lines = _rollout(capsys, ckpt, empty, tmp_path)
    assert rc == 1 and lines == [f"voxel-ode rollout: error: {empty}: /static: no active cell (prep refuses such runs)"]


# ---------------------------------------------------------------------------
# leftovers of killed runs; a killed and resumed training equals an uninterrupted one
# ---------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_prep_removes_a_killed_preps_partial_folder_and_keeps_a_live_ones(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw_dir(raw, n=2, **GRID)
    dead, live = out / f".partial-{_dead_pid()}", out / f".partial-{os.getppid()}"
    for d in (dead, live):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.prepped.h5").write_bytes(b"half")
    (out / f".stats.json.tmp-{_dead_pid()}").write_text("{")
    dp.prep(raw, out, n_test=1, **SMALL)
    assert not dead.exists() and live.is_dir() and not list(out.glob(".stats.json.tmp-*"))


def test_killed_training_resumes_cleanly_and_equals_an_uninterrupted_run(small_prepped, tmp_path):
    """Kill -9 a training process right after (or during) a checkpoint write, resume into the same
    folder: no temp files, no duplicate metrics steps, the same losses and weights as a run that
    was never killed."""
    from voxel_ode.training.train import train

    run = dict(max_steps=24, ckpt_every=4, **TINY)
    train(prepped_root=str(small_prepped), save_dir=str(tmp_path / "a"), **run)

    b = tmp_path / "b"
    cmd = [sys.executable, "-m", "voxel_ode.cli", "train", "--prepped_root", str(small_prepped), "--save_dir", str(b)]
    for key, value in run.items():
        cmd += [f"--{key}"] if value is True else [] if value is False else [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # during a checkpoint write after the first, or just after one
        if (b / "step4.pt").exists() and (list(b.glob(".step*.pt.tmp-*")) or (b / "step8.pt").exists()):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "last.pt").exists(), "the run ended before it was killed: make it longer"
    # what a kill during torch.save leaves (whether or not this kill caught one)
    (b / f".step12.pt.tmp-{proc.pid}").write_bytes(b"half a checkpoint")
    resume = max(b.glob("step*.pt"), key=lambda p: int(p.stem[4:]))
    with open(b / "metrics.jsonl", "a") as f:  # the killed stretch after the checkpoint, then a torn line
        f.write(json.dumps({"event": "train", "step": int(resume.stem[4:]) + 1, "loss": -1.0}) + "\n")
        f.write('{"event": "train", "step": 99, "lo')

    train(prepped_root=str(small_prepped), save_dir=str(b), resume=str(resume), **run)
    assert not list(b.glob(".*tmp-*"))
    recs = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["event"] == "train"]
    assert steps == list(range(1, 25))  # each step once, in order
    key = lambda d: {r["step"]: (r["loss"], r["lr"], r["epoch"]) for r in map(json.loads, (d / "metrics.jsonl")
                     .read_text().splitlines()) if r["event"] == "train"}
    assert key(b) == key(tmp_path / "a")  # exactly equal
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_meets_only_data_prepared_like_its_training_data(trained, tmp_path, capsys):
    """The same runs prepped without the physics priors, or with another description: evaluate and a
    prepped-file rollout refuse them with one line naming both sides and the first difference;
    raw files are prepared with the checkpoint's own description, so they always fit."""
    import shutil

    from fixtures import DESCRIPTION

    prepped, ckpt = trained
    raw = prepped.parent / "raw"
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in raw.glob("v2.4_*.h5"):
        shutil.copy(f, bare / f.name)
    dp.prep(bare, tmp_path / "no_priors", n_test=1, calibrate=False, **SMALL)  # nothing declared: no priors
    rc, lines = _one_line_cli(capsys, ["evaluate", "--prepped_root", str(tmp_path / "no_priors"), "--ckpt_path",
                                       str(ckpt), "--out", str(tmp_path / "ev"), "--no_progress"])
    assert rc == 1 and len(lines) == 1
    assert "no_priors/stats.json: description/" in lines[0] or "no_priors/stats.json: priors" in lines[0]
    assert not (tmp_path / "ev").exists()  # refused before any folder was made
    assert "prepared differently from the data" in lines[0] and str(ckpt) in lines[0]
    other = dict(DESCRIPTION, quantities={**DESCRIPTION["quantities"], "CellSizeX": 250.0})
    (bare / "description.json").write_text(json.dumps(other))
    dp.prep(bare, tmp_path / "other_cells", n_test=1, **SMALL)
    rc, lines = _rollout(capsys, ckpt, _test_sim(tmp_path / "other_cells"), tmp_path / "new" / "deep",
                         "--plots", str(tmp_path / "pics"))
    assert rc == 1 and len(lines) == 1
    assert not (tmp_path / "new").exists() and not (tmp_path / "pics").exists()  # a refusal leaves no folders
    assert "v2.4_0001.prepped.h5: description/quantities/CellSizeX/" in lines[0]  # declared 250 m, not ParamsScalar[19]
    assert "prepared differently from the data" in lines[0] and "(data vs checkpoint)" in lines[0]
    # the raw file itself: prepared in memory as the checkpoint's data was
    rc, _ = _one_line_cli(capsys, ["rollout", "--ckpt_path", str(ckpt), "--raw_sim_path",
                                   str(bare / "v2.4_0001.h5"), "--save_path", str(tmp_path / "raw.h5"),
                                   "--no_progress", "--no-xdmf"])
    assert rc == 0


def _external_target(tmp_path) -> Path:
    """A file outside the input folder holding a grid of the right shape."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with h5py.File(outside / "secret.h5", "w") as f:
        f["PermX"] = np.full(GRID["grid"], 1e-13, np.float32)
    return outside / "secret.h5"


@pytest.mark.parametrize("kind", ["external_link", "virtual", "external_storage"])
def test_data_from_outside_the_file_is_refused(tmp_path, capsys, kind):
    """HDF5 can point a dataset at other files: an external link, a virtual dataset, external raw
    storage. Prep and inspect refuse each in one line naming the dataset (never reading it)."""
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    target = _external_target(tmp_path)
    path = raw / "v2.4_0002.h5"
    with h5py.File(path, "a") as f:
        del f["Input/PermX"]
        if kind == "external_link":
            f["Input/PermX"] = h5py.ExternalLink(str(target), "PermX")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=GRID["grid"], dtype=np.float32)
            layout[...] = h5py.VirtualSource(str(target), "PermX", shape=GRID["grid"])
            f.create_virtual_dataset("Input/PermX", layout)
        else:
            raw_bytes = tmp_path / "outside" / "perm.bin"
            np.full(GRID["grid"], 1e-13, np.float32).tofile(raw_bytes)
            f.create_dataset("Input/PermX", shape=GRID["grid"], dtype=np.float32, external=[(str(raw_bytes), 0, 2**20)])
    with pytest.raises(UserError, match=r"v2\.4_0002\.h5: Input/PermX: .*refused, reading stays inside the file"):
        dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)
    rc, lines = _one_line_cli(capsys, ["inspect", str(path)])
    assert rc == 1 and any("Input/PermX: " in line and "refused" in line for line in lines)


def test_named_pipes_and_huge_declared_grids_are_refused_before_reading(tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    os.mkfifo(raw / "v2.4_0009.h5")  # opening it would wait for a writer forever
    with pytest.raises(UserError, match=r"v2\.4_0009\.h5: .*a named pipe, not a file"):
        dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)
    os.mkfifo(tmp_path / "description.json")
    with pytest.raises(UserError, match=r"description.json: dataset description: a named pipe"):
        dp.prep(raw, tmp_path / "out", n_test=1, description_path=tmp_path / "description.json", **SMALL)
    (raw / "v2.4_0009.h5").unlink()
    # a file that declares a grid far larger than this machine: said before any allocation
    big = raw / "v2.4_0000.h5"  # the first by name: the layout of the others is checked against it
    with h5py.File(big, "w") as f:
        for name in schema.RAW_STATIC_NAMES:
            f.create_dataset(schema.raw_path(name), shape=(2000, 2000, 2000), dtype=np.float32)
        f[schema.raw_path(schema.PARAMS_SCALAR)] = np.zeros(schema.N_PARAMS, np.float32)
        for name in schema.DYNAMIC_NAMES:
            f.create_dataset(schema.raw_path(name), shape=(3, 2000, 2000, 2000), dtype=np.float32)
        for name in schema.SCALAR_NAMES:
            f[schema.raw_path(name)] = np.zeros(3)
    assert big.stat().st_size < 1e6
    monkeypatch.setenv("VOXEL_ODE_MAX_MEMORY_GB", "16")
    rc, lines = _one_line_cli(capsys, ["prep", "--input_root", str(raw), "--out_root", str(tmp_path / "o")])
    assert rc == 1 and len(lines) == 1
    assert "v2.4_0000.h5: Input/IsActive: grid (2000, 2000, 2000) with 3 reports needs about" in lines[0]
    assert "VOXEL_ODE_MAX_MEMORY_GB" in lines[0]


def _worker_dies(job):
    os._exit(9)  # what a kill -9 or the out-of-memory killer does to a prep worker


def test_output_folders_one_process_writable_and_a_dead_worker_is_one_line(tmp_path, capsys, monkeypatch):
    from voxel_ode import files
    from voxel_ode.data import pack

    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    with files.folder_lock(tmp_path / "out", "prep"):  # another prep holds the folder
        with pytest.raises(UserError, match=r"out: in use by voxel-ode prep \(process \d+"):
            dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)
    dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)  # released with its holder
    (tmp_path / "a_file").write_text("")
    rc, lines = _one_line_cli(capsys, ["prep", "--input_root", str(raw), "--out_root", str(tmp_path / "a_file")])
    assert rc == 1 and "a_file: out_root: not a writable folder" in lines[0]
    monkeypatch.setattr(pack, "process_sim", _worker_dies)
    with pytest.raises(UserError, match="a worker process died while packing"):
        dp.prep(raw, tmp_path / "out2", n_test=1, workers=2, **SMALL)


def test_nan_loss_a_used_save_dir_and_zero_tiles(trained, tmp_path, capsys):
    prepped, ckpt = trained
    from voxel_ode.training.train import train

    save = tmp_path / "ck"
    train(prepped_root=str(prepped), save_dir=str(save), max_steps=2, ckpt_every=1, **TINY)
    first = {p.name: p.read_bytes() for p in save.iterdir() if p.is_file() and p.suffix in (".pt", ".jsonl")}
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+: stopped before updating the weights"):
        train(prepped_root=str(prepped), save_dir=str(save), max_steps=2, lr=1e30, warmup_steps=0, **TINY)
    # the earlier run's files were moved aside whole, not deleted or mixed with the new run's
    earlier = list((save / "earlier").iterdir())
    assert len(earlier) == 1 and {p.name: p.read_bytes() for p in earlier[0].iterdir()} == first
    rc, lines = _rollout(capsys, ckpt, _test_sim(prepped), tmp_path, "--tile", "0", "0", "0")
    assert rc == 1 and "--tile: needs three sizes of at least 1 cell" in lines[0]


KILL_DURING_SWAP = """
import os, sys
from voxel_ode import files
from voxel_ode.data.prep import prep
calls, real = [0], os.replace
def replace(a, b):
    if ".previous-" in str(a) + str(b) or (".partial-" in str(a) and ".partial-" not in str(b)):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os._exit(9)  # as a kill -9 would: no cleanup runs
    real(a, b)
files.os.replace = replace
prep(sys.argv[1], sys.argv[2], n_test=1, patch_size=(4, 4, 4), stride=(2, 2, 2), progress=False)
"""


def test_a_prep_killed_while_swapping_its_output_leaves_the_earlier_one(tmp_path):
    """Kill the second prep of a folder at each rename of its swap: the first prep's finished output
    is what the folder holds afterwards (put back by the next reader), never a mix."""
    raw_a, raw_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    write_raw_dir(raw_a, n=3, **GRID)
    write_raw_dir(raw_b, n=4, **GRID)  # another input: one more run
    dp.prep(raw_a, out, n_test=1, **SMALL)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for k in range(1, 11):  # 5 names out, 5 in: every point of the swap
        done = subprocess.run([sys.executable, "-c", KILL_DURING_SWAP, str(raw_b), str(out), str(k)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        assert done.returncode == 9, done.stderr[-2000:]
        stats = Stats.load(out)  # puts the earlier output back
        assert stats["train_sims"] == ["train/v2.4_0002.prepped.h5", "train/v2.4_0003.prepped.h5"], k
        now = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()  # a killed run's
               and not str(p.relative_to(out)).startswith((".partial-", ".voxel-ode.lock"))}  # leftovers: reused
        assert now == before, k
    dp.prep(raw_b, out, n_test=1, **SMALL)  # uninterrupted: the new output, whole
    assert len(Stats.load(out)["train_sims"]) == 3


ULIMITED_PREP = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from voxel_ode.cli import main
sys.exit(main(["prep", "--input_root", sys.argv[1], "--out_root", sys.argv[2]]))
"""


def test_a_file_size_limit_is_one_line_before_any_write(tmp_path):
    """HDF5 crashed (exit -11) writing past ulimit -f; the limit is checked first."""
    write_raw_dir(tmp_path / "raw", n=3, **GRID)
    done = subprocess.run([sys.executable, "-c", ULIMITED_PREP, str(tmp_path / "raw"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert "prep writes files of about" in lines[0] and "file-size limit of 0.02 MB (ulimit -f)" in lines[0]


def test_a_test_run_copied_into_the_training_split_is_named(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    shutil.copy(raw / "v2.4_0001.h5", raw / "v2.4_0009.h5")  # the test run, again, as a training run
    dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)
    err = capsys.readouterr().err
    assert "v2.4_0009.h5 (train) holds the same run as" in err and "v2.4_0001.h5 (test)" in err
    assert "flatters every test score" in err
    assert len(Stats.load(tmp_path / "out")["duplicates"]) == 1


def test_a_checkpoint_that_inflates_is_refused_without_allocating(tmp_path):
    """A checkpoint of a few hundred kB whose storage declares 200 MB (deflated zeros): refused in
    one line, never inflated into memory."""
    import zipfile

    from voxel_ode.model import checkpoint

    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "small.pt")
    big = 50_000_000
    with zipfile.ZipFile(tmp_path / "small.pt") as zin, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # the sizes it declares: 1000 -> 50 million floats
                zout.writestr(info, data.replace(b"M\xe8\x03", b"J" + big.to_bytes(4, "little")))
            elif info.filename.endswith("/data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(entry, "w", force_zip64=True) as f:
                    for _ in range(big // 1_000_000):
                        f.write(bytes(4_000_000))
            else:
                zout.writestr(info, data)
    assert (tmp_path / "bomb.pt").stat().st_size < 1e6
    with pytest.raises(UserError, match=r"bomb.pt: checkpoint: cannot load"):
        checkpoint.load(tmp_path / "bomb.pt")


DESCRIPTION_CONTRADICTIONS = {
    # declared m2 on values of rock in mD: priors 1e15x off if taken as declared
    "unit": (lambda d, a: (d.update(permeability_unit="m2"), [a.__setitem__(n, a[n] / 9.869233e-16)
                                                              for n in ("PermX", "PermY", "PermZ")]),
             "permeability_unit is declared m2, but the median active PermX is"),
    # the first report declared as the end of year 1 while it is the initial state itself
    "time_origin": (lambda d, a: d.update(first_report="year1"), "first_report is declared year1, but Output/Pressure[0]"),
    # a declared compressibility of 0: the generic value was used while the notes said "declared"
    "zero_compressibility": (lambda d, a: d["quantities"].update(TotalCompressibility=0.0),
                             "the declared compressibility adds up to 0"),
    "misspelled_unit": (lambda d, a: d["quantities"].update(CellSizeZ={"value": 30, "unti": "ft"}),
                        "quantities.CellSizeZ: unknown key 'unti'"),
    "quantities_list": (lambda d, a: d.update(quantities=[1, 2]), "quantities: expected an object"),
    "huge_integer": (lambda d, a: d["quantities"].update(CellSizeX=10 ** 400), "quantities.CellSizeX: value must be a finite number"),
}


@pytest.mark.parametrize("case", sorted(DESCRIPTION_CONTRADICTIONS))
def test_a_description_the_data_contradicts_is_refused_with_the_entry(tmp_path, capsys, case):
    change, message = DESCRIPTION_CONTRADICTIONS[case]
    desc = json.loads(json.dumps(DESCRIPTION))
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        a = make_raw_arrays(**GRID, seed=i)
        change(desc, a) if i == 0 else None
        if case == "unit" and i > 0:
            for n in ("PermX", "PermY", "PermZ"):
                a[n] = a[n] / 9.869233e-16
        write_raw_sim(raw / f"v2.4_{i + 1:04d}.h5", a)
    (raw / "description.json").write_text(json.dumps(desc))
    rc, lines = _one_line_cli(capsys, ["prep", "--input_root", str(raw), "--out_root", str(tmp_path / "out")])
    assert rc == 1 and len(lines) == 1 and message in lines[0], lines


def test_a_description_nested_too_deeply_is_one_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    (raw / "description.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, lines = _one_line_cli(capsys, ["prep", "--input_root", str(raw), "--out_root", str(tmp_path / "out")])
    assert rc == 1 and len(lines) == 1 and "nested too deeply" in lines[0]


def test_prep_never_writes_through_a_symlink_that_leaves_its_folder(tmp_path):
    """out_root/train pointing at another folder: the old prep deleted a file there. Now the link
    itself is moved aside and removed; what it points at is left as it was."""
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, **GRID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "v2.4_0099.prepped.h5").write_text("someone else's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").symlink_to(elsewhere, target_is_directory=True)
    dp.prep(raw, out, n_test=1, **SMALL)
    assert (elsewhere / "v2.4_0099.prepped.h5").read_text() == "someone else's file"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["v2.4_0099.prepped.h5"]
    assert not (out / "train").is_symlink() and len(list((out / "train").glob("*.prepped.h5"))) == 2


def test_rollout_checks_its_output_folder_before_the_work(trained, tmp_path, capsys):
    prepped, ckpt = trained
    (tmp_path / "a_file").write_text("")
    rc, lines = _rollout(capsys, ckpt, _test_sim(prepped), tmp_path / "a_file")  # save_path: a_file/pred.h5
    assert rc == 1 and len(lines) == 1 and "a_file: --save_path's folder: not a writable folder" in lines[0]


def test_killing_prep_leaves_no_worker_behind(tmp_path):
    """kill -9 of the main prep with --workers 2: its workers end with it (they waited forever)."""
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=8, grid=(24, 20, 16), n_t=12)
    proc = subprocess.Popen([sys.executable, "-m", "voxel_ode.cli", "prep", "--input_root", str(raw), "--out_root",
                             str(tmp_path / "out"), "--workers", "2", "--patch_size", "8", "8", "8"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def children():
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in found]

    deadline = time.time() + 60
    while not children() and time.time() < deadline:  # the pool's workers are up
        time.sleep(0.2)
    workers = children()
    assert workers, "no worker started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    alive = workers
    while alive and time.time() < deadline:
        alive = [p for p in workers if os.path.exists(f"/proc/{p}") and
                 "zombie" not in open(f"/proc/{p}/status").read().lower()]
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived the killed prep"


TRAIN_WITH_FILE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000))
from voxel_ode.cli import main
sys.exit(main(["train", "--prepped_root", sys.argv[1], "--save_dir", sys.argv[2], "--max_steps", "1",
               "--base_channels", "8", "--depth", "1", "--quiet", "--num_threads", "1"]))
"""


def test_a_file_size_limit_stops_training_before_the_work(small_prepped, tmp_path):
    done = subprocess.run([sys.executable, "-c", TRAIN_WITH_FILE_LIMIT, str(small_prepped), str(tmp_path / "ck")],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert "train writes files of about" in lines[0] and "(ulimit -f)" in lines[0]
    assert "train:" not in done.stdout  # no training step ran


def test_creatable_folder_checks_without_making_anything(tmp_path):
    from voxel_ode import files

    assert files.creatable_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is not a writable folder"):
        files.creatable_folder(tmp_path / "f" / "b", "--out")


def test_evaluate_and_bands_check_a_given_stats_json_like_rollout(trained, tmp_path, capsys):
    """--stats_path on evaluate and bands: stats that disagree with the checkpoint's are one line
    before any rollout; the prepped root's own are taken."""
    prepped, ckpt = trained
    stats = json.loads((prepped / schema.STATS_FILE).read_text())
    stats["dynamic"]["mean"][0] += 1.0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(stats))
    for command in (["evaluate", "--out", str(tmp_path / "ev"), "--no_predictions"],
                    ["bands", "--out", str(tmp_path / "b.json")]):
        rc, lines = _one_line_cli(capsys, [*command, "--prepped_root", str(prepped), "--ckpt_path", str(ckpt),
                                           "--stats_path", str(other), "--no_progress"])
        assert rc == 1 and len(lines) == 1 and "values differ from the stats the checkpoint was trained with" in lines[0]
    rc, _ = _one_line_cli(capsys, ["evaluate", "--prepped_root", str(prepped), "--ckpt_path", str(ckpt), "--out",
                                   str(tmp_path / "ev"), "--no_predictions", "--no_progress", "--max_sims", "1",
                                   "--stats_path", str(prepped / schema.STATS_FILE)])
    assert rc == 0 and (tmp_path / "ev" / "metrics.json").exists()
