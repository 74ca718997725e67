"""Metrics on toy arrays whose answers are worked out by hand."""

import json
import math

import numpy as np

from voxel_ode import schema
from voxel_ode import metrics


def _toy():
    # 1 x 1 x 3 grid, cell 2 inactive; 3 steps
    active = np.array([[[1, 1, 0]]], np.float32)
    true = np.zeros((3, 1, 1, 3), np.float64)
    true[0] = [100.0, 200.0, 7.0]
    true[1] = [103.0, 204.0, 7.0]  # change since t=0: (3, 4) -> norm 5
    true[2] = [106.0, 208.0, 7.0]  # change (6, 8) -> norm 10
    return active, true


def test_relative_change_error_by_hand():
    active, true = _toy()
    persistence = np.repeat(true[:1], 3, axis=0)
    persistence[:, ..., 2] = 1e9  # an inactive cell must not count
    np.testing.assert_allclose(metrics.relative_change_error(persistence, true, active), [0.0, 1.0, 1.0])
    pred = true.copy()
    pred[1, 0, 0, 0] += 1.0  # error norm 1 over change norm 5
    pred[2, 0, 0, 1] -= 5.0  # 5 / 10
    np.testing.assert_allclose(metrics.relative_change_error(pred, true, active), [0.0, 0.2, 0.5])


def test_relative_change_error_zero_guard():
    active = np.ones((1, 1, 2), np.float32)
    true = np.ones((2, 1, 1, 2))
    pred = true.copy()
    out = metrics.relative_change_error(pred, true, active)
    assert out.tolist() == [0.0, 0.0]  # 0/0 -> 0
    pred[1, 0, 0, 0] = 2.0
    out = metrics.relative_change_error(pred, true, active)
    assert out[0] == 0.0 and math.isnan(out[1])  # x/0 -> NaN, not inf


def test_accuracies_and_mse_by_hand():
    active, true = _toy()
    pred = true.copy()
    pred[1] = [108.0, 204.0, -1e9]  # cell 0 off by 5 (= 4.85% of 103), cell 1 exact
    pred[2] = [106.0, 219.0, -1e9]  # cell 1 off by 11 (5.3% of 208)
    np.testing.assert_allclose(metrics.accuracy_pct(pred, true, active), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(metrics.accuracy_abs(pred, true, active, tol=5.0), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(metrics.accuracy_abs(pred, true, active, tol=4.9), [1.0, 0.5, 0.5])
    # normalized MSE with std 2: step 1 -> ((5/2)^2 + 0) / 2 = 3.125; step 2 -> (11/2)^2 / 2
    np.testing.assert_allclose(metrics.mse_normalized(pred, true, active, std=2.0), [0.0, 3.125, 30.25 / 2])


def test_tolerance_hits_are_the_same_on_arrays_and_tensors():
    """Training's evaluation counts its +/- hits on torch tensors with these same functions."""
    import torch

    true = np.array([100.0, 200.0, -40.0, 0.0])
    pred = np.array([105.0, 211.0, -42.0, np.nan])  # 5% of 100 (in), 5.5% of 200 (out), 5% of 40 (in), NaN
    assert metrics.within_pct(pred, true).tolist() == [True, False, True, False]
    assert metrics.within_abs(pred, true, 5.0).tolist() == [True, False, True, False]
    assert metrics.within_abs(pred, true, 11.0).tolist() == [True, True, True, False]
    t, p = torch.from_numpy(true), torch.from_numpy(pred)
    assert metrics.within_pct(p, t).tolist() == metrics.within_pct(pred, true).tolist()
    assert metrics.within_abs(p, t, torch.tensor(5.0)).tolist() == metrics.within_abs(pred, true, 5.0).tolist()


def test_grid_metrics_uses_default_tolerances_per_variable():
    active = np.ones((1, 1, 1), np.float32)
    true = np.zeros((2, 2, 1, 1, 1))
    true[:, 0] = 2e7
    true[:, 1] = 350.0
    pred = true.copy()
    pred[1, 0] += 4e5  # within 5 bar
    pred[1, 1] += 6.0  # outside 5 K
    out = metrics.grid_metrics(pred, true, active, dynamic_std=[1e6, 10.0])
    assert out["Pressure"]["acc_abs"][1] == 1.0
    assert out["Temperature"]["acc_abs"][1] == 0.0
    assert out["Temperature"]["acc_pct"][1] == 1.0  # 6 K is < 5% of 350 K: the loose bar
    assert schema.DEFAULT_PRESSURE_TOL_PA == 5e5


def test_scalar_metrics_and_summary_json():
    true = np.ones((3, schema.N_SCALARS)) * 100.0
    true[0, 2] = 0.0  # cumulative total starts at 0
    pred = true.copy()
    pred[1, 0] = 104.0  # 4%: accurate
    pred[2, 0] = 110.0  # 10%: not
    pred[:, 3] = np.nan  # not predicted
    out = metrics.scalar_metrics(pred, true)
    np.testing.assert_allclose(out["FieldEnergyInjectionRate"]["acc_pct"], [1, 1, 0])
    np.testing.assert_allclose(out["FieldEnergyInjectionRate"]["rel_err"], [0, 0.04, 0.1])
    assert out["FieldEnergyProductionTotal"]["rel_err"][0] == 0.0  # 0/0
    assert out["FieldWaterInjectionRate"]["acc_pct"].tolist() == [0, 0, 0]
    summary = metrics.summarize_steps(out)
    assert summary["FieldEnergyInjectionRate"]["acc_pct"] == {"last": 0.0, "mean": 0.5}
    assert math.isnan(summary["FieldWaterInjectionRate"]["rel_err"]["mean"])
    text = json.dumps(metrics.to_jsonable(summary), allow_nan=False)  # strict JSON: NaN -> null
    assert "null" in text
