"""Uncertainty bands: the conformal quantile on a case with a known answer, the calibration split
of prep, the bands file tied to its checkpoint, and bands in predictions.h5 and evaluate."""

import json
import math

import h5py
import numpy as np
import pytest

from fixtures import write_raw_dir
from voxel_ode import metrics as M
from voxel_ode import schema
from voxel_ode.cli import main
from voxel_ode.data.prep import prep
from voxel_ode.inference import bands
from voxel_ode.inference import evaluate as evaluate_module
from voxel_ode.inference.evaluate import evaluate
from voxel_ode.inference.predict import predict_file
from voxel_ode.training.train import train
from voxel_ode.utils import UserError

GRID = dict(grid=(12, 10, 8), n_t=6)
TINY = dict(base_channels=8, depth=1, receptive_field_radius=1, num_threads=1, quiet=True, max_steps=2,
            sample_mode="full", batch_size=2, amp="none")


def test_a_conformal_band_of_gaussian_residuals_covers_its_share_of_fresh_draws():
    """Scores |e| of N(0, 1) residuals: the 90 % quantile is 1.645; a band of it covers 90 % of
    fresh residuals (the next order statistic would not, nor the one before)."""
    rng = np.random.default_rng(0)
    scores = np.abs(rng.standard_normal(20_000))
    q = bands.conformal_quantile(scores, 0.9)
    assert q == pytest.approx(1.6449, abs=0.03)
    fresh = np.abs(rng.standard_normal(200_000))
    assert np.mean(fresh <= q) == pytest.approx(0.9, abs=0.005)
    # the rank: ceil((n + 1) 0.9) of n = 9 scores 1..9 is the 9th, of n = 19 scores 1..19 the 18th
    assert bands.conformal_quantile(np.arange(1, 10), 0.9) == 9
    assert bands.conformal_quantile(np.arange(1, 20), 0.9) == 18
    assert bands.conformal_quantile(np.arange(1, 9), 0.9) == math.inf  # 8 scores cannot promise 90 %


def test_a_band_scaled_by_sigma_covers_heteroscedastic_residuals_cell_by_cell():
    """Residuals N(0, s^2) with s known per cell: with the scale the band covers 90 % of the small-
    and of the large-s cells alike; a band of one width over-covers the one and under-covers the other."""
    rng = np.random.default_rng(1)
    s = np.where(np.arange(40_000) % 2 == 0, 0.1, 10.0)
    q = bands.conformal_quantile(np.abs(rng.standard_normal(s.size) * s) / s, 0.9)
    fresh = np.abs(rng.standard_normal(s.size) * s)
    for half in (s == 0.1, s == 10.0):
        assert np.mean(fresh[half] <= q * s[half]) == pytest.approx(0.9, abs=0.01)
    flat = bands.conformal_quantile(np.abs(rng.standard_normal(s.size) * s), 0.9)
    assert np.mean(fresh[s == 0.1] <= flat) > 0.99 and np.mean(fresh[s == 10.0] <= flat) < 0.85


def test_band_metrics_count_coverage_width_and_rank_correlation():
    true = np.zeros((2, 2, 1, 1, 4))
    pred = true.copy()
    pred[1, :, 0, 0] = [0.0, 1.0, 2.0, 3.0]
    half = np.zeros_like(pred)
    half[1, :, 0, 0] = [0.5, 1.5, 1.0, 4.0]  # covers cells 0, 1, 3
    out = M.band_metrics(pred - half, pred + half, pred, true, np.ones((1, 1, 4)))
    assert out["Pressure"]["coverage"].tolist() == [1.0, 0.75]
    assert out["Pressure"]["width"][1] == pytest.approx(7.0 / 2)
    assert out["Pressure"]["rms_err"][1] == pytest.approx(math.sqrt(14 / 4))
    assert out["Pressure"]["spread_error_rank_corr"] == pytest.approx(0.8)


