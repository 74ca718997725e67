"""Rollout: zero change == persistence, inactive cells untouched, tiled == full, files, CLI, evaluation."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import fixtures
from voxel_ode.inference import rollout as R
from voxel_ode import schema
from voxel_ode.data import description
from voxel_ode.model.features import Normalizer, prior_pair
from voxel_ode.utils import UserError
from voxel_ode.inference import baselines
from voxel_ode.model import checkpoint
from voxel_ode.inference import evaluate as evaluate_mod
from voxel_ode.data import pack
from voxel_ode.inference import predictions
from voxel_ode.inference import regions
from voxel_ode.data import prepped
from voxel_ode.data.stats import Stats
from voxel_ode.model import precision

GRID = (12, 10, 8)
N_T = 5


# ---------------------------------------------------------------------------
# tiny prepped data written directly (independent of data_prep), and its stats
# ---------------------------------------------------------------------------
def prepped_arrays(seed=0, grid=GRID, n_t=N_T):
    raw = fixtures.make_raw_arrays(grid=grid, n_t=n_t, seed=seed)
    fault = raw["FaultId"]
    boundary = np.zeros_like(fault)
    for axis in range(3):  # FaultId differs from a face neighbour
        d = np.diff(fault, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        boundary[tuple(lo)] += d
        boundary[tuple(hi)] += d
    raw["FaultBoundary"] = (boundary > 0).astype(np.float32)
    raw["IsActive"] = raw["IsActive"].astype(np.float32)
    physics = description.resolve(description.Description.from_dict(fixtures.DESCRIPTION), raw["ParamsScalar"],
                                  raw["PermX"], raw["Pressure0"], raw["Pressure"][0], "fixture")
    scalars = np.stack([raw[n] for n in schema.SCALAR_NAMES], axis=1)
    derived, priors = pack.derive_channels(raw, scalars, physics, n_t)
    raw.update(derived)
    sim = {
        "static": np.stack([raw[n] for n in schema.STATIC_NAMES]).astype(np.float32),
        "params_scalar": raw["ParamsScalar"].astype(np.float32),
        "outputs_grid": np.stack([raw["Pressure"], raw["Temperature"]], axis=1).astype(np.float32),
        "outputs_scalar": np.stack([raw[n] for n in schema.SCALAR_NAMES], axis=1).astype(np.float64),
    }
    sim["priors"] = priors
    return sim


def _slp(x):
    return np.sign(x) * np.log1p(np.abs(x))


def make_stats(sims):
    act = [s["static"][1] > 0.5 for s in sims]
    transforms = ["log10" if n.startswith("Perm") else "none" for n in schema.STATIC_NAMES]
    static_vals = []
    for c, tr in enumerate(transforms):
        v = np.concatenate([s["static"][c][a] for s, a in zip(sims, act)]).astype(np.float64)
        static_vals.append(np.log10(v) if tr == "log10" else v)
    dyn = [np.concatenate([s["outputs_grid"][:, c][:, a].ravel() for s, a in zip(sims, act)]) for c in range(2)]
    dl = [np.concatenate([np.diff(s["outputs_grid"][:, c], axis=0)[:, a].ravel() for s, a in zip(sims, act)])
          for c in range(2)]
    rms = [[float(np.sqrt(np.mean(np.diff(s["outputs_grid"][:, c], axis=0)[:, a] ** 2))) for c in range(2)]
           for s, a in zip(sims, act)]
    params = np.stack([s["params_scalar"] for s in sims]).astype(np.float64)
    scal = _slp(np.concatenate([s["outputs_scalar"] for s in sims]))
    inc = _slp(np.concatenate([np.diff(s["outputs_scalar"][:, 2]) for s in sims]))

    def std(v):
        s = float(np.std(v))
        return s if s > 1e-12 else 1.0

    return {
        "format": 1, "schema_version": "v2.4", "grid_shape": list(GRID), "n_timesteps": N_T,
        "static": {"names": list(schema.STATIC_NAMES), "transform": transforms,
                   "mean": [float(np.mean(v)) for v in static_vals], "std": [std(v) for v in static_vals]},
        "dynamic": {"names": list(schema.DYNAMIC_NAMES), "mean": [float(np.mean(v)) for v in dyn],
                    "std": [std(v) for v in dyn]},
        "delta": {"names": list(schema.DYNAMIC_NAMES), "mean": [float(np.mean(v)) for v in dl],
                  "std": [std(v) for v in dl],
                  "abs_quantiles": {"0.5": [float(np.median(np.abs(v))) for v in dl]}, "per_sim_rms": rms},
        "params": {"names": list(schema.PARAM_NAMES), "transform": ["none"] * schema.N_PARAMS,
                   "mean": params.mean(0).tolist(), "std": [std(v) for v in params.T]},
        "scalars": {"names": list(schema.SCALAR_NAMES), "transform": ["signed_log1p"] * 5,
                    "mean": scal.mean(0).tolist(), "std": [std(v) for v in scal.T]},
        "scalar_increments": {"names": list(schema.CUMULATIVE_SCALARS), "transform": ["signed_log1p"],
                              "mean": [float(inc.mean())], "std": [std(inc)]},
        "description": fixtures.DESCRIPTION, "priors": True, "patches": {},
    }


def write_prepped(path, sim):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f[schema.PREPPED_STATIC] = sim["static"]
        f[schema.PREPPED_PARAMS] = sim["params_scalar"]
        f[schema.PREPPED_OUTPUTS_GRID] = sim["outputs_grid"]
        f[schema.PREPPED_OUTPUTS_SCALAR] = sim["outputs_scalar"]
        f[schema.PREPPED_PRIORS] = sim["priors"].astype(np.float16)
        # prepared as make_stats says: its description, priors computed
        f.attrs["preparation"] = json.dumps(prepped.preparation_record(fixtures.DESCRIPTION, True))
    return path


def make_prepped_root(root, n_train=2, n_test=1):
    root = Path(root)
    sims = [prepped_arrays(seed=i) for i in range(n_train + n_test)]
    for i, sim in enumerate(sims):
        split = "test" if i < n_test else "train"
        write_prepped(root / split / f"v2.4_{i + 1:04d}{schema.PREPPED_SUFFIX}", sim)
    stats = make_stats(sims[n_test:])
    (root / schema.STATS_FILE).write_text(json.dumps(stats))
    return root, sims, Stats(stats, root / schema.STATS_FILE)


# ---------------------------------------------------------------------------
# tiny models with the VoxelAutoRegressor interface
# ---------------------------------------------------------------------------
class ZeroModel(torch.nn.Module):
    receptive_field = 0

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    compute_context = None

    def forward(self, x, params, active, context=None, origin=None):
        b, _, d, h, w = x.shape
        return x.new_zeros(b, 2, d, h, w), x.new_zeros(b, 5)


class LocalGlobalModel(torch.nn.Module):
    """Two 3^3 convs (receptive field 2) + a whole-field context added everywhere (like the real model)."""

    receptive_field = 2
    context_factor = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv3d(schema.N_INPUT_CHANNELS, 4, 3, padding=1)
        self.c2 = torch.nn.Conv3d(4, 2, 3, padding=1)
        self.ctx = torch.nn.Linear(schema.N_INPUT_CHANNELS + schema.N_CONDITIONING, 4)
        self.head = torch.nn.Linear(4, 5)

    def compute_context(self, x_coarse, params, active_coarse):
        pooled = (x_coarse * active_coarse).sum((2, 3, 4)) / active_coarse.sum((2, 3, 4)).clamp_min(1e-6)
        return torch.tanh(self.ctx(torch.cat([pooled, params], 1)))

    def forward(self, x, params, active, context=None, origin=None):
        h = torch.tanh(self.c1(x)) + context[:, :, None, None, None]
        return 0.1 * self.c2(h) * active, 0.1 * self.head(context)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root, sims, stats = make_prepped_root(tmp_path_factory.mktemp("prepped"))
    return root, sims, stats, Normalizer(stats)


def test_zero_change_model_equals_persistence_exactly(data):
    _, sims, _, norm = data
    sim = sims[0]
    grid, scalar = R.rollout(ZeroModel(), norm, sim, progress=False)
    persist, _ = R.run_stepper(baselines.PersistenceStepper(), sim, progress=False)
    assert grid.shape == sim["outputs_grid"].shape and grid.dtype == np.float32
    assert np.array_equal(grid, persist)
    assert np.array_equal(grid[-1], sim["outputs_grid"][0])
    np.testing.assert_array_equal(scalar[0], sim["outputs_scalar"][0])  # t=0 copied from the truth
    assert scalar.shape == (N_T, schema.N_SCALARS) and np.all(np.isfinite(scalar))
    # a zero normalized increment denormalizes to the (positive) mean yearly production: the total grows
    total = scalar[:, schema.SCALAR_NAMES.index("FieldEnergyProductionTotal")]
    assert np.all(np.diff(total) > 0)


def test_inactive_cells_untouched_and_scalars_nan_without_truth(data):
    _, sims, _, norm = data
    sim = dict(sims[0])
    sim.pop("outputs_scalar")
    sim["outputs_grid"] = sim["outputs_grid"].copy()
    inactive = sim["static"][1] < 0.5
    sim["outputs_grid"][0][:, inactive] = 123.0  # any value at inactive cells must survive the rollout
    grid, scalar = R.rollout(LocalGlobalModel(), norm, sim, progress=False)
    assert np.all(grid[:, :, inactive] == 123.0)
    assert not np.array_equal(grid[-1][:, ~inactive], grid[0][:, ~inactive])  # active cells did move
    assert np.all(np.isfinite(scalar))
    # without the t = 0 report the start of the field scalars is estimated from the inputs:
    # the water rates are exactly the sums of InjRate
    rate = sim["static"][schema.STATIC_NAMES.index("InjRate")][~inactive].astype(np.float64)
    names = schema.SCALAR_NAMES
    assert scalar[0, names.index("FieldWaterInjectionRate")] == pytest.approx(rate[rate > 0].sum())
    assert scalar[0, names.index("FieldWaterProductionRate")] == pytest.approx(-rate[rate < 0].sum())
    assert scalar[0, names.index("FieldEnergyProductionTotal")] == 0.0


def test_rollout_from_initial_fields_without_outputs(data):
    _, sims, _, norm = data
    sim = {"static": sims[0]["static"], "params_scalar": sims[0]["params_scalar"], "priors": sims[0]["priors"]}
    grid, _ = R.rollout(ZeroModel(), norm, sim, progress=False)
    with pytest.raises(UserError, match="no /priors"):
        R.rollout(ZeroModel(), norm, {k: v for k, v in sim.items() if k != "priors"}, progress=False)
    assert grid.shape[0] == len(sim["priors"])  # as many years as the priors were derived for
    np.testing.assert_array_equal(grid[0, 0], sims[0]["static"][schema.STATIC_NAMES.index("Pressure0")])


# Tiled and whole-grid rollouts agree up to float32 rounding, which is relative: one float32 step
# at 1e7 Pa is 1 Pa, and how many such steps the sums collect depends on the thread count. A
# halo that is too small moves P by ~2e3 Pa and T by ~0.09 K (see the guard test below).
FIELD_RTOL = 1e-6  # 10 Pa at 1e7 Pa, 4e-4 K at 355 K


@pytest.mark.parametrize("tile", [(5, 4, 3), (12, 10, 8), (1, 10, 8)])
def test_tiled_equals_full_with_global_context(data, tile):
    _, sims, _, norm = data
    model = LocalGlobalModel()
    full, full_s = R.rollout(model, norm, sims[1], progress=False)
    tiled, tiled_s = R.rollout(model, norm, sims[1], tile=tile, progress=False)
    np.testing.assert_allclose(tiled, full, rtol=FIELD_RTOL, atol=0)
    np.testing.assert_allclose(tiled_s, full_s, rtol=1e-6)


def test_too_small_halo_is_detected_by_the_tiled_test(data):
    # guard that the tiled==full test can fail: a model lying about its receptive field differs
    _, sims, _, norm = data
    model = LocalGlobalModel()
    model.receptive_field = 0
    full, _ = R.rollout(model, norm, sims[1], progress=False)
    tiled, _ = R.rollout(model, norm, sims[1], tile=(5, 4, 3), progress=False)
    for var in range(2):  # each field differs by far more than the tolerance of the test above
        assert not np.allclose(tiled[:, var], full[:, var], rtol=100 * FIELD_RTOL, atol=0), var


def test_tiles_without_active_cells_are_skipped(data, monkeypatch):
    _, sims, _, norm = data
    sim = dict(sims[0])
    sim["static"] = sim["static"].copy()
    sim["static"][1, :6] = 0.0  # top half inactive
    calls = []
    model = LocalGlobalModel()
    orig = model.forward

    def counting(*a, **k):
        calls.append(k.get("origin"))
        return orig(*a, **k)

    monkeypatch.setattr(model, "forward", counting)
    R.rollout(model, norm, sim, tile=(6, 10, 8), progress=False)
    assert len(calls) == N_T - 1  # one tile per step: the inactive top tile is skipped
    assert all(int(o[0, 0]) == 6 - model.receptive_field for o in calls)


def test_predictions_layout_and_xdmf(data, tmp_path):
    _, sims, _, norm = data
    sim = sims[0]
    grid, scalar = R.rollout(LocalGlobalModel(), norm, sim, progress=False)
    out = predictions.write_predictions(tmp_path / "predictions.h5", grid, scalar, sim["static"][1],
                              {"checkpoint": "c.pt", "stats": "s.json", "source": "x.h5", "model_config": {"depth": 2}},
                              truth=(sim["outputs_grid"], sim["outputs_scalar"]))
    with h5py.File(out) as f:
        assert f["predicted/outputs_grid"].shape == (N_T, 2) + GRID
        assert f["predicted/outputs_grid"].dtype == np.float32
        assert f["predicted/outputs_scalar"].shape == (N_T, 5)
        assert f["truth/outputs_grid"].shape == (N_T, 2) + GRID
        assert f.attrs["checkpoint"] == "c.pt" and f.attrs["source"] == "x.h5" and f.attrs["stats"] == "s.json"
        assert json.loads(f.attrs["model_config"]) == {"depth": 2}
        np.testing.assert_array_equal(f["predicted/outputs_grid"][()], grid)
    assert (tmp_path / "predictions.xdmf").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temp file left


# ---------------------------------------------------------------------------
# checkpoint-level: CLI flags, evaluation
# ---------------------------------------------------------------------------
def real_model_ckpt(path, stats, **cfg_kwargs):
    """A tiny real VoxelAutoRegressor with random weights, saved like train.py does."""
    from dataclasses import asdict

    from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor

    torch.manual_seed(0)
    cfg = ModelConfig(**{"base_channels": 4, "depth": 1, "receptive_field_radius": 1, "context_channels": 4,
                         "context_stages": 1, "global_dim": 8, **cfg_kwargs})
    model = VoxelAutoRegressor(cfg).eval()
    with torch.no_grad():  # random weights give tiny changes; make them visible in Pa / K
        model.grid_head.weight.mul_(50.0)
    torch.save({"model": model.state_dict(), "model_config": asdict(cfg), "stats": stats.data,
                "stats_digest": stats.digest, "step": 0}, path)
    return Path(path), model


@pytest.mark.parametrize("global_context", [True, False])
def test_tiled_equals_full_real_model(data, tmp_path, global_context):
    _, sims, stats, norm = data
    _, model = real_model_ckpt(tmp_path / "m.pt", stats, global_context=global_context)
    full, full_s = R.rollout(model, norm, sims[1], progress=False)
    tiled, tiled_s = R.rollout(model, norm, sims[1], tile=(5, 3, 6), progress=False)
    assert np.abs(full[-1] - full[0]).max() > 1e3  # the model does change the state
    # equal up to float32 rounding: the whole grid upsamples the context with torch's one-pass
    # trilinear kernel, tiles with per-axis interpolation (same values, other rounding), and the
    # steps carry such differences on (seen: 27 Pa of 1e7, 2.7e-6); a halo one cell short is
    # off by 5e5 Pa (4.8e-2)
    np.testing.assert_allclose(tiled, full, rtol=2e-5, atol=0)
    if global_context:
        np.testing.assert_allclose(tiled_s, full_s, rtol=1e-5)
    else:  # the pooled scalar head of a local model is not defined per tile
        assert np.all(np.isnan(tiled_s[1:])) and np.all(np.isfinite(full_s))


def test_cli_rollout_writes_predictions(data, tmp_path, capsys):
    root, sims, stats, _ = data
    ckpt, model = real_model_ckpt(tmp_path / "m.pt", stats)
    from voxel_ode.cli import main

    sim_path = root / "test" / f"v2.4_0001{schema.PREPPED_SUFFIX}"
    out = tmp_path / "pred.h5"
    rc = main(["rollout", "--prepped_sim_path", str(sim_path), "--stats_path", str(root / "stats.json"),
               "--ckpt_path", str(ckpt), "--save_path", str(out), "--device", "cpu", "--depth", "1",
               "--tile", "6", "10", "8", "--plots", str(tmp_path / "pics"), "--no_progress"])
    assert rc == 0
    assert f"receptive field: {model.receptive_field}" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f["predicted/outputs_grid"].shape == (N_T, 2) + GRID
        assert f.attrs["source"] == str(sim_path.resolve())
        assert json.loads(f.attrs["model_config"])["depth"] == 1
        assert "truth" not in f
    assert (tmp_path / "pred.xdmf").exists()
    assert len(list((tmp_path / "pics").glob("*.png"))) >= 3
    # an architecture flag that disagrees with the checkpoint: one line, exit 1
    rc = main(["rollout", "--prepped_sim_path", str(sim_path), "--ckpt_path", str(ckpt),
               "--save_path", str(tmp_path / "x.h5"), "--base_channels", "128", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "base_channels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_evaluate_table_on_tiny_fixtures(data, tmp_path, capsys):
    root, sims, stats, _ = data
    ckpt, _ = real_model_ckpt(tmp_path / "m.pt", stats)
    out = tmp_path / "eval"
    summary = evaluate_mod.evaluate(root, ckpt, out, split="test", device="cpu", plots=True, linear_baseline=True,
                         progress=False)
    printed = capsys.readouterr().out
    assert "rel. change error P" in printed and "persistence last" in printed
    # the legend says what the columns are and which tolerances the accuracies use
    assert "last: at the last step" in printed and "500000 Pa (P) or 5 K (T)" in printed
    assert set(summary) == {"model", "persistence", "linear"}
    assert summary["linear"]["acc +/-5% scalars"]["last"] is None  # not predicted: null, shown as "-"
    assert "rel. change error P" in evaluate_mod.format_table(summary)  # the demo prints the returned summary
    # persistence's change error is exactly 1 at every step
    assert summary["persistence"]["rel. change error P"]["last"] == pytest.approx(1.0)
    assert summary["persistence"]["rel. change error T"]["mean"] == pytest.approx(1.0)
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["per_sim"]) == {"v2.4_0001"}
    # these hand-made stats hold no training ranges (as from an earlier prep): said, not guessed
    assert report["out_of_range"] == {"v2.4_0001": None} and "out-of-range check: not available" in printed
    p_err = report["per_sim"]["v2.4_0001"]["model"]["grid"]["Pressure"]["rel_change_err"]
    assert len(p_err) == N_T
    lines = (out / "metrics_per_step.csv").read_text().splitlines()
    assert lines[0].startswith("sim,method,variable,step")
    # 3 methods x 2 grid variables x N_T steps + 2 methods with scalars x 5 scalars x N_T steps
    assert len(lines) - 1 == 3 * 2 * N_T + 2 * 5 * N_T
    assert (out / "linear_baseline.npz").exists()
    assert (out / "predictions" / "v2.4_0001.h5").exists() and (out / "predictions" / "v2.4_0001.xdmf").exists()
    with h5py.File(out / "predictions" / "v2.4_0001.h5") as f:  # the run's cell sizes, for the XDMF in metres
        params = sims[0]["params_scalar"]
        expected = [float(params[schema.PARAM_NAMES.index(n)]) for n in ("CellSizeX", "CellSizeY", "CellSizeZ")]
        assert json.loads(f.attrs["cell_size_m"]) == pytest.approx(expected)
    assert (out / "plots" / "error_curves.png").exists()
    assert (out / "plots" / "v2.4_0001" / "scalars.png").exists()


def test_arch_flag_mismatch_is_a_user_error():
    args = dict(receptive_field_radius=3, base_channels=None, depth=12)
    checkpoint.check_arch_flags(args, {"receptive_field_radius": 3, "base_channels": 16, "depth": 12}, "c.pt")  # agrees
    with pytest.raises(UserError, match="depth: checkpoint has 4, --depth says 12"):
        checkpoint.check_arch_flags(args, {"receptive_field_radius": 3, "base_channels": 16, "depth": 4}, "c.pt")


def test_stats_path_must_match_checkpoint(tmp_path, data):
    _, _, stats, _ = data
    other = json.loads(json.dumps(stats.data))
    other["dynamic"]["std"][0] *= 2
    p = tmp_path / "stats.json"
    p.write_text(json.dumps(other))
    with pytest.raises(UserError, match="differ from the stats"):
        checkpoint.stats_for({"stats": stats.data, "stats_digest": stats.digest}, "c.pt", p)
    p.write_text(json.dumps(stats.data))
    assert checkpoint.stats_for({"stats": stats.data, "stats_digest": stats.digest}, "c.pt", p)["dynamic"] == stats["dynamic"]


def test_linear_baseline_fits_a_linear_truth(data, tmp_path):
    root, sims, stats, norm = data
    w = baselines.fit_linear_baseline(root, stats, norm, save_path=tmp_path / "lin.npz", progress=False)
    assert w.shape == (2, schema.N_INPUT_CHANNELS + schema.N_PARAMS + 1)
    np.testing.assert_array_equal(baselines.load_linear_baseline(tmp_path / "lin.npz", stats), w)
    other = json.loads(json.dumps(stats.data))
    other["dynamic"]["mean"][0] += 1.0
    assert baselines.load_linear_baseline(tmp_path / "lin.npz", Stats(other, "other")) is None  # fitted with other stats: refit
    grid, scalar = R.run_stepper(baselines.LinearStepper(w, norm), sims[1], progress=False)
    inactive = sims[1]["static"][1] < 0.5
    assert np.array_equal(grid[:, :, inactive], np.repeat(grid[:1, :, inactive], N_T, 0))
    assert np.all(np.isnan(scalar[1:]))
    # the rollout applies exactly the model that was fitted (same features at t = 0)
    idx = np.flatnonzero(~inactive.ravel())[:20]
    static_norm = np.asarray(norm.normalize_static(sims[1]["static"]), np.float64).reshape(schema.N_STATIC, -1)
    feats = baselines._linear_features(norm, sims[1]["static"].reshape(schema.N_STATIC, -1), static_norm,
                               sims[1]["outputs_grid"][0], prior_pair(sims[1]["priors"], 0),
                               np.asarray(norm.normalize_params(sims[1]["params_scalar"]), np.float64), idx)
    step1 = (grid[1] - grid[0]).reshape(2, -1)[:, idx].T
    # grid is float32: the change of one year carries the rounding of ~1e7 Pa (1 Pa per value)
    rounding = 2 * np.spacing(np.abs(grid[0]).reshape(2, -1).max(1))
    for var in range(2):
        np.testing.assert_allclose(step1[:, var], feats @ w[var], rtol=1e-3, atol=float(rounding[var]))
    # fitted on the train sims, it must beat persistence on them (the fixture's change is ~linear in t)
    from voxel_ode import metrics as M

    err = M.relative_change_error(grid[:, 0], sims[1]["outputs_grid"][:, 0], sims[1]["static"][1])
    assert np.nanmean(err[1:]) < 0.9


def test_raw_file_gives_the_same_arrays_as_prep(tmp_path):
    raw = fixtures.write_raw_sim(tmp_path / "v2.4_0001.h5", grid=GRID, n_t=N_T, seed=0)
    sim = R.load_sim(raw, desc=description.Description.from_dict(fixtures.DESCRIPTION))  # raw, by its layout
    ref = prepped_arrays(seed=0)
    np.testing.assert_array_equal(sim["static"], ref["static"])
    np.testing.assert_array_equal(sim["outputs_grid"], ref["outputs_grid"])
    np.testing.assert_array_equal(sim["priors"], ref[schema.PREPPED_PRIORS])
    assert sim["source"] == str(raw)
    bad = fixtures.write_raw_sim(tmp_path / "v2.4_0002.h5", grid=GRID, n_t=N_T, skip=("Porosity",))
    with pytest.raises(UserError, match="Porosity"):
        R.load_sim(bad)


def test_cli_raw_input_and_evaluate_command(data, tmp_path):
    root, sims, stats, _ = data
    ckpt, _ = real_model_ckpt(tmp_path / "m.pt", stats)
    from voxel_ode.cli import main

    # a raw v2.4 file that was never prepped, normalized with the checkpoint's stats
    raw = fixtures.write_raw_sim(tmp_path / "new.h5", grid=GRID, n_t=N_T, seed=7)
    out = tmp_path / "raw_pred.h5"
    assert main(["rollout", "--raw_sim_path", str(raw), "--ckpt_path", str(ckpt), "--save_path", str(out),
                 "--device", "cpu", "--save_truth", "--no-xdmf", "--amp", "bf16", "--no_progress"]) == 0
    with h5py.File(out) as f:
        truth = f["truth/outputs_grid"][()]
        np.testing.assert_array_equal(f["predicted/outputs_grid"][0], truth[0])
        assert f.attrs["stats"] == "checkpoint"
    assert not out.with_suffix(".xdmf").exists()
    # `voxel-ode evaluate` from the command line, with other tolerances
    ev = tmp_path / "ev"
    assert main(["evaluate", "--prepped_root", str(root), "--ckpt_path", str(ckpt), "--out", str(ev),
                 "--device", "cpu", "--no_predictions", "--tol_pressure", "1e9", "--tol_temperature", "1e9",
                 "--split", "train", "--max_sims", "1", "--no_progress"]) == 0
    report = json.loads((ev / "metrics.json").read_text())
    assert report["config"]["tol_pressure"] == 1e9 and report["config"]["tol_temperature"] == 1e9
    for var in ("P", "T"):  # every cell is within 1e9 Pa / K
        assert report["summary"]["model"][f"acc +/-tol {var}"]["last"] == 1.0
    assert list(report["per_sim"]) == ["v2.4_0002"]  # the first of the two training runs only
    assert not (ev / "predictions").exists() and not (ev / "plots").exists()


def test_linear_baseline_ridge_shrinks_weights(data):
    # the ridge is what keeps the fit usable when params / permeabilities are collinear
    # (few training simulations): it must shrink the penalized weights (all but the bias)
    root, _, stats, norm = data
    plain = baselines.fit_linear_baseline(root, stats, norm, ridge=0.0, cells_per_step=300, progress=False)
    ridge = baselines.fit_linear_baseline(root, stats, norm, ridge=1.0, cells_per_step=300, progress=False)
    assert np.linalg.norm(ridge[:, :-1]) < 0.9 * np.linalg.norm(plain[:, :-1])


def test_initial_scalars_estimate_matches_a_synth_run():
    """Without the t = 0 report, the estimate of the t = 0 field scalars equals what synth wrote."""
    from voxel_ode.synth import voxel as synth

    arrays = synth.simulate((6, 8, 8), seed=5, n_steps=2, substeps=1)
    t_inj = arrays["ParamsScalar"][schema.PARAM_NAMES.index("InjectionTemperature")]
    gap = np.where(arrays["IsActive"] > 0.5, t_inj - arrays["Temperature0"], 0.0)
    static = np.stack([arrays[n] for n in schema.RAW_STATIC_NAMES]
                      + [np.zeros_like(arrays["IsActive"]), gap])  # FaultBoundary (not used here), the gap
    sim = {"static": static, "params_scalar": arrays["ParamsScalar"]}
    expect = np.array([arrays[n][0] for n in schema.SCALAR_NAMES])
    np.testing.assert_allclose(R.initial_scalars(sim), expect, rtol=1e-5)
    sim["outputs_scalar"] = expect[None] * 2.0  # a given report wins
    np.testing.assert_array_equal(R.initial_scalars(sim), expect * 2.0)


def _small_active(sim, boxes):
    """sim with only the cells of ``boxes`` (slices) active; inputs zeroed elsewhere like prep does."""
    sim = dict(sim)
    active = np.zeros(sim["static"].shape[1:], bool)
    for box in boxes:
        active[box] = True
    static = sim["static"].copy()
    static[1] = active
    sim["static"] = static
    return sim, active


@pytest.mark.parametrize("overhead", [regions.REGION_OVERHEAD_CELLS, 0])
def test_cropped_equals_full_grid_on_a_small_active_region(data, tmp_path, monkeypatch, overhead):
    """Cropping to the active cells (one box, or slabs each with its own halo: overhead 0 makes
    the plan split this tiny grid) gives the full grid's rollout."""
    _, sims, stats, norm = data
    monkeypatch.setattr(regions, "REGION_OVERHEAD_CELLS", overhead)
    _, model = real_model_ckpt(tmp_path / "m.pt", stats)  # receptive field 3
    # two blobs, 15 % of the grid, one touching the grid's edge
    sim, active = _small_active(sims[1], [np.s_[1:4, 2:7, 1:5], np.s_[8:12, 5:10, 4:8]])
    stepper = R.ModelStepper(model, norm)
    stepper.start(sim)
    computed = sum(int(np.prod(np.subtract(p[3], p[2]))) for p in stepper.plan)
    assert computed < 0.75 * active.size, stepper.plan  # the crop skips most of the grid
    assert (len(stepper.plan) > 1) == (overhead == 0)
    full, full_s = R.rollout(model, norm, sim, progress=False, crop=False)
    cropped, cropped_s = R.rollout(model, norm, sim, progress=False)
    change = np.abs(full[-1] - full[0])[:, active].max(axis=1)  # per variable, Pa and K
    assert np.all(change > 0)  # the model does move the state
    err = np.abs(cropped - full)[:, :, active].max(axis=(0, 2))
    assert np.all(err <= 1e-4 * change), (err, change)  # float rounding of the field's change, not more
    np.testing.assert_allclose(cropped_s, full_s, rtol=1e-5)


