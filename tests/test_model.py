"""VoxelAutoRegressor: shapes, locality (patch == full grid), FiLM, the whole-field
path, masking of inactive cells, checkpoint loading, and that it can learn."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from voxel_ode import schema
from voxel_ode.model.network import LOG_GAIN_BOUND, ModelConfig, VoxelAutoRegressor, count_parameters, crop_upsample
from voxel_ode.model.checkpoint import load_model
from voxel_ode.model.network import coarsen
from voxel_ode.utils import UserError

SMALL = dict(base_channels=8, depth=2, receptive_field_radius=1, context_channels=8, global_dim=16)


def make(seed=0, randomize=True, **overrides):
    """A small model; FiLM and heads start at the identity/zero, so randomize them for the tests."""
    torch.manual_seed(seed)
    model = VoxelAutoRegressor(ModelConfig(**{**SMALL, **overrides})).eval()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "film" in name or "grid_head" in name:
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
    with pytest.raises(UserError, match="cannot load with weights_only=True"):
        load_model(bad)
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "missing.pt")


def test_loss_decreases_when_overfitting_a_tiny_batch(tmp_path):
    from fixtures import write_raw_dir
    from voxel_ode.data.prep import prep
    from voxel_ode.training.dataset import PatchDataset, collate

    write_raw_dir(tmp_path / "raw", n=3, grid=(10, 10, 8), n_t=4)
    prep(tmp_path / "raw", tmp_path / "prepped", patch_size=(8, 8, 8), stride=(4, 4, 4), n_test=1, progress=False)
    ds = PatchDataset(tmp_path / "prepped", "train")
    batch = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    model = VoxelAutoRegressor(ModelConfig(**SMALL, priors=False)).train()  # plain step targets
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


def _zero_residual(model):
    with torch.no_grad():
        model.grid_head.weight.zero_()
        model.grid_head.bias.zero_()


@pytest.mark.parametrize("gains", [(0.0, 0.0), (0.5, -1.0)])
def test_priors_set_the_pressure_change_and_the_temperature_step(gains):
    """With no residual: pressure target = asinh(g_P sinh(x_PressurePriorNext) - sinh(x_change)),
    temperature target = asinh(g_T sinh(x_gap) (theta(t+1) - theta(t))), g = exp(B tanh(log g / B))."""
    model = make(global_context=False)
    assert model.config.priors  # the default
    _zero_residual(model)
    with torch.no_grad():
        model.prior_log_gain.copy_(torch.tensor(gains))
    x, p, a = inputs((6, 7, 8), batch=2)
    with torch.no_grad():
        delta = model(x, p, a)[0]
    g = torch.exp(LOG_GAIN_BOUND * torch.tanh(torch.tensor(gains) / LOG_GAIN_BOUND))
    ch = lambda name: x[:, schema.channel_index(name)]  # noqa: E731
    pressure = torch.asinh(g[0] * torch.sinh(ch("PressurePriorNext")) - torch.sinh(ch("PressureChange")))
    theta_step = ch("ThermalPriorNext") - ch("ThermalPrior")
    temperature = torch.asinh(g[1] * torch.sinh(ch(schema.INJECTION_GAP)) * theta_step)
    torch.testing.assert_close(delta[:, 0], pressure * a[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta[:, 1], temperature * a[:, 0], rtol=1e-5, atol=1e-5)


def test_residual_adds_to_the_priors_and_gain_is_bounded():
    model = make(global_context=False)
    x, p, a = inputs((5, 6, 7))
    with torch.no_grad():
        with_residual = model(x, p, a)[0]
        prior_p, prior_t = model.prior_steps(x)
        prior = torch.cat([prior_p, prior_t], dim=1)
        residual = (torch.sinh(with_residual) - prior) * a  # what the grid head added, per channel
        assert residual[:, 0].abs().amax() > 1e-3  # pressure: prior + residual
        assert residual[:, 1].abs().amax() < 1e-5  # temperature: the prior's step alone (the default)
        model.config.temperature_residual = True  # where prep computed no priors
        assert ((torch.sinh(model(x, p, a)[0]) - prior) * a)[:, 1].abs().amax() > 1e-3
        model.prior_log_gain.fill_(1e6)  # a runaway gain stays within exp(LOG_GAIN_BOUND)
        p_big, _ = model.prior_steps(x)
    change = torch.sinh(x[:, schema.channel_index("PressureChange")])
    nxt = torch.sinh(x[:, schema.channel_index("PressurePriorNext")])
    torch.testing.assert_close(p_big[:, 0], math.exp(LOG_GAIN_BOUND) * nxt - change, rtol=1e-5, atol=1e-5)


def test_without_priors_the_prior_channels_play_no_part():
    model = make(global_context=False, priors=False)
    assert not hasattr(model, "prior_log_gain")
    x, p, a = inputs((6, 6, 6))
    x2 = x.clone()
    # the priors still enter the network as inputs: zero their stem weights to see only the heads
    prior_channels = [schema.channel_index(n) for n in schema.PRIOR_NAMES + schema.PRIOR_NEXT_NAMES]
    with torch.no_grad():
        model.stem.weight[:, prior_channels] = 0.0
        x2[:, prior_channels] += 5.0
        torch.testing.assert_close(model(x2, p, a)[0], model(x, p, a)[0])


def test_old_checkpoint_configs_are_refused_with_one_line(tmp_path):
    from dataclasses import asdict

    model = make()
    path = tmp_path / "old.pt"
    old = {**asdict(model.config), "response_mix": True, "front_mix": True}
    torch.save({"model": model.state_dict(), "model_config": old}, path)
    with pytest.raises(UserError, match="retrain"):
        load_model(path)


def test_channel_norm_in_bf16_inference_matches_the_float_path_and_training_keeps_float_grads():
    from voxel_ode.model.network import ChannelLayerNorm

    torch.manual_seed(0)
    norm = ChannelLayerNorm(8)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(8))
        norm.bias.add_(0.3 * torch.randn(8))
    x = (3 * torch.randn(2, 8, 5, 6, 7) + 1).to(memory_format=torch.channels_last_3d).bfloat16()
    reference = torch.nn.functional.layer_norm(x.double().movedim(1, -1), (8,), norm.weight.double(),
                                               norm.bias.double(), norm.eps).movedim(-1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = norm(x)
    assert fast.dtype == torch.bfloat16 and fast.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast.double(), reference, rtol=1e-2, atol=1e-2)  # bf16 rounding of the output
    # with gradients: the float path, whose weight gradient is the float64 one to float32 rounding
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (norm(xg).double() ** 2).sum().backward()
    w = norm.weight.detach().double().requires_grad_()
    y = torch.nn.functional.layer_norm(x.double().movedim(1, -1), (8,), w, norm.bias.double(), norm.eps)
    (y.to(torch.bfloat16).double() ** 2).sum().backward()
    torch.testing.assert_close(norm.weight.grad.double(), w.grad, rtol=1e-3, atol=1e-3)


def test_inference_folds_film_into_the_norm_with_the_same_result():
    """One field at inference takes ResBlock's fused path (FiLM folded into the norm's weights);
    with gradients on, the plain path: the two agree in float32; a batch of two fields (two
    conditionings) takes the plain path and gives each field its own result."""
    from voxel_ode.model import network

    model = make(seed=3)
    with torch.no_grad():  # norms start as the identity: make them count
        for name, p in model.named_parameters():
            if "blocks" in name and "norms" in name:
                p.normal_(0, 0.5)
    x, params, active = inputs((7, 6, 9), batch=2, seed=4)
    calls = []
    plain = network.ResBlock._infer

    def counted(self, *args):
        calls.append(1)
        return plain(self, *args)

    network.ResBlock._infer = counted
    try:
        with torch.no_grad():
            fused = model(x[:1], params[:1], active[:1])[0]
            batch = model(x, params, active)[0]
        assert len(calls) == model.config.depth  # once per block, for the single field only
    finally:
        network.ResBlock._infer = plain
    reference = model(x[:1], params[:1], active[:1])[0].detach()  # gradients on: the plain path
    assert fused.abs().max() > 0
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[:1], reference, rtol=1e-5, atol=1e-5)
