"""VoxelAutoRegressor: shapes, locality (patch == full grid), FiLM, the whole-field
path, masking of inactive cells, checkpoint loading, and that it can learn."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxel_ode import schema
from voxel_ode.model import (COLD_MAX, LOG_GAIN_BOUND, ModelConfig, VoxelAutoRegressor, count_parameters,
                              config_dict, crop_upsample, load_model, mix_head_bias)
from voxel_ode.utils import UserError, coarsen

SMALL = dict(base_channels=8, depth=2, receptive_field_radius=1, context_channels=8, global_dim=16)


THERMAL_NOW = [schema.channel_index(n) for n in schema.THERMAL_PRIOR_NAMES]
THERMAL_NEXT = [schema.channel_index(n + "Next") for n in schema.THERMAL_PRIOR_NAMES]


def make(seed=0, randomize=True, **overrides):
    """A small model; FiLM and heads start at the identity/zero, so randomize them for the tests."""
    torch.manual_seed(seed)
    model = VoxelAutoRegressor(ModelConfig(**{**SMALL, **overrides})).eval()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "film" in name or "grid_head" in name or "response_head" in name or "front_head" in name:
                    p.normal_(0, 0.3)
    return model


def inputs(shape, batch=1, seed=0, inactive=0.2):
    g = torch.Generator().manual_seed(seed)
    active = (torch.rand(batch, 1, *shape, generator=g) > inactive).float()
    x = torch.randn(batch, schema.N_INPUT_CHANNELS, *shape, generator=g) * active
    params = torch.randn(batch, schema.N_CONDITIONING, generator=g)
    return x, params, active


@pytest.mark.parametrize("global_context", [True, False])
@pytest.mark.parametrize("shape", [(5, 7, 9), (8, 8, 8), (13, 6, 11)])
def test_forward_shapes_any_grid(shape, global_context):
    model = make(global_context=global_context)
    x, p, a = inputs(shape, batch=2)
    delta, scalars = model(x, p, a)
    assert delta.shape == (2, schema.N_DYNAMIC, *shape)
    assert scalars.shape == (2, schema.N_SCALARS)
    assert torch.isfinite(delta).all() and torch.isfinite(scalars).all()


def test_default_size_matches_the_seed_count():
    model = VoxelAutoRegressor(ModelConfig())
    n = count_parameters(model)
    print(f"default VoxelAutoRegressor: {n / 1e6:.1f}M parameters, receptive field {model.receptive_field}")
    assert 10e6 <= n <= 15e6
    assert model.receptive_field == 3 + 12 * 2
    local = VoxelAutoRegressor(ModelConfig(global_context=False))
    assert 10e6 <= count_parameters(local) < n


def _patch_vs_full(norm):
    model = make(norm=norm)
    shape = (24, 22, 22)
    x, p, a = inputs(shape)
    x_coarse, active_coarse = coarsen(x, a, model.context_factor)
    context = model.compute_context(x_coarse, p, active_coarse)
    with torch.no_grad():
        full, _ = model(x, p, a, context=context)
        o = (4, 3, 5)
        size = (14, 14, 13)
        sl = (..., slice(o[0], o[0] + size[0]), slice(o[1], o[1] + size[1]), slice(o[2], o[2] + size[2]))
        patch, _ = model(x[sl], p, a[sl], context=context, origin=torch.tensor([o]))
    rf = model.receptive_field
    assert rf == 5
    # cells at least rf away from the patch border (the patch does not touch the grid edge)
    inner = (..., slice(rf, size[0] - rf), slice(rf, size[1] - rf), slice(rf, size[2] - rf))
    return (full[sl][inner] - patch[inner]).abs().max().item(), full[sl][inner].abs().max().item()


def test_full_grid_equals_patch_away_from_border_channel_norm():
    diff, scale = _patch_vs_full("channel")
    assert scale > 1e-2  # the comparison is not between zeros
    assert diff < 1e-5 * max(1.0, scale)


def test_spatial_norm_breaks_patch_full_consistency():
    diff, scale = _patch_vs_full("spatial")
    assert diff > 1e-3 * scale


def test_crop_upsample_equals_interpolate_then_crop():
    coarse = torch.randn(2, 3, 4, 5, 3)
    full = F.interpolate(coarse, scale_factor=4, mode="trilinear", align_corners=False)
    origin = torch.tensor([[1, 0, 3], [5, 7, 2]])
    got = crop_upsample(coarse, origin, (6, 9, 7), 4)
    for b in range(2):
        z, y, x = origin[b].tolist()
        torch.testing.assert_close(got[b], full[b, :, z:z + 6, y:y + 9, x:x + 7], rtol=1e-5, atol=1e-6)
    # the whole field (origin 0, a size needing every coarse cell; 15 is not a multiple of 4)
    # takes the one-pass path: same values, and the per-axis path agrees on it too
    whole = crop_upsample(coarse, torch.zeros(2, 3, dtype=torch.long), (15, 20, 10), 4)
    torch.testing.assert_close(whole, full[..., :15, :20, :10], rtol=1e-5, atol=1e-6)
    shifted = crop_upsample(coarse, torch.tensor([[0, 0, 1]] * 2), (15, 20, 9), 4)  # per-axis path
    torch.testing.assert_close(shifted, whole[..., 1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("global_context", [True, False])
def test_film_params_change_the_output(global_context):
    model = make(global_context=global_context)
    x, p, a = inputs((8, 8, 8))
    with torch.no_grad():
        d1, s1 = model(x, p, a)
        d2, s2 = model(x, p + 1.0, a)
    assert (d1 - d2).abs().max() > 1e-3
    assert (s1 - s2).abs().max() > 1e-3
    # FiLM starts as the identity but still learns: its weights get a gradient at init
    fresh = make(randomize=False, global_context=global_context)
    fresh.grid_head.weight.data.normal_(0, 0.3)
    d, _ = fresh(x, p, a)
    d.pow(2).sum().backward()
    assert fresh.blocks[0].films[0].linear.weight.grad.abs().max() > 0


@pytest.mark.parametrize("global_context", [True, False])
def test_whole_field_path_reaches_beyond_the_receptive_field(global_context):
    model = make(global_context=global_context)
    shape = (24, 24, 24)
    x, p, a = inputs(shape, inactive=0.0)
    x2 = x.clone()
    x2[:, schema.N_STATIC :, :4, :4, :4] += 3.0  # perturb P, T in one corner
    with torch.no_grad():
        d1, s1 = model(x, p, a)
        d2, s2 = model(x2, p, a)
    far = (..., slice(16, None), slice(16, None), slice(16, None))  # > receptive field (5) away
    change = (d1[far] - d2[far]).abs().max().item()
    if global_context:
        assert change > 1e-4
        assert (s1 - s2).abs().max() > 1e-5  # scalars see the whole field
    else:
        assert change == 0.0


@pytest.mark.parametrize("global_context", [True, False])
def test_inactive_cells_get_exactly_zero_change(global_context):
    model = make(global_context=global_context)
    x, p, a = inputs((9, 8, 7), batch=2, inactive=0.4)
    delta, _ = model(x, p, a)
    assert (delta * (1 - a)).abs().max() == 0.0
    assert (delta * a).abs().max() > 0


def test_collate_padding_changes_nothing():
    """Padding added by collate is inactive, and masked features make it equal to no padding."""
    model = make()
    x, p, a = inputs((9, 7, 6))
    pad = (0, 3, 0, 2, 0, 1)
    with torch.no_grad():
        d1, s1 = model(x, p, a)
        d2, s2 = model(F.pad(x, pad), p, F.pad(a, pad))
    torch.testing.assert_close(d2[..., :9, :7, :6], d1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s2, s1, rtol=1e-4, atol=1e-5)


def test_context_of_batch_one_serves_a_batch_of_tiles():
    model = make()
    x, p, a = inputs((12, 12, 12))
    x_coarse, active_coarse = coarsen(x, a, 4)
    ctx = model.compute_context(x_coarse, p, active_coarse)
    tiles = torch.cat([x[..., :8, :8, :8], x[..., 4:, 4:, 4:]])
    act = torch.cat([a[..., :8, :8, :8], a[..., 4:, 4:, 4:]])
    with torch.no_grad():
        both, _ = model(tiles, p.expand(2, -1), act, context=ctx, origin=torch.tensor([[0, 0, 0], [4, 4, 4]]))
        one, _ = model(x[..., 4:, 4:, 4:], p, a[..., 4:, 4:, 4:], context=ctx, origin=(4, 4, 4))
    torch.testing.assert_close(both[1:], one)


def test_load_model_roundtrip_and_refuses_pickles(tmp_path):
    from dataclasses import asdict

    model = make(global_context=True)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": 3}, path)
    loaded, ckpt = load_model(path)
    assert ckpt["step"] == 3 and loaded.config == model.config
    x, p, a = inputs((6, 6, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, p, a)[0], model(x, p, a)[0])

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": Evil(), "model_config": {}}, f, protocol=2)
    with pytest.raises(UserError, match="cannot load safely"):
        load_model(bad)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pt")
    old = {k: v for k, v in asdict(model.config).items() if k != "mix_heads_version"}  # sigmoid-point heads
    torch.save({"model": model.state_dict(), "model_config": old}, path)
    with pytest.raises(UserError, match="older voxel-ode"):
        load_model(path)


def test_loss_decreases_when_overfitting_a_tiny_batch(tmp_path):
    from fixtures import write_raw_dir
    from voxel_ode.data_prep import prep
    from voxel_ode.dataset import PatchDataset, collate

    write_raw_dir(tmp_path / "raw", n=3, grid=(10, 10, 8), n_t=4)
    prep(tmp_path / "raw", tmp_path / "prepped", patch_size=(8, 8, 8), stride=(4, 4, 4), n_test=1, progress=False)
    ds = PatchDataset(tmp_path / "prepped", "train")
    batch = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    model = VoxelAutoRegressor(ModelConfig(**SMALL)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_fn():
        delta, scalars = model(batch["x"], batch["params"], batch["active"], origin=batch["origin"],
                               context_x=batch["context_x"], context_active=batch["context_active"])
        m = batch["active"]
        grid = ((delta - batch["target_delta"][:, 0]) ** 2 * m).sum() / (m.sum() * 2)
        return grid + F.mse_loss(scalars, batch["target_scalars"][:, 0])

    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and robust on a busy machine
    try:
        for _ in range(25):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.3 * losses[0], losses[::5]


def test_response_mix_sets_the_pressure_change_to_the_weighted_responses():
    """Pressure target = asinh(sum_k a_k sinh(x_k) + c sum_k (a_k / g) sinh(x_cold_k) - sinh(x_change)
    + sinh(grid head)); T untouched
    (without the front mix: with it, the thermal prior shares the mix's support point, see below)."""
    model = make(global_context=False, front_mix=False, pressure_prior=False)
    x, p, a = inputs((6, 7, 8), batch=2)
    r = [x[:, schema.channel_index(n)] for n in schema.RESPONSE_NAMES]
    d = [x[:, schema.channel_index(n)] for n in schema.COLD_RESPONSE_NAMES]
    change = x[:, schema.channel_index("PressureChange")]
    u, gain = 1.4, 1.5  # 60 % of response 1 + 40 % of response 2, times 1.5
    for cold in (0.05, 0.7):  # near 0 = the first year: about the one-year responses alone
        with torch.no_grad():
            plain = model(x, p, a)[0]
            model.grid_head.weight[0].zero_()  # no pressure residual
            model.grid_head.bias[0] = 0.0
            model.response_head[-1].weight.zero_()
            model.response_head[-1].bias.copy_(mix_head_bias(u, gain, cold))
            delta = model(x, p, a)[0]
        hat = torch.zeros(len(r))
        hat[1], hat[2] = 0.6, 0.4
        mix = sum(gain * h * torch.sinh(rk) + cold * h * torch.sinh(dk) for h, rk, dk in zip(hat, r, d))
        expected = torch.asinh(mix - torch.sinh(change)) * a[:, 0]
        torch.testing.assert_close(delta[:, 0], expected, rtol=1e-5, atol=1e-5)
        model = make(global_context=False, front_mix=False, pressure_prior=False)
    torch.testing.assert_close(delta[:, 1], plain[:, 1])  # temperature does not see the mix
    off = make(global_context=False, response_mix=False, pressure_prior=False)
    assert not hasattr(off, "response_head")


@pytest.mark.parametrize("response_mix", [True, False])
def test_pressure_prior_sets_the_pressure_change_to_the_prior_at_t_plus_1(response_mix):
    """Pressure target = asinh(sinh(x_PressurePriorNext) - sinh(x_change) + sinh(grid head)): the
    response mix's weights play no part (its head only places the front mix); T untouched."""
    model = make(global_context=False, front_mix=False, response_mix=response_mix)
    assert model.config.pressure_prior  # the default
    x, p, a = inputs((6, 7, 8), batch=2)
    prior_next = x[:, schema.channel_index(schema.PRESSURE_PRIOR_NAMES[0] + "Next")]
    change = x[:, schema.channel_index("PressureChange")]
    with torch.no_grad():
        plain = model(x, p, a)[0]
        model.grid_head.weight[0].zero_()  # no pressure residual
        model.grid_head.bias[0] = 0.0
        delta = model(x, p, a)[0]
        if response_mix:  # another mix changes nothing
            model.response_head[-1].bias.add_(1.0)
            torch.testing.assert_close(model(x, p, a)[0], delta)
        x_other = x.clone()  # nor do the response channels
        x_other[:, [schema.channel_index(n) for n in schema.RESPONSE_NAMES]] += 1.0
        torch.testing.assert_close(model(x_other, p, a)[0][:, 0], delta[:, 0])
    expected = torch.asinh(torch.sinh(prior_next) - torch.sinh(change)) * a[:, 0]
    torch.testing.assert_close(delta[:, 0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta[:, 1], plain[:, 1])


def test_response_weights_interpolate_neighbouring_supports_from_params_only():
    """Any head output gives gain x (a linear interpolation between two neighbouring
    responses), the gain and the cold share within their bounds however far out the head's
    outputs are; the mix depends on the params and time only, not on the whole-field vector."""
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for layer in model.response_head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 2.0)
                layer.bias.normal_(0, 2.0)
    params = torch.randn(64, schema.N_CONDITIONING) * 3
    w = model.response_weights(params)
    assert w.shape == (64, len(schema.RESPONSE_NAMES)) and (w >= 0).all()
    nonzero = w > 0
    assert (nonzero.sum(1) <= 2).all()
    for row, mask in zip(w, nonzero):  # the non-zero ones are neighbours
        idx = mask.nonzero().flatten()
        assert len(idx) < 2 or idx[1] - idx[0] == 1
    raw = model.response_head(params)
    assert raw.abs().max() > 50  # far outside any bound
    gain = torch.exp(LOG_GAIN_BOUND * torch.tanh(raw[:, 1] / LOG_GAIN_BOUND))
    torch.testing.assert_close(w.sum(1), gain)
    assert gain.max() <= math.exp(LOG_GAIN_BOUND) + 1e-4 and gain.min() >= math.exp(-LOG_GAIN_BOUND) - 1e-6
    at_ends = (raw[:, 0] < 0) | (raw[:, 0] > 4)  # points beyond the scale sit on its end responses
    assert at_ends.any() and ((w[at_ends, 0] > 0) ^ (w[at_ends, -1] > 0)).all()
    _, _, cold = model._pressure_mix(params)
    assert (cold >= 0).all() and (cold <= COLD_MAX).all() and cold.max() > 0.9 * COLD_MAX
    assert model.response_head[0].in_features == schema.N_CONDITIONING


def test_front_mix_moves_the_temperature_by_the_gap_times_the_thermal_priors_step():
    """Temperature target = asinh(g * sinh(x_gap) * sum_k a_k (theta_k(t+1) - theta_k(t)) + sinh(grid head)),
    a_k the interpolation between neighbouring flow fields; pressure untouched."""
    model = make(global_context=False)
    x, p, a = inputs((6, 7, 8), batch=2)
    now = torch.rand(2, schema.N_THERMAL_PRIOR, 6, 7, 8)
    x[:, THERMAL_NOW + THERMAL_NEXT] = torch.cat([now, now + torch.rand_like(now) * 0.3], 1) * a
    gap = x[:, schema.channel_index(schema.INJECTION_GAP)]
    temp = schema.OUTPUT_CHANNELS.index("Temperature")
    with torch.no_grad():
        model.response_head[-1].weight.zero_()
        # the pressure mix's point 2.5 of 0..4 (between the 1 % and 0.1 % responses) is the thermal
        # prior's 1.25 of 0..2: a quarter of the way from the 1 % to the closed flow field
        u, log_gain = 2.5, 0.4
        model.response_head[-1].bias[0] = u  # the point is the head's output, clipped to [0, 4]
        plain = model(x, p, a)[0]
        model.grid_head.weight[temp].zero_()  # no temperature residual
        model.grid_head.bias[temp] = 0.0
        model.front_head[-1].weight.zero_()
        model.front_head[-1].bias.copy_(mix_head_bias(0.0, np.exp(log_gain)))  # its own point: unused
        delta = model(x, p, a)[0]
    step = x[:, THERMAL_NEXT] - x[:, THERMAL_NOW]
    mixed = 0.75 * step[:, 1] + 0.25 * step[:, 2]
    expected = torch.asinh(np.exp(log_gain) * torch.sinh(gap) * mixed) * a[:, 0]
    torch.testing.assert_close(delta[:, temp], expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 0.05  # the prior does move the temperature
    torch.testing.assert_close(delta[:, 1 - temp], plain[:, 1 - temp])  # pressure does not see it
    assert model.front_head[0].in_features == schema.N_CONDITIONING  # params and time only
    alone = make(global_context=False, response_mix=False)  # no pressure mix: the front head's own point
    with torch.no_grad():
        alone.front_head[-1].weight.zero_()
        alone.front_head[-1].bias.copy_(mix_head_bias(1.0, 1.0))  # point 1: the 1 % flow field
    torch.testing.assert_close(alone.front_weights(p), torch.tensor([[0.0, 1.0, 0.0]] * 2))
    assert not hasattr(make(front_mix=False), "front_head")


def test_without_temperature_residual_the_temperature_follows_the_prior_alone():
    x, p, a = inputs((6, 7, 8), batch=2)
    now = torch.rand(2, schema.N_THERMAL_PRIOR, 6, 7, 8)
    x[:, THERMAL_NOW + THERMAL_NEXT] = torch.cat([now, now + torch.rand_like(now) * 0.3], 1) * a
    temp = schema.OUTPUT_CHANNELS.index("Temperature")
    with_residual = make(seed=3, global_context=False, temperature_residual=True)
    prior_only = make(seed=3, global_context=False, temperature_residual=False)  # same weights
    with torch.no_grad():
        d_with, d_without = with_residual(x, p, a)[0], prior_only(x, p, a)[0]
        expected = torch.asinh(prior_only.front_step(x, p)[:, 0]) * a[:, 0]
    torch.testing.assert_close(d_without[:, temp], expected, rtol=1e-4, atol=1e-5)
    assert (d_with[:, temp] - d_without[:, temp]).abs().max() > 0.05  # the residual is really gone
    torch.testing.assert_close(d_without[:, 1 - temp], d_with[:, 1 - temp])  # pressure untouched
    with pytest.raises(UserError, match="temperature_residual"):
        ModelConfig(front_mix=False, temperature_residual=False)


def test_temperature_residual_default_and_older_checkpoints(tmp_path):
    assert ModelConfig().temperature_residual is False  # the front mix's prior alone
    assert ModelConfig(front_mix=False).temperature_residual is True  # the head is the only source
    # a checkpoint written before the key existed had the residual: it must load with it
    model = make(seed=1, global_context=False, temperature_residual=True)
    stored = config_dict(model)
    del stored["temperature_residual"]
    torch.save({"model": model.state_dict(), "model_config": stored}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.config.temperature_residual is True
    assert ModelConfig.from_dict({}).pressure_prior is False  # before the pressure prior: the response mix