def test_too_small_crop_halo_is_detected(data, tmp_path, monkeypatch):
    _, sims, stats, norm = data
    monkeypatch.setattr(regions, "REGION_OVERHEAD_CELLS", 0)
    _, model = real_model_ckpt(tmp_path / "m.pt", stats)
    sim, active = _small_active(sims[1], [np.s_[1:5, 2:7, 1:5], np.s_[4:12, 5:10, 4:8]])
    full, _ = R.rollout(model, norm, sim, progress=False, crop=False)
    stepper = R.ModelStepper(model, norm)
    stepper.receptive_field = 1  # lies: the slabs' halos are too thin
    cropped, _ = R.run_stepper(stepper, sim, progress=False)
    assert len(stepper.plan) > 1
    assert np.abs(cropped - full)[:, :, active].max() > 1e-2


def test_bf16_rollout_close_to_fp32(data, tmp_path):
    """bf16 autocast (the CPU default where it measured faster) moves a rollout's change by a few
    per cent at most; its rounding is ~0.4 %, and the state itself is carried in fp32. (This random
    model, head x 50, amplifies it: 2.7 % of the pressure change after 4 steps, 0.2 % of the
    temperature's; depth 2: 6.7 %.)"""
    _, sims, stats, norm = data
    _, model = real_model_ckpt(tmp_path / "m.pt", stats)
    fp32, _ = R.rollout(model, norm, sims[1], progress=False)
    bf16, _ = R.rollout(model, norm, sims[1], progress=False, precision=precision.resolve("bf16", "cpu"))
    active = sims[1]["static"][1] > 0.5
    for v in range(2):
        change = (fp32[-1, v] - fp32[0, v])[active]
        diff = (bf16[-1, v] - fp32[-1, v])[active]
        assert np.linalg.norm(change) > 0 and np.linalg.norm(diff) < 0.06 * np.linalg.norm(change)
        assert np.linalg.norm(diff) > 0  # bf16 really ran
