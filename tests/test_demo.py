"""The quick demo runs the whole chain and its model beats doing nothing."""

import json
import math

from voxel_ode.cli import main


def test_quick_demo_beats_persistence(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0

    summary = json.loads((out / "demo_summary.json").read_text())["evaluation"]
    for var in ("P", "T"):
        persistence = summary["persistence"][f"rel. change error {var}"]
        assert abs(persistence["last"] - 1.0) < 1e-6  # the metric's anchor
        model = summary["model"][f"rel. change error {var}"]
        assert math.isfinite(model["last"]) and math.isfinite(model["mean"]), (var, model)
    # Temperature: the trained model predicts the change better than no change at all.
    model_t = summary["model"]["rel. change error T"]
    assert model_t["last"] < 1.0 and model_t["mean"] < 1.0, model_t
    # Pressure does NOT yet beat persistence in the quick demo (issue 6 stays open, see
    # docs/benchmarks.md "Demo"); this only guards against a rollout that blows up.
    assert summary["model"]["rel. change error P"]["last"] < 100.0

    # everything a user is told to look at is there
    ev = out / "eval"
    assert (ev / "metrics.json").exists() and (ev / "metrics_per_step.csv").exists()
    assert list((ev / "predictions").glob("*.h5")) and list((ev / "predictions").glob("*.xdmf"))
    assert list((ev / "plots").rglob("*.png"))
    # the final model is evaluated, never one picked on the test split it reports on
    assert json.loads((out / "demo_summary.json").read_text())["checkpoint"].endswith("last.pt")