def test_scalars_forecast_exactly_are_left_out_of_width_over_rms():
    grid = {v: {"coverage": np.ones(3), "width": np.ones(3), "rms_err": np.ones(3), "spread_error_rank_corr": 0.5}
            for v in schema.DYNAMIC_NAMES}
    true = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]] * 3)
    per_sim = {}
    for k, err in enumerate((0.1, 0.7)):
        pred = true + err
        pred[:, 0] = true[:, 0] * (1 + 1e-9)  # a held well's water rate, taken from the priors
        half = np.full_like(true, 0.5)
        per_sim[f"run{k}"] = {"grid": grid, "scalar": M.scalar_band_metrics(pred - half, pred + half, pred, true)}
    out = evaluate_module.summarize_bands(per_sim)["scalars"]
    rms = math.sqrt((0.1 ** 2 + 0.7 ** 2) / 2)
    assert out["width_over_rms"]["last"] == pytest.approx(1.0 / rms)  # the other four; the first would be ~1e8
    assert out["exact"] == [schema.SCALAR_NAMES[0]]
    assert out["coverage"]["last"] == pytest.approx((5 + 1) / 10)  # run1's 0.7 errors are outside the half width 0.5
    assert "forecast exactly" in evaluate_module.format_bands_table({"scalars": out}, 0.9)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    base = tmp_path_factory.mktemp("bands")
    write_raw_dir(base / "raw", n=6, **GRID)
    summary = prep(base / "raw", base / "prepped", n_test=1, n_calibration=2, patch_size=(8, 8, 8),
                   stride=(4, 4, 4), progress=False)
    train(prepped_root=str(base / "prepped"), save_dir=str(base / "ck"), **TINY)
    return base, summary


def test_prep_puts_calibration_runs_aside_and_training_never_reads_them(calibrated):
    base, summary = calibrated
    assert summary["test"] == ["test/v2.4_0001.prepped.h5"]
    assert summary["calibration"] == ["calibration/v2.4_0002.prepped.h5", "calibration/v2.4_0003.prepped.h5"]
    assert len(summary["train"]) == 3
    stats = json.loads((base / "prepped" / "stats.json").read_text())
    assert stats["calibration_sims"] == summary["calibration"]
    assert not any("calibration" in p for p in stats["train_sims"])
    index = (base / "prepped" / "index_train.jsonl").read_text()
    assert "calibration/" not in index and "v2.4_0002" not in index
    with pytest.raises(UserError, match="leave none for training"):
        prep(base / "raw", base / "other", n_test=3, n_calibration=3, progress=False)


