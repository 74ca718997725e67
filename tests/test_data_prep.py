"""Tests for voxel_ode.data.prep: validation, packing, stats, patch index, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fixtures import DESCRIPTION, make_raw_arrays, write_raw_dir, write_raw_sim
from voxel_ode.data.description import Description
from voxel_ode import cli, schema
from voxel_ode.data import prep as dp
from voxel_ode.utils import UserError
from voxel_ode.data.stats import Stats
from voxel_ode.data import index
from voxel_ode.data import pack
from voxel_ode.data import stats as stats_mod

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(patch_size=(4, 4, 4), stride=(2, 2, 2), progress=False)


def files_under(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).exists() else []


def raw_mask(arrays, fill_value=None):
    """The active mask computed directly: IsActive==1 and no fill/NaN anywhere."""
    mask = arrays["IsActive"] == 1
    for name in schema.RAW_STATIC_NAMES:
        bad = ~np.isfinite(arrays[name]) | ((arrays[name] == fill_value) if fill_value is not None else False)
        mask &= ~bad
    for name in schema.DYNAMIC_NAMES:
        a = arrays[name]
        bad = ~np.isfinite(a) | ((a == fill_value) if fill_value is not None else False)
        mask &= ~bad.any(axis=0)
    return mask


# ---------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------
def test_full_grid_patch_count_is_1596_with_edge_snapping():
    origins = index.patch_origins(schema.FULL_GRID_SHAPE, (32, 32, 32), (8, 8, 8))
    assert len(origins) == 38 * 6 * 7 == 1596
    assert index.axis_origins(326, 32, 8)[-2:] == [288, 294]  # last snapped to 326 - 32
    assert index.axis_origins(70, 32, 8) == [0, 8, 16, 24, 32, 38]
    assert index.axis_origins(76, 32, 8) == [0, 8, 16, 24, 32, 40, 44]
    # without snapping the seed's grid gives 37 x 5 x 6 = 1110 origins
    assert [len(range(0, n - 32 + 1, 8)) for n in schema.FULL_GRID_SHAPE] == [37, 5, 6]
    assert origins[0] == (0, 0, 0) and origins[-1] == (294, 38, 44)


@pytest.mark.parametrize("n, p, s, expected", [
    (10, 4, 2, [0, 2, 4, 6]),      # lands exactly on the edge: no extra origin
    (11, 4, 3, [0, 3, 6, 7]),      # snapped: 7 = 11 - 4
    (3, 4, 2, [0]),                # axis shorter than the patch: clipped
    (4, 4, 8, [0]),
    (9, 4, 8, [0, 5]),             # stride larger than patch still covers the far edge
])
def test_axis_origins_small_cases(n, p, s, expected):
    assert index.axis_origins(n, p, s) == expected
    assert max(expected) + min(p, n) == n  # every axis is covered up to its far edge


def test_patch_active_fractions_match_brute_force():
    rng = np.random.default_rng(1)
    mask = rng.random((9, 7, 11)) > 0.6
    patch, stride = (4, 3, 5), (2, 3, 4)
    origins, fracs = index.patch_active_fractions(mask, patch, stride)
    assert [tuple(o) for o in origins.tolist()] == index.patch_origins(mask.shape, patch, stride)
    for (z, y, x), f in zip(origins, fracs):
        assert f == pytest.approx(mask[z:z + 4, y:y + 3, x:x + 5].mean())


def test_fault_boundary_marks_both_sides_of_a_change():
    fid = np.zeros((3, 4, 5), np.float32)
    fid[:, :, 3:] = 2
    b = pack.fault_boundary(fid)
    assert b[:, :, 2].all() and b[:, :, 3].all()
    assert not b[:, :, [0, 1, 4]].any()  # the grid edge is not a boundary


# ---------------------------------------------------------------------------
# Prep: arrays, stats, split, index
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    raw = root / "raw"
    write_raw_dir(raw, n=4, grid=(12, 10, 8), n_t=5)
    summary = dp.prep(raw, root / "out", n_test=1, min_active_frac=0.0, **SMALL)
    arrays = {i + 1: make_raw_arrays(grid=(12, 10, 8), n_t=5, seed=i) for i in range(4)}
    return root / "out", summary, arrays


def test_prepped_arrays_equal_raw(prepped):
    out, summary, arrays = prepped
    assert summary["test"] == ["test/v2.4_0001.prepped.h5"]
    for i, rel in [(1, "test/v2.4_0001.prepped.h5"), (3, "train/v2.4_0003.prepped.h5")]:
        a = arrays[i]
        mask = raw_mask(a)
        with h5py.File(out / rel, "r") as f:
            static = f[schema.PREPPED_STATIC][()]
            assert static.shape == (schema.N_STATIC, 12, 10, 8) and static.dtype == np.float32
            for c, name in enumerate(schema.RAW_STATIC_NAMES):
                expected = mask.astype(np.float32) if name == "IsActive" else a[name]
                np.testing.assert_array_equal(static[c], expected, err_msg=name)
            np.testing.assert_array_equal(static[schema.STATIC_NAMES.index("FaultBoundary")], pack.fault_boundary(a["FaultId"]))
            gap = static[schema.STATIC_NAMES.index(schema.INJECTION_GAP)]
            assert np.all(gap[~mask] == 0) and np.abs(gap[mask]).max() > 0
            priors = f[schema.PREPPED_PRIORS]
            assert priors.shape == (len(a["Pressure"]), schema.N_PRIORS, 12, 10, 8) and priors.dtype == np.float16
            assert priors.chunks == (1, schema.N_PRIORS, 12, 10, 8)
            priors = priors[()]
            assert np.all(priors[0] == 0) and np.all(priors[:, :, ~mask] == 0)
            prior = priors[:, schema.PRIOR_NAMES.index("ThermalPrior")]
            assert prior[-1].max() > 0.1
            # the prior temperature (the injected water's share plus the initial field's drift) makes no
            # new extremes: it stays between the injected water's and the initial field's
            t0 = static[schema.STATIC_NAMES.index("Temperature0")][mask].astype(np.float64)
            injected = (t0 + gap[mask]).min()
            temperature = t0 + prior[:, mask].astype(np.float64) * gap[mask]
            slack = 2e-3 * np.abs(gap[mask]).max()  # float16's rounding of the share
            assert temperature.min() >= min(injected, t0.min()) - slack and temperature.max() <= t0.max() + slack
            # the pressure prior (its physics: tests/test_well_response.py) moves from year 1 on
            pressure_prior = priors[:, schema.PRIOR_NAMES.index("PressurePrior")].astype(np.float64)
            assert np.isfinite(pressure_prior).all() and np.abs(pressure_prior[1][mask]).max() > 0
            grid = f[schema.PREPPED_OUTPUTS_GRID]
            assert grid.chunks == (1, 2, 12, 10, 8)  # chunk edge 16 clipped to the tiny grid
            np.testing.assert_array_equal(grid[:, 0], a["Pressure"])
            np.testing.assert_array_equal(grid[:, 1], a["Temperature"])
            np.testing.assert_array_equal(f[schema.PREPPED_PARAMS][()], a["ParamsScalar"])
            scal = f[schema.PREPPED_OUTPUTS_SCALAR][()]
            assert scal.dtype == np.float64
            for k, name in enumerate(schema.SCALAR_NAMES):
                np.testing.assert_array_equal(scal[:, k], a[name])
            assert f.attrs["run_name"] == f"v2.4_{i:04d}"
            assert f.attrs["schema_version"] == schema.SCHEMA_VERSION
            assert "fill_value" not in f.attrs


def test_prepare_arrays_equals_the_packed_file(prepped, tmp_path):
    out, _, arrays = prepped
    raw = write_raw_sim(tmp_path / "v2.4_0001.h5", arrays[1])
    mem = pack.prepare_arrays(raw, desc=Description.from_dict(DESCRIPTION))
    with h5py.File(out / "test/v2.4_0001.prepped.h5", "r") as f:
        for key, name in [("static", schema.PREPPED_STATIC), ("outputs_grid", schema.PREPPED_OUTPUTS_GRID),
                          ("params_scalar", schema.PREPPED_PARAMS), ("outputs_scalar", schema.PREPPED_OUTPUTS_SCALAR),
                          ("priors", schema.PREPPED_PRIORS)]:
            np.testing.assert_array_equal(mem[key], f[name][()], err_msg=key)
        assert mem["priors"].dtype == np.float16  # half the memory; prior_pair gives float32
    a = dict(arrays[1])
    a.pop("IsWell")
    with pytest.raises(UserError, match="Input/IsWell: missing dataset"):
        pack.prepare_arrays(write_raw_sim(tmp_path / "bad.h5", a))


def _read_patch(args):
    path, t, z0, y0, x0 = args
    with h5py.File(path, "r") as f:  # each worker opens its own handle, as a DataLoader worker does
        return f[schema.PREPPED_OUTPUTS_GRID][t:t + 2, :, z0:z0 + 4, y0:y0 + 4, x0:x0 + 4]


def test_packed_files_read_in_worker_processes(prepped):
    from concurrent.futures import ProcessPoolExecutor

    out, _, arrays = prepped
    jobs = [(str(out / "train/v2.4_0002.prepped.h5"), t, z, 2, 4) for t, z in [(0, 0), (3, 8), (1, 4)]]
    with ProcessPoolExecutor(max_workers=2) as pool:
        patches = list(pool.map(_read_patch, jobs))
    for (_, t, z, y, x), patch in zip(jobs, patches):
        np.testing.assert_array_equal(patch[:, 1], arrays[2]["Temperature"][t:t + 2, z:z + 4, y:y + 4, x:x + 4])


def test_index_lines_address_the_right_data(prepped):
    out, summary, arrays = prepped
    lines = (out / "index_train.jsonl").read_text().splitlines()
    n_origins = len(index.patch_origins((12, 10, 8), (4, 4, 4), (2, 2, 2)))
    assert len(lines) == 3 * (5 - 1) * n_origins == summary["patches"]["kept"]["train"]
    rows = [json.loads(line) for line in lines]
    assert {r["sim_path"] for r in rows} == {f"train/v2.4_000{i}.prepped.h5" for i in (2, 3, 4)}
    assert {r["t"] for r in rows} == {0, 1, 2, 3}  # t = 0..T-2, target t+1
    r = rows[len(rows) // 2 + 7]
    a = arrays[int(r["sim_path"].split("_")[-1].split(".")[0])]
    with h5py.File(out / r["sim_path"], "r") as f:
        patch = f[schema.PREPPED_OUTPUTS_GRID][r["t"]:r["t"] + 2, :, r["z0"]:r["z1"], r["y0"]:r["y1"], r["x0"]:r["x1"]]
    np.testing.assert_array_equal(patch[:, 0], a["Pressure"][r["t"]:r["t"] + 2, r["z0"]:r["z1"], r["y0"]:r["y1"], r["x0"]:r["x1"]])
    assert r["active_frac"] == pytest.approx(raw_mask(a)[r["z0"]:r["z1"], r["y0"]:r["y1"], r["x0"]:r["x1"]].mean(), abs=1e-4)


def test_stats_equal_direct_numpy(prepped):
    out, _, arrays = prepped
    stats = Stats.load(out)
    train = [arrays[i] for i in (2, 3, 4)]
    masks = [raw_mask(a) for a in train]
    assert stats["train_sims"] == [f"train/v2.4_000{i}.prepped.h5" for i in (2, 3, 4)]
    assert stats["grid_shape"] == [12, 10, 8] and stats["n_timesteps"] == 5
    # statics: perms are log10, the rest linear; all over active cells of the train split only
    for c, name in enumerate(schema.RAW_STATIC_NAMES):
        values = np.concatenate([(m.astype(np.float64) if name == "IsActive" else a[name].astype(np.float64))[m]
                                 for a, m in zip(train, masks)])
        tr = "log10" if name.startswith("Perm") else "none"
        assert stats["static"]["transform"][c] == tr, name
        x = np.log10(values) if tr == "log10" else values
        std = x.std() if x.std() > 1e-12 else 1.0
        assert stats["static"]["mean"][c] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12), name
        assert stats["static"]["std"][c] == pytest.approx(std, rel=1e-7), name
    assert stats["static"]["std"][schema.STATIC_NAMES.index("IsActive")] == 1.0  # constant channel
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        state = np.concatenate([a[name][:, m].astype(np.float64).ravel() for a, m in zip(train, masks)])
        assert stats["dynamic"]["mean"][c] == pytest.approx(state.mean(), rel=1e-12)
        assert stats["dynamic"]["std"][c] == pytest.approx(state.std(), rel=1e-9)
        deltas = [np.diff(a[name].astype(np.float64), axis=0)[:, m].ravel() for a, m in zip(train, masks)]
        d = np.concatenate(deltas)
        assert stats["delta"]["mean"][c] == pytest.approx(d.mean(), rel=1e-6)
        assert stats["delta"]["std"][c] == pytest.approx(d.std(), rel=1e-6)
        for q in ("0.5", "0.9", "0.99"):  # small case: every active cell is in the subsample
            assert stats["delta"]["abs_quantiles"][q][c] == pytest.approx(np.quantile(np.abs(d), float(q)), rel=1e-5)
        for k, dk in enumerate(deltas):
            assert stats["delta"]["per_sim_rms"][k][c] == pytest.approx(np.sqrt(np.mean(dk ** 2)), rel=1e-6)
    params = np.stack([a["ParamsScalar"].astype(np.float64) for a in train])
    np.testing.assert_allclose(stats["params"]["mean"], params.mean(0), rtol=1e-6, atol=1e-7)
    scal = np.concatenate([np.stack([a[n] for n in schema.SCALAR_NAMES], 1) for a in train])
    slog = np.sign(scal) * np.log1p(np.abs(scal))
    np.testing.assert_allclose(stats["scalars"]["mean"], slog.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["scalars"]["std"], slog.std(0), rtol=1e-9)
    assert stats["scalars"]["transform"] == ["signed_log1p"] * 5
    inc = np.concatenate([np.diff(a["FieldEnergyProductionTotal"]) for a in train])
    assert stats["scalar_increments"]["mean"][0] == pytest.approx(np.log1p(inc).mean(), rel=1e-12)
    assert stats["patches"]["origins_per_sim"] == 5 * 4 * 3
    assert stats["skipped"] == []


def test_split_takes_first_n_test_by_sorted_name_and_min_active_frac_filters(tmp_path):
    raw = tmp_path / "raw"
    for k, run in enumerate([12, 3, 7, 10]):  # written out of order on purpose
        write_raw_sim(raw / f"v2.4_{run:04d}.h5", seed=k, grid=(8, 6, 6), n_t=3, inactive_frac=0.5)
    s = dp.prep(raw, tmp_path / "out", n_test=2, min_active_frac=0.5, **SMALL)
    assert s["test"] == ["test/v2.4_0003.prepped.h5", "test/v2.4_0007.prepped.h5"]
    assert s["train"] == ["train/v2.4_0010.prepped.h5", "train/v2.4_0012.prepped.h5"]
    rows = [json.loads(x) for x in (tmp_path / "out/index_test.jsonl").read_text().splitlines()]
    assert rows and all(r["active_frac"] >= 0.5 for r in rows)
    kept, total = s["patches"]["kept"], s["patches"]["total"]
    assert len(rows) == kept["test"] < total["test"] == 2 * 2 * s["patches"]["origins_per_sim"]
    s0 = dp.prep(raw, tmp_path / "out0", n_test=2, min_active_frac=0.0, **SMALL)
    assert s0["patches"]["kept"] == s0["patches"]["total"]  # 0 keeps all


def test_fill_value_cells_are_inactive_and_excluded_from_stats(tmp_path):
    a = make_raw_arrays(grid=(6, 5, 4), n_t=4, seed=3, inactive_frac=0.0)
    a["PermX"][0, 0, :] = -999.0          # fill in a static
    a["PermX"][1, 0, 0] = 1e-17           # > 3 decades: log10 must be chosen despite the -999 cells
    a["Pressure"][2, 3, 3, 3] = -999.0    # fill in a dynamic grid at one step only
    a["Temperature"][:, 5, 4, 0] = np.nan  # NaN at an inactive cell is fine
    a["IsActive"][5, 4, 0] = 0
    raw = tmp_path / "raw"
    write_raw_sim(raw / "v2.4_0001.h5", a)
    dp.prep(raw, tmp_path / "out", n_test=0, fill_value=-999.0, **SMALL)
    mask = raw_mask(a, fill_value=-999.0)
    assert mask.sum() == 6 * 5 * 4 - 4 - 1 - 1
    with h5py.File(tmp_path / "out/train/v2.4_0001.prepped.h5", "r") as f:
        static = f[schema.PREPPED_STATIC][()]
        np.testing.assert_array_equal(static[schema.STATIC_NAMES.index("IsActive")], mask)
        assert (static[schema.STATIC_NAMES.index("PermX"), 0, 0, :] == 0).all()  # fill stored as 0
        grid = f[schema.PREPPED_OUTPUTS_GRID][()]
        assert grid[2, 0, 3, 3, 3] == 0 and (grid[:, 1, 5, 4, 0] == 0).all()
        assert f.attrs["fill_value"] == -999.0
    stats = Stats.load(tmp_path / "out/stats.json")
    assert stats["fill_value"] == -999.0
    c = schema.STATIC_NAMES.index("PermX")
    assert stats["static"]["transform"][c] == "log10"
    assert stats["static"]["mean"][c] == pytest.approx(np.log10(a["PermX"][mask].astype(np.float64)).mean(), rel=1e-9)
    p = a["Pressure"][:, mask].astype(np.float64)
    assert stats["dynamic"]["mean"][0] == pytest.approx(p.mean(), rel=1e-12)
    assert stats["delta"]["std"][0] == pytest.approx(np.diff(p, axis=0).std(), rel=1e-6)


# ---------------------------------------------------------------------------
# Bad input: one line naming file and dataset, nothing left behind
# ---------------------------------------------------------------------------
def _first_active(a):
    return tuple(np.argwhere(a["IsActive"] == 1)[0])


BAD_CASES = {
    "missing": (lambda a: a.pop("Porosity"), "Input/Porosity", "missing dataset"),
    "static_shape": (lambda a: a.update(PermZ=a["PermZ"][:, :, :-1]), "Input/PermZ", "differs from the grid"),
    "grid_vs_static": (lambda a: a.update(Pressure=a["Pressure"][:, :-1]), "Output/Pressure", "differs from the static grid"),
    "T_mismatch": (lambda a: a.update(Temperature=a["Temperature"][:-1]), "Output/Temperature", "T=3"),
    "scalar_T": (lambda a: a.update(FieldWaterInjectionRate=a["FieldWaterInjectionRate"][:-1]),
                 "Output/FieldWaterInjectionRate", "expected (4,)"),
    "nan_static": (lambda a: a["PermY"].__setitem__(_first_active(a), np.nan), "Input/PermY", "NaN/Inf in 1 active cells"),
    "inf_dynamic": (lambda a: a["Temperature"].__setitem__((2,) + _first_active(a), np.inf),
                    "Output/Temperature", "NaN/Inf in 1 active cells at t=2"),
    "isactive_not_01": (lambda a: a["IsActive"].__setitem__((0, 0, 0), 2.0), "Input/IsActive", "neither 0 nor 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_gives_one_line_error_and_leaves_nothing(tmp_path, case):
    change, dataset, what = BAD_CASES[case]
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=2, grid=(6, 5, 4), n_t=4)
    a = make_raw_arrays(grid=(6, 5, 4), n_t=4, seed=5)
    change(a)
    bad = write_raw_sim(raw / "v2.4_0003.h5", a)
    problems = pack.validate_raw(bad)
    assert problems and all(p.startswith(f"{bad}: ") for p in problems)
    assert any(f": {dataset}: " in p and what in p for p in problems), problems
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        dp.prep(raw, out, n_test=1, **SMALL)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: {dataset}: ") and what in msg
    assert files_under(out) == []  # not even the good simulations' packed files


@pytest.mark.parametrize("kind", ["truncated", "not_hdf5"])
def test_unreadable_file_is_refused(tmp_path, kind):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=2, grid=(6, 5, 4), n_t=3)
    bad = raw / "v2.4_0003.h5"
    if kind == "truncated":
        data = write_raw_sim(bad, grid=(6, 5, 4), n_t=3).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_text("this is not HDF5\n")
    assert pack.validate_raw(bad)[0].startswith(f"{bad}: (file): not a readable HDF5 file")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)
    assert files_under(tmp_path / "out") == []


def test_expected_n_timesteps_and_consistent_T_across_files(tmp_path):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=2, grid=(6, 5, 4), n_t=4)
    assert "has T=4 steps, expected 30" in pack.validate_raw(raw / "v2.4_0001.h5", n_timesteps=30)[0]
    write_raw_sim(raw / "v2.4_0003.h5", grid=(6, 5, 4), n_t=3)
    with pytest.raises(UserError, match=r"v2.4_0003.h5: Output/Pressure: has T=3 steps, expected 4"):
        dp.prep(raw, tmp_path / "out", n_test=1, **SMALL)


def test_skip_bad_goes_on_with_the_others(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, grid=(6, 5, 4), n_t=3)
    write_raw_sim(raw / "v2.4_0002.h5", skip=("Pressure",), grid=(6, 5, 4), n_t=3)  # replace run 2 with a bad one
    s = dp.prep(raw, tmp_path / "out", n_test=1, skip_bad=True, **SMALL)
    assert s["test"] == ["test/v2.4_0001.prepped.h5"] and s["train"] == ["train/v2.4_0003.prepped.h5"]
    assert len(s["skipped"]) == 1 and "v2.4_0002.h5: Output/Pressure: missing dataset" in s["skipped"][0]
    assert "warning: skipping" in capsys.readouterr().err
    assert Stats.load(tmp_path / "out")["skipped"] == s["skipped"]
    assert not list((tmp_path / "out").glob(".partial-*"))


def test_failed_rerun_keeps_the_earlier_finished_output(tmp_path):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=2, grid=(6, 5, 4), n_t=3)
    out = tmp_path / "out"
    dp.prep(raw, out, n_test=1, **SMALL)
    before = sorted(p.relative_to(out) for p in files_under(out))
    (raw / "v2.4_0003.h5").write_text("garbage")
    with pytest.raises(UserError):
        dp.prep(raw, out, n_test=1, **SMALL)
    assert sorted(p.relative_to(out) for p in files_under(out)) == before
    assert Stats.load(out)["train_sims"] == ["train/v2.4_0002.prepped.h5"]


def test_no_raw_files_is_a_user_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError, match="no raw files matching v2.4_"):
        dp.prep(tmp_path / "raw", tmp_path / "out", **SMALL)


def test_workers_give_the_same_result(tmp_path):
    raw = tmp_path / "raw"
    write_raw_dir(raw, n=3, grid=(6, 5, 4), n_t=3)
    dp.prep(raw, tmp_path / "one", n_test=1, workers=1, **SMALL)
    dp.prep(raw, tmp_path / "two", n_test=1, workers=2, **SMALL)
    assert Stats.load(tmp_path / "one").data == Stats.load(tmp_path / "two").data
    for name in ("index_train.jsonl", "index_test.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_load_stats_refuses_unfinished_or_foreign_files(tmp_path):
    with pytest.raises(UserError, match="did prep finish"):
        Stats.load(tmp_path)
    (tmp_path / "stats.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError, match="format"):
        Stats.load(tmp_path / "stats.json")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_seed_command_line_works(tmp_path):
    write_raw_dir(tmp_path / "raw", n=3, grid=(8, 6, 6), n_t=3)
    cmd = [sys.executable, str(REPO / "scripts/prep_data.py"), "--input_root", str(tmp_path / "raw"),
           "--out_root", str(tmp_path / "prepped"), "--patch_size", "4", "4", "4", "--stride", "2", "2", "2",
           "--n_test", "1", "--min_active_frac", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "kept" in run.stdout
    stats = json.loads((tmp_path / "prepped/stats.json").read_text())
    assert stats["patches"]["patch_size"] == [4, 4, 4] and stats["patches"]["stride"] == [2, 2, 2]
    assert (tmp_path / "prepped/test/v2.4_0001.prepped.h5").exists()


def test_cli_prints_one_line_and_exits_1_on_bad_input(tmp_path, capsys):
    write_raw_sim(tmp_path / "raw/v2.4_0001.h5", skip=("IsWell",), grid=(4, 4, 4), n_t=3)
    rc = cli.main(["prep", "--input_root", str(tmp_path / "raw"), "--out_root", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert [line for line in err if "error" in line] == [
        f"voxel-ode prep: error: {tmp_path / 'raw/v2.4_0001.h5'}: Input/IsWell: missing dataset"]


def test_inspect_raw_prepped_and_bad(tmp_path, capsys):
    raw = write_raw_sim(tmp_path / "raw/v2.4_0001.h5", grid=(6, 5, 4), n_t=3, seed=2)
    assert cli.main(["inspect", str(raw)]) == 0
    text = capsys.readouterr().out
    assert "Output/Pressure" in text and "(3, 6, 5, 4)" in text and "active cells:" in text
    assert "problems: none" in text
    dp.prep(tmp_path / "raw", tmp_path / "out", n_test=0, **SMALL)
    assert cli.main(["inspect", str(tmp_path / "out/train/v2.4_0001.prepped.h5")]) == 0
    assert "outputs_grid/Pressure" in capsys.readouterr().out
    a = make_raw_arrays(grid=(6, 5, 4), n_t=3)
    a["IsActive"][0, 0, 0] = 0.5
    bad = write_raw_sim(tmp_path / "bad.h5", a)
    assert cli.main(["inspect", str(bad)]) == 1
    assert "Input/IsActive" in capsys.readouterr().out


def test_scale_like_params_are_log_scaled_with_a_floor_for_zeros():
    from voxel_ode.model.features import Normalizer

    rng = np.random.default_rng(0)
    n = 12
    values = np.stack([rng.uniform(10.0, 20.0, n),  # narrow: linear
                       10 ** rng.uniform(-3.0, 0.0, n),  # log-uniform over 3 decades: log10
                       np.r_[0.0, 10 ** rng.uniform(-2.5, 0.0, n - 1)],  # closed runs (0) among them: log10 + floor
                       rng.uniform(-1.0, 1.0, n)], axis=1)  # signed: linear
    st = stats_mod._vector_stats(values, ["a", "b", "c", "d"], allow_log=True)
    assert st["transform"] == ["none", "log10", "log10", "none"]
    floor = values[values[:, 2] > 0, 2].min() / 2
    assert st["floor"][0] is None and st["floor"][2] == pytest.approx(floor)
    logged = np.log10(np.maximum(values[:, 2], floor))
    assert st["mean"][2] == pytest.approx(logged.mean()) and st["std"][2] == pytest.approx(logged.std())
    # the Normalizer applies the same: a strength of 0 lands just below the weakest positive one
    full = {k: v * 7 for k, v in st.items()}  # 28 columns >= N_PARAMS: only the first N_PARAMS are used
    full = {k: v[: schema.N_PARAMS] for k, v in full.items()}
    stats = {"static": {"names": list(schema.STATIC_NAMES), "transform": ["none"] * schema.N_STATIC,
                        "mean": [0.0] * schema.N_STATIC, "std": [1.0] * schema.N_STATIC},
             "dynamic": {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
             "delta": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "per_sim_rms": [[1.0, 1.0]]},
             "params": full, "scalars": {"transform": ["signed_log1p"] * 5, "mean": [0.0] * 5, "std": [1.0] * 5}}
    norm = Normalizer(stats)
    p = np.tile(values[:, :4], (1, 7))[:, : schema.N_PARAMS]
    got = norm.normalize_params(p).numpy()
    expected = (logged - st["mean"][2]) / st["std"][2]
    np.testing.assert_allclose(got[:, 2], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], (np.log10(values[:, 1]) - st["mean"][1]) / st["std"][1], rtol=1e-5, atol=1e-5)
    assert got[0, 2] < got[1:, 2].min()  # closed (0) sits below every supported run


def test_training_ranges_span_the_training_runs_only(prepped, tmp_path):
    """stats.json's training ranges hold the training split's extremes (the test run's are
    not in them); a malformed range is refused when the stats are read."""
    out, _, arrays = prepped
    stats = Stats.load(out)
    ranges = stats["training_ranges"]
    totals = []
    for i in (2, 3, 4):
        m = raw_mask(arrays[i])
        rate = arrays[i]["InjRate"][m].astype(np.float64)
        totals.append(rate[rate > 0].sum())
    assert ranges["injection rate (kg/s, total)"] == pytest.approx([min(totals), max(totals)], rel=1e-5)
    params = np.stack([arrays[i]["ParamsScalar"] for i in (2, 3, 4)]).astype(np.float64)
    assert ranges["ParamsScalar[7]"] == pytest.approx([params[:, 7].min(), params[:, 7].max()], rel=1e-6)
    assert ranges["active cells"] == [float(min(raw_mask(arrays[i]).sum() for i in (2, 3, 4))),
                                      float(max(raw_mask(arrays[i]).sum() for i in (2, 3, 4)))]
    bad = json.loads((out / schema.STATS_FILE).read_text())
    bad["training_ranges"]["active cells"] = [5.0, 1.0]
    (tmp_path / schema.STATS_FILE).write_text(json.dumps(bad))
    with pytest.raises(UserError, match="training_ranges/active cells: not"):
        Stats.load(tmp_path / schema.STATS_FILE)
