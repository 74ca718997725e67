"""The pressure mix head fitted alone before training (voxel_ode/mix_fit.py)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from voxel_ode import mix_fit, schema
from voxel_ode.dataset import Normalizer
from voxel_ode.model import ModelConfig, VoxelAutoRegressor
from voxel_ode.train import train

TINY = dict(base_channels=8, depth=2, receptive_field_radius=1, num_threads=1, quiet=True)


@pytest.fixture
def prepped(small_prepped):
    return small_prepped  # conftest.py


def _normalizer(prepped):
    return Normalizer(json.loads((prepped / schema.STATS_FILE).read_text()))


def test_gram_error_equals_the_error_on_the_grid(prepped):
    """The exact loss from Gram matrices is the relative error of the mix computed cell by cell."""
    torch.manual_seed(0)
    model = VoxelAutoRegressor(ModelConfig(base_channels=8, depth=2))
    with torch.no_grad():  # a head that gives every run and year its own weights
        model.response_head[-1].weight.normal_(0, 0.5)
    norm = _normalizer(prepped)
    path = mix_fit.train_files(prepped)[0]
    terms = mix_fit.stack_terms([mix_fit.pressure_mix_terms(path, norm)])
    with torch.no_grad():
        fast = mix_fit.mix_rel_errors(model.pressure_mix_weights(terms["conditioning"]), terms).numpy()
        weights = model.pressure_mix_weights(terms["conditioning"]).double().numpy()
    with h5py.File(path) as f:
        static, pressure = f["static"][:], f["outputs_grid"][:, 0].astype(np.float64)
    active = static[schema.STATIC_NAMES.index("IsActive")] > 0.5
    channels = np.stack([static[schema.STATIC_NAMES.index(n)][active] for n in mix_fit.MIX_NAMES]).astype(np.float64)
    assert len(fast) == pressure.shape[0] - 1
    for t, w in enumerate(weights):
        change = (pressure[t + 1] - pressure[0])[active]
        direct = np.linalg.norm(w @ channels - change) / np.linalg.norm(change)
        assert fast[t] == pytest.approx(direct, rel=1e-6)
    assert terms["last"].tolist() == [False] * (len(fast) - 1) + [True]


def test_fit_lowers_the_mix_error_and_touches_only_the_head(prepped):
    torch.manual_seed(0)
    model = VoxelAutoRegressor(ModelConfig(base_channels=8, depth=2))
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("response_head.")}
    fit = mix_fit.fit_pressure_mix(model, mix_fit.train_files(prepped), _normalizer(prepped), iters=300,
                                   progress=False)
    assert fit["runs"] == 3
    assert fit["last_step_error_after"] < 0.8 * fit["last_step_error_before"], fit
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())
    assert all(p.grad is None for p in model.parameters())  # nothing stale for the network's clipping


def _head(ckpt_path):
    state = torch.load(ckpt_path, weights_only=True)
    return state, {k: v for k, v in state["model"].items() if k.startswith("response_head.")}


def test_train_fits_the_head_first_and_keeps_it_fixed(prepped, tmp_path):
    run = dict(prepped_root=str(prepped), batch_size=2, log_every=1, eval_every=100, ckpt_every=100, lr=3e-3,
               warmup_steps=1, **TINY)
    heads = {}
    for name, prefit, steps in [("fit2", 200, 2), ("fit5", 200, 5), ("off2", 0, 2), ("off5", 0, 5)]:
        train(save_dir=str(tmp_path / name), max_steps=steps, mix_prefit_iters=prefit, **run)
        state, heads[name] = _head(tmp_path / name / "last.pt")
        assert state["mix_prefit"] == (prefit > 0)
    same = lambda a, b: all(torch.equal(heads[a][k], heads[b][k]) for k in heads[a])  # noqa: E731
    assert same("fit2", "fit5")  # fixed while the network trains
    assert not same("off2", "off5")  # without the fit it trains with the network
    assert not same("fit2", "off2")  # and the fit moved it from its start
    # a resumed run keeps it fixed too
    train(save_dir=str(tmp_path / "resumed"), max_steps=5, mix_prefit_iters=200,
          resume=str(tmp_path / "fit2" / "last.pt"), **run)
    heads["resumed"] = _head(tmp_path / "resumed" / "last.pt")[1]
    assert same("fit2", "resumed")


def test_run_weights_count_runs(prepped):
    """A run weighted 0 is as if it were left out of the fit (bootstrap counts in benchmarks/mix_cv.py use this)."""
    norm = _normalizer(prepped)
    runs = [mix_fit.pressure_mix_terms(p, norm) for p in mix_fit.train_files(prepped)]
    heads = []
    for terms, weights in ((mix_fit.stack_terms(runs), torch.tensor([1.0, 1.0, 0.0])),
                           (mix_fit.stack_terms(runs[:2]), None), (mix_fit.stack_terms(runs), None)):
        torch.manual_seed(0)
        model = VoxelAutoRegressor(ModelConfig(base_channels=4, depth=1))
        mix_fit.fit_head(model, terms, iters=100, run_weights=weights)
        heads.append(model.response_head.state_dict())
    weighted, left_out, all_runs = heads
    for k, v in left_out.items():
        torch.testing.assert_close(weighted[k], v, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(all_runs["0.weight"], left_out["0.weight"])  # the third run does matter