def test_bands_are_written_read_and_refused_for_another_checkpoint(calibrated, tmp_path, capsys):
    base, _ = calibrated
    ckpt = base / "ck" / "last.pt"
    assert main(["bands", "--prepped_root", str(base / "prepped"), "--ckpt_path", str(ckpt),
                 "--no_progress", "--device", "cpu"]) == 0
    path = bands.default_path(ckpt)
    written = json.loads(path.read_text())
    assert written["calibration_runs"] == ["v2.4_0002.prepped.h5", "v2.4_0003.prepped.h5"]
    assert len(written["grid"]["Pressure"]["quantiles"]) == GRID["n_t"]
    assert bands.load(path, ckpt)["coverage"] == 0.9
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes() + b"x")
    capsys.readouterr()
    assert main(["rollout", "--prepped_sim_path", str(base / "prepped" / "test" / "v2.4_0001.prepped.h5"),
                 "--ckpt_path", str(other), "--bands", str(path), "--save_path", str(tmp_path / "p.h5"),
                 "--no_progress", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bands calibrated for another checkpoint" in err[0]


def test_predictions_and_evaluate_carry_the_bands(calibrated, tmp_path, capsys):
    base, _ = calibrated
    ckpt = base / "ck" / "last.pt"
    if not bands.default_path(ckpt).exists():
        bands.calibrate(base / "prepped", ckpt, progress=False)
    source = base / "prepped" / "test" / "v2.4_0001.prepped.h5"
    predict_file(ckpt, source, tmp_path / "p.h5", device="cpu", amp="none", progress=False,
                 plots_dir=tmp_path / "plots")
    with h5py.File(tmp_path / "p.h5") as f:
        grid = f["predicted/outputs_grid"][()]
        low, high = f["predicted/band_low"][()], f["predicted/band_high"][()]
        assert low.shape == grid.shape and low.dtype == np.float32
        assert np.all(low <= grid) and np.all(grid <= high) and np.all(low[0] == high[0])
        assert f["predicted/scalar_band_low"].shape == f["predicted/outputs_scalar"].shape
    assert "PressureBandWidth" in (tmp_path / "p.xdmf").read_text()
    assert list((tmp_path / "plots").glob("band_width_step*.png"))
    evaluate(base / "prepped", ckpt, tmp_path / "ev", device="cpu", plots=False, progress=False)
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())["bands"]
    assert set(report["summary"]) >= {"Pressure", "Temperature"}
    assert 0.0 <= report["summary"]["Pressure"]["coverage"]["mean"] <= 1.0
    assert "coverage last" in capsys.readouterr().out


def test_without_a_bands_file_one_line_says_how_to_get_them(tmp_path, capsys):
    write_raw_dir(tmp_path / "raw", n=3, **GRID)
    prep(tmp_path / "raw", tmp_path / "prepped", n_test=1, patch_size=(8, 8, 8), stride=(4, 4, 4), progress=False)
    train(prepped_root=str(tmp_path / "prepped"), save_dir=str(tmp_path / "ck"), **TINY)
    capsys.readouterr()
    predict_file(tmp_path / "ck" / "last.pt", tmp_path / "prepped" / "test" / "v2.4_0001.prepped.h5",
                 tmp_path / "p.h5", device="cpu", amp="none", progress=False)
    assert bands.HOW_TO in capsys.readouterr().out
    with h5py.File(tmp_path / "p.h5") as f:
        assert "predicted/band_low" not in f
    with pytest.raises(UserError, match="calibration/: no runs"):
        bands.calibrate(tmp_path / "prepped", tmp_path / "ck" / "last.pt", progress=False)


def _toy_run(rng, scale, n=500):
    """A run whose errors at step 1 are |N(0, scale^2)| in every cell (one scale per run), with a
    scale sigma of 1 Pa (EPS) everywhere."""
    err = np.zeros((2, 2, n), np.float32)
    err[1] = np.abs(rng.standard_normal((2, n))) * scale
    zero = np.zeros_like(err)
    return {"error": err, "terms": {"change": zero, "prior": zero, "front": zero, "rms": np.zeros((2, 2), np.float32)}}


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_the_run_factor_sizes_the_band_for_a_new_run(spread):
    """Cells of a run share its error scale: a quantile pooled over 8 runs' cells then under-covers
    a new run (when the scale varies from run to run); the left-out-run factor brings a new run's
    coverage back to 90 % on average, and stays ~1 where every run has the same scale."""
    rng = np.random.default_rng(7)
    pooled, with_factor, factors = [], [], []
    for _ in range(80):
        fit = bands.fit_variable([_toy_run(rng, np.exp(rng.normal(0, spread))) for _ in range(8)], 0, 0.9,
                                 choices=[(0.0, 0.0, 0.0, 1.0)])
        half = fit["quantiles"][1] * bands.EPS["Pressure"]
        fresh = [_toy_run(rng, np.exp(rng.normal(0, spread)))["error"][1, 0] for _ in range(50)]
        pooled.append(np.mean([np.mean(e <= half) for e in fresh]))
        with_factor.append(np.mean([np.mean(e <= fit["run_factor"] * half) for e in fresh]))
        factors.append(fit["run_factor"])
    assert np.mean(with_factor) == pytest.approx(0.9, abs=0.025)
    if spread:
        assert np.mean(pooled) < np.mean(with_factor) - 0.02 and np.mean(factors) > 1.1
    else:
        assert np.mean(factors) == pytest.approx(1.0, abs=0.01)


def test_front_is_the_largest_jump_to_an_active_neighbour():
    grid = np.zeros((1, 2, 1, 1, 5), np.float32)
    grid[0, 1, 0, 0] = [0.0, 0.0, 10.0, 10.0, 50.0]  # two jumps: 10 between cells 1-2, 40 between 3-4
    active = np.ones((1, 1, 5), bool)
    assert bands.front(grid, active)[0, 1].tolist() == [0.0, 10.0, 10.0, 40.0, 40.0]
    active[0, 0, 4] = False  # an inactive neighbour's jump does not count
    assert bands.front(grid, active)[0, 1].tolist() == [0.0, 10.0, 10.0, 0.0]
    assert not bands.front(grid, active)[0, 0].any()


def _run_with(error, change, prior):
    """One step's run (T = 2) whose P error and change / prior terms are the given cell arrays."""
    n = len(error)

    def grid(x):
        return np.stack([np.zeros((2, n)), np.stack([x, x])]).astype(np.float32)

    return {"error": grid(error), "terms": {"change": grid(change), "prior": grid(prior),
                                            "front": np.zeros((2, 2, n), np.float32),
                                            "rms": np.zeros((2, 2), np.float32)}}


def test_a_left_out_run_is_scored_at_the_weights_chosen_without_it():
    """The factor must pay for the choice of weights: runs 1 and 2 make their errors follow the
    change term, run 0 (many more cells) the prior term, so all three together choose the prior and
    the two without run 0 the change. Run 0's ratios are its scores at the change's weights over the
    quantile of runs 1 and 2; at the weights chosen on all three they would be others."""
    rng = np.random.default_rng(3)
    a, b, c, noise_a, noise_b, noise_c = (np.abs(rng.standard_normal(k)) + 0.1 for k in (2000, 100, 100) * 2)
    runs = [_run_with(a, noise_a, a), _run_with(b, b, noise_b), _run_with(c, c, noise_c)]
    by_change, by_prior = (1.0, 0.0, 0.0, 0.02), (0.0, 1.0, 0.0, 0.02)
    choices = [by_change, by_prior]
    assert bands.choose_weights(runs, 0, 0.9, choices) == by_prior
    assert bands.choose_weights(runs[1:], 0, 0.9, choices) == by_change
    ratios = bands.left_out_ratios(runs, 0, 0.9, choices)
    q = bands.conformal_quantile(np.concatenate([x["error"][1, 0] / bands.sigma(x["terms"], 0, 1, by_change)
                                                 for x in runs[1:]]), 0.9)
    expected = runs[0]["error"][1, 0] / bands.sigma(runs[0]["terms"], 0, 1, by_change) / q
    np.testing.assert_allclose(ratios[0][0], expected, rtol=1e-6)
    fit = bands.fit_variable(runs, 0, 0.9, choices)
    assert fit["weights"] == list(by_prior) and fit["run_factor"] > 1.5  # run 0 is far off at the change's weights


def test_weights_chosen_on_a_subset_of_a_large_run_still_find_the_scale_its_errors_follow(monkeypatch):
    """Runs larger than CHOICE_CELLS: the choice looks at a subset of their cells and still picks
    the term the errors follow (here the prior's) over the change's."""
    monkeypatch.setattr(bands, "CHOICE_CELLS", 500)
    rng = np.random.default_rng(5)
    runs = []
    for _ in range(3):
        prior, change = np.abs(rng.standard_normal(5000)) + 0.1, np.abs(rng.standard_normal(5000)) + 0.1
        runs.append(_run_with(prior * np.abs(rng.normal(1, 0.1, 5000)), change, prior))
    thinned = bands._thinned(runs[0], 500)
    assert thinned["error"].shape[2] == 500 and thinned["terms"]["prior"].shape[2] == 500
    assert bands.choose_weights(runs, 0, 0.9, [(1.0, 0.0, 0.0, 0.02), (0.0, 1.0, 0.0, 0.02)]) == (0.0, 1.0, 0.0, 0.02)


def test_a_scalar_band_is_no_wider_than_the_largest_calibration_error():
    """Four calibration runs get a scalar exactly (water rates of runs that held theirs), one errs
    by up to 5 %: the factor learnt with that run left out would be ~1e6 against the others' float
    rounding; the band stays within twice the largest relative error seen, and covers it."""
    rng = np.random.default_rng(5)
    runs = []
    for k in range(5):
        pred = np.full((31, 5), 40.0)
        true = pred * (1 + rng.normal(0, 1e-9, pred.shape))
        if k == 4:  # the one run held at a limit: its delivered rate falls behind the forecast
            true[:, 3] = pred[:, 3] * (1 - np.linspace(0.0, 0.05, 31))
        runs.append({"pred": pred, "true": true})
    fit = bands.fit_scalars(runs, 0.9)[schema.SCALAR_NAMES[3]]
    t = np.arange(1, 31)
    half = fit["run_factor"] * fit["quantile"] * bands.scalar_scale(runs[4]["pred"][1:, 3], t, 31, fit["power"])
    errors = np.abs(runs[4]["true"][1:, 3] - runs[4]["pred"][1:, 3])
    assert np.all(errors <= half * (1 + 1e-9))  # the held run's steps are covered
    assert half.max() <= bands.SCALAR_WIDTH_CAP * 0.05 * 40.0 * (1 + 1e-9)  # not ~1e4x the rate
    assert fit["relative_width"] < 0.4


def test_a_new_runs_scalar_offset_gets_a_band_sized_for_runs_not_steps():
    """A run's scalars err by one relative offset over all its steps, drawn anew per run: the
    quantile pooled over the steps of 6 runs covers 90 % of those runs' steps but fewer of a new
    run's; with the left-out-run factor a new run's steps are covered ~90 % on average."""
    rng = np.random.default_rng(11)

    def run():
        pred = np.ones((12, 5)) * 100.0
        true = pred * (1 + rng.normal(0, 0.01, 5) + rng.normal(0, 0.001, (12, 5)))
        return {"pred": pred, "true": true}

    with_factor, pooled = [], []
    for _ in range(60):
        fit = bands.fit_scalars([run() for _ in range(6)], 0.9)
        name = schema.SCALAR_NAMES[0]
        half = fit[name]["quantile"] * bands.scalar_scale(np.array([100.0]), np.arange(1, 12), 12, fit[name]["power"])
        fresh = [run() for _ in range(20)]
        errors = np.array([np.abs(r["true"][1:, 0] - r["pred"][1:, 0]) for r in fresh])
        pooled.append(np.mean(errors <= half))
        with_factor.append(np.mean(errors <= fit[name]["run_factor"] * half))
    assert np.mean(with_factor) == pytest.approx(0.9, abs=0.03)
    assert np.mean(pooled) < np.mean(with_factor) - 0.05
