"""Dataset and Normalizer: samples equal a direct normalization of the prepped arrays,
augmentations are physically right (PermX/PermY swap), collate pads as inactive,
DataLoader workers work."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from fixtures import write_raw_dir
from voxel_ode import schema
from voxel_ode.data.prep import prep
from voxel_ode.training.dataset import PatchDataset, collate
from voxel_ode.model.features import Normalizer, delta_scales_from_stats
from voxel_ode.training.augment import apply_ops, augmentation_ops
from voxel_ode.model.network import coarsen
from voxel_ode.utils import UserError

GRID = (12, 10, 8)  # Y != X and not a multiple of the context factor: exercises padding
PATCH = (8, 8, 6)  # non-cubic in XY: a turn changes the patch shape


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("ds")
    write_raw_dir(base / "raw", n=4, grid=GRID, n_t=5)
    prep(base / "raw", base / "prepped", patch_size=PATCH, stride=(4, 4, 4), n_test=1, progress=False)
    return base / "prepped"


@pytest.fixture(scope="module")
def stats(root):
    return json.loads((root / schema.STATS_FILE).read_text())


def _expected_patch(root, stats, entry):
    """Normalize one index entry by hand with numpy, straight from the stats.json formulas."""
    with h5py.File(root / entry["sim_path"], "r") as f:
        box = (slice(entry["z0"], entry["z1"]), slice(entry["y0"], entry["y1"]), slice(entry["x0"], entry["x1"]))
        static = f["static"][(slice(None),) + box].astype(np.float64)
        grid = f["outputs_grid"][(slice(entry["t"], entry["t"] + 2), slice(None)) + box].astype(np.float64)
        scalars = f["outputs_scalar"][...].astype(np.float64)
        # producers of the whole field (not only the patch) and their temperatures at t, t+1
        whole = f["static"][...].astype(np.float64)
        temps = f["outputs_grid"][entry["t"]:entry["t"] + 2, 1].astype(np.float64)
        params = f["params_scalar"][...].astype(np.float64)
        prior = f[schema.PREPPED_PRIORS][(slice(None), slice(None)) + box].astype(np.float64)
    active = static[schema.STATIC_NAMES.index("IsActive")] > 0.5
    st = stats["static"]
    chans = []
    for c in range(schema.N_STATIC):
        v = static[c]
        if st["transform"][c] == "log10":
            v = np.log10(np.where(active, v, 1.0))
        elif st["transform"][c] == "asinh":  # the well responses (pressure's scale), the gap (temperature's)
            v = np.arcsinh(v / delta_scales_from_stats(stats)[int(schema.STATIC_NAMES[c] == schema.INJECTION_GAP)])
        chans.append((v - st["mean"][c]) / st["std"][c])
    for c in range(2):
        chans.append((grid[0, c] - stats["dynamic"]["mean"][c]) / stats["dynamic"]["std"][c])
    t = entry["t"]
    s = delta_scales_from_stats(stats)
    # pressure change since the initial state
    chans.append(np.arcsinh((grid[0, 0] - static[schema.STATIC_NAMES.index("Pressure0")]) / s[0]))
    # the priors at t and t + 1: thermal shares as they are, the pressure prior (stored as
    # asinh(change / 1 bar)) rescaled to the pressure target's scale like the change channel
    for frame in (prior[t], prior[t + 1]):
        chans += list(frame[:len(schema.THERMAL_PRIOR_NAMES)])
        chans.append(np.arcsinh(np.sinh(frame[len(schema.THERMAL_PRIOR_NAMES)]) * schema.PRESSURE_PRIOR_SCALE_PA / s[0]))
    x = np.stack(chans) * active
    delta = np.stack([np.arcsinh((grid[1, c] - grid[0, c]) / s[c]) for c in range(2)]) * active
    # scalars: log of next / previous in units of 0.1 %; the total's increment against rate x 1 year
    k = schema.SCALAR_NAMES.index("FieldEnergyProductionTotal")
    rate = schema.SCALAR_NAMES.index("FieldEnergyProductionRate")
    with np.errstate(divide="ignore", invalid="ignore"):  # the total is 0 at t = 0: replaced below
        ratio = scalars[t + 1] / scalars[t]
    inj = whole[schema.STATIC_NAMES.index("InjRate")]
    prod = (inj < 0) & (whole[schema.STATIC_NAMES.index("IsActive")] > 0.5)
    h = temps[:, prod] - 273.15
    enthalpy_ratio = np.sum(-inj[prod] * h[1]) / np.sum(-inj[prod] * h[0])
    ratio[rate] /= enthalpy_ratio  # relative to what the producers' temperature change explains
    trapezoid = scalars[t, rate] * (1 + enthalpy_ratio) / 2 * 365.25 * 86400
    ratio[k] = (scalars[t + 1, k] - scalars[t, k]) / trapezoid
    z = np.arcsinh(np.log(ratio) / 1e-3)
    floor = np.array([-np.inf if f is None else f for f in stats["params"]["floor"]])
    logged = np.array(stats["params"]["transform"]) == "log10"
    params = np.asarray(params, np.float64).copy()
    params[logged] = np.log10(np.maximum(params, floor)[logged])
    p = (params - stats["params"]["mean"]) / np.asarray(stats["params"]["std"])
    p = np.append(p, np.log1p(t) / np.log1p(schema.N_TIMESTEPS - 1))  # + time since the start
    return x, active, delta, z, p


def test_sample_equals_direct_normalization(root, stats):
    ds = PatchDataset(root, "train")
    lines = (root / "index_train.jsonl").read_text().splitlines()
    for i in (0, 7, len(lines) - 1):
        entry = json.loads(lines[i])
        x, active, delta, z, p = _expected_patch(root, stats, entry)
        s = ds[i]
        np.testing.assert_allclose(s["x"].numpy(), x, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(s["active"][0].numpy(), active.astype(np.float32))
        np.testing.assert_allclose(s["target_delta"][0].numpy(), delta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["target_scalars"][0].numpy(), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s["params"].numpy(), p, rtol=1e-5, atol=1e-6)
        assert s["origin"].tolist() == [entry["z0"], entry["y0"], entry["x0"]]
        assert (s["x"][:, ~torch.from_numpy(active)] == 0).all()


def test_both_modes_give_the_documented_sample_layout(root, stats):
    """mode="full": the whole grid at t, K steps of targets, origin 0 and no context; its first
    step equals the direct normalization of the whole grid. mode="patch": a box and the context."""
    full = PatchDataset(root, "train", mode="full", rollout_steps=2)
    n_t = 5  # the fixture's steps
    assert len(full) == len(full.sim_paths) * (n_t - 2)
    common = {"x", "active", "params", "target_delta", "priors", "target_scalars", "scalars_prev",
              "production_ratio", "origin", "sim", "t"}
    for index in (0, len(full) - 1):
        s = full[index]
        sim, t = int(s["sim"]), int(s["t"])
        assert set(s) == common and s["origin"].tolist() == [0, 0, 0]
        assert s["x"].shape == (schema.N_INPUT_CHANNELS, *GRID) and s["active"].shape == (1, *GRID)
        assert s["target_delta"].shape == (2, 2, *GRID) and s["priors"].shape == (3, schema.N_PRIORS, *GRID)
        assert s["target_scalars"].shape == (2, schema.N_SCALARS) and s["production_ratio"].shape == (2,)
        whole = {"sim_path": full.sim_paths[sim], "t": t, "z0": 0, "z1": GRID[0], "y0": 0, "y1": GRID[1],
                 "x0": 0, "x1": GRID[2]}
        x, active, delta, z, p = _expected_patch(root, stats, whole)
        np.testing.assert_allclose(s["x"].numpy(), x, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(s["active"][0].numpy(), active.astype(np.float32))
        np.testing.assert_allclose(s["target_delta"][0].numpy(), delta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["target_scalars"][0].numpy(), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s["params"].numpy(), p, rtol=1e-5, atol=1e-6)
    patch = PatchDataset(root, "train")[0]
    coarse = tuple(-(-n // 4) for n in GRID)  # the default context factor, padded up
    assert set(patch) == common | {"context_x", "context_active"}
    assert patch["x"].shape == (schema.N_INPUT_CHANNELS, *PATCH) and patch["target_delta"].shape == (1, 2, *PATCH)
    assert patch["context_x"].shape == (schema.N_INPUT_CHANNELS, *coarse)
    assert patch["context_active"].shape == (1, *coarse)


def test_delta_scale_is_the_median_of_per_sim_rms_for_pressure_and_a_high_quantile_for_temperature():
    stats_like = {"delta": {"per_sim_rms": [[1e2, 0.0], [1e3, 0.1], [1e4, 0.2], [1e5, 0.3]],
                            "abs_quantiles": {"0.5": [5.0, 0.05], "0.99": [9e4, 4.0]}, "std": [3e4, 0.1]}}
    s = delta_scales_from_stats(stats_like)
    assert s[0] == pytest.approx(np.median([1e2, 1e3, 1e4, 1e5]))
    assert s[1] == pytest.approx(4.0)  # temperature moves at fronts: the 99 % quantile of |dT|
    del stats_like["delta"]["abs_quantiles"]["0.99"]  # stats without it: the per-run median RMS
    assert delta_scales_from_stats(stats_like)[1] == pytest.approx(np.median([0.1, 0.2, 0.3]))  # 0-change run ignored


def test_normalizer_roundtrips(stats):
    nrm = Normalizer(stats)
    rng = np.random.default_rng(0)
    delta = torch.from_numpy(rng.normal(0, 1, (2, 3, 4, 5)) * np.array([1e5, 1.0])[:, None, None, None])
    np.testing.assert_allclose(nrm.denormalize_delta(nrm.normalize_delta(delta)).numpy(), delta.numpy(), rtol=1e-5)
    prev = np.array([1e8, 2e8, 5e15, 10.0, 20.0])
    nxt = np.array([1.1e8, 2.2e8, 5.5e15, 11.0, 19.0])
    back = nrm.denormalize_scalars(nrm.normalize_scalars(nxt, prev), prev).numpy()
    np.testing.assert_allclose(back, nxt, rtol=1e-4)
    state = torch.tensor([2e7, 350.0]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(nrm.denormalize_state(nrm.normalize_state(state)).numpy(), state.numpy(), rtol=1e-6)


def test_normalizer_keeps_tensors_on_their_device(stats):
    # training and evaluation call these on GPU batches: a constant made on the CPU inside
    # them breaks CUDA runs only. "meta" tensors raise on any such CPU/device mix, on any machine.
    nrm = Normalizer(stats)
    meta = dict(device="meta")
    grid = torch.zeros(2, schema.N_DYNAMIC, 3, 4, 5, **meta)
    x = torch.zeros(2, schema.N_INPUT_CHANNELS, 3, 4, 5, **meta)
    scalars = torch.zeros(2, schema.N_SCALARS, **meta)
    outs = [nrm.denormalize_state(grid), nrm.denormalize_delta(grid), nrm.normalize_delta(grid),
            nrm.update_input(x, grid, torch.ones(2, 1, 3, 4, 5, **meta),
                             torch.zeros(2, 2 * schema.N_PRIORS, 3, 4, 5, **meta)),
            nrm.conditioning(torch.zeros(2, schema.N_PARAMS, **meta), torch.zeros(2, dtype=torch.long, **meta)),
            nrm.normalize_scalars(scalars, scalars.double(), torch.ones(2, **meta)),
            nrm.denormalize_scalars(scalars, scalars.double(), torch.ones(2, **meta))]
    assert all(o.device.type == "meta" for o in outs)


def test_update_input_advances_state_like_the_data(root):
    """x(t) + predicted change (= the true change) gives x(t+1); multi-step targets line up."""
    ds = PatchDataset(root, "train", mode="full", rollout_steps=2)
    s0 = ds[0]  # sim 0, t = 0
    s1 = ds[1]  # sim 0, t = 1
    assert s0["t"].item() == 0 and s1["t"].item() == 1 and s0["sim"] == s1["sim"]
    next_pair = s0["priors"][1:3].flatten(0, 1)
    x1 = ds.normalizer.update_input(s0["x"], s0["target_delta"][0], s0["active"], next_pair)
    np.testing.assert_allclose(x1.numpy(), s1["x"].numpy(), atol=2e-4)
    assert s1["x"][schema.PRIOR_CHANNELS].abs().max() > 0  # the prior channels are not trivially zero
    np.testing.assert_allclose(s0["target_delta"][1].numpy(), s1["target_delta"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(s0["target_scalars"][1].numpy(), s1["target_scalars"][0].numpy(), atol=1e-6)


def test_rotation_matches_numpy_rot90_and_swaps_permeability(root):
    """A turn of the sample equals np.rot90 of the unturned one with PermX and PermY swapped."""
    plain = PatchDataset(root, "train")
    turned = PatchDataset(root, "train", aug_xy_rot=True, seed=3)
    seen = set()
    for i in range(len(plain)):
        ops, _ = turned._draw_ops(i)
        k = ops.count("transpose")
        if k in seen:
            continue
        seen.add(k)
        a, b = plain[i], turned[i]
        x = a["x"].numpy()
        expect = np.rot90(x, k, axes=(-2, -1)).copy()
        if k % 2:  # the permeability along X is now along Y
            expect[[schema.STATIC_PERM_X, schema.STATIC_PERM_Y]] = expect[[schema.STATIC_PERM_Y, schema.STATIC_PERM_X]]
            assert b["x"].shape[-2:] == a["x"].shape[-2:][::-1]
        np.testing.assert_array_equal(b["x"].numpy(), expect)
        np.testing.assert_array_equal(b["active"].numpy(), np.rot90(a["active"].numpy(), k, axes=(-2, -1)))
        np.testing.assert_array_equal(b["target_delta"].numpy(), np.rot90(a["target_delta"].numpy(), k, axes=(-2, -1)))
        # the physics check: after an odd turn, PermX is the old PermY turned
        src = schema.STATIC_PERM_Y if k % 2 else schema.STATIC_PERM_X
        np.testing.assert_array_equal(b["x"][schema.STATIC_PERM_X].numpy(), np.rot90(x[src], k, axes=(-2, -1)))
        if len(seen) == 4:
            break
    assert seen == {0, 1, 2, 3}


def test_augmented_patch_and_context_agree_with_the_augmented_field(root):
    """origin locates the augmented patch in the augmented, coarse-aligned whole field,
    and context_x is that field coarsened: what the model relies on."""
    ds = PatchDataset(root, "train", aug_xy_rot=True, aug_flip=True, seed=1)
    full = PatchDataset(root, "train", mode="full")
    factor = ds.factor
    checked = 0
    for i in range(0, len(ds), 5):
        s = ds[i]
        sim, t = int(s["sim"]), int(s["t"])
        assert full.sim_paths[sim] == ds.sim_paths[sim]
        f = full[sim * len(full) // len(full.sim_paths) + t]
        assert int(f["t"]) == t and int(f["sim"]) == sim
        pad = [(-n) % factor for n in GRID]
        padded_x = torch.nn.functional.pad(f["x"], (0, pad[2], 0, pad[1], 0, pad[0]))
        padded_a = torch.nn.functional.pad(f["active"], (0, pad[2], 0, pad[1], 0, pad[0]))
        ops, _ = ds._draw_ops(i)
        field_x = apply_ops(padded_x, ops, (schema.STATIC_PERM_X, schema.STATIC_PERM_Y))
        field_a = apply_ops(padded_a, ops)
        z0, y0, x0 = s["origin"].tolist()
        d, h, w = s["x"].shape[-3:]
        np.testing.assert_array_equal(s["x"].numpy(), field_x[:, z0:z0 + d, y0:y0 + h, x0:x0 + w].numpy())
        cx, ca = coarsen(field_x, field_a, factor)
        np.testing.assert_allclose(s["context_x"].numpy(), cx.numpy(), atol=1e-5)
        np.testing.assert_allclose(s["context_active"].numpy(), ca.numpy(), atol=1e-6)
        checked += 1
    assert checked >= 5


def test_flip_ops_and_noise_only_on_dynamic_active_channels(root):
    assert augmentation_ops(1, False, True) == ["flip_x", "transpose", "flip_x"]
    plain = PatchDataset(root, "train")
    noisy = PatchDataset(root, "train", noise_std=0.5, seed=0)
    a, b = plain[3], noisy[3]
    diff = (b["x"] - a["x"]).abs()
    assert diff[: schema.N_STATIC].max() == 0  # static channels untouched
    active = a["active"][0] > 0.5
    assert diff[schema.N_STATIC :, ~active].max() == 0  # inactive cells stay 0
    assert diff[schema.N_STATIC :, active].mean() > 0.1
    assert torch.equal(noisy[3]["x"], b["x"])  # reproducible
    noisy.set_epoch(1)
    assert not torch.equal(noisy[3]["x"], b["x"])  # new epoch, new draw


def test_collate_pads_with_inactive_cells():
    s1 = {"x": torch.ones(13, 4, 3, 5), "active": torch.ones(1, 4, 3, 5), "target_delta": torch.ones(1, 2, 4, 3, 5),
          "params": torch.zeros(26)}
    s2 = {"x": torch.ones(13, 4, 5, 3), "active": torch.ones(1, 4, 5, 3), "target_delta": torch.ones(1, 2, 4, 5, 3),
          "params": torch.ones(26)}
    b = collate([s1, s2])
    assert b["x"].shape == (2, 13, 4, 5, 5) and b["target_delta"].shape == (2, 1, 2, 4, 5, 5)
    assert b["active"][0].sum() == 4 * 3 * 5 and b["active"][1].sum() == 4 * 5 * 3
    assert b["active"][0, :, :, 3:, :].max() == 0 and b["x"][0, :, :, 3:, :].max() == 0
    assert b["target_delta"][1, ..., 3:].max() == 0
    assert torch.equal(b["params"][1], torch.ones(26))


def test_dataloader_with_two_workers_matches_one_process(root):
    ds = PatchDataset(root, "train", aug_xy_rot=True, aug_flip=True, noise_std=0.01)
    kw = dict(batch_size=8, shuffle=False, collate_fn=collate)
    ref = list(torch.utils.data.DataLoader(ds, num_workers=0, **kw))
    got = list(torch.utils.data.DataLoader(ds, num_workers=2, **kw))
    assert len(got) == len(ref) > 1
    for a, b in zip(ref, got):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_user_errors(root, tmp_path):
    with pytest.raises(UserError, match="rollout_steps"):
        PatchDataset(root, "train", rollout_steps=2)
    with pytest.raises(UserError, match="stats.json"):
        PatchDataset(tmp_path, "train")


def test_change_channels_hold_the_change_since_the_initial_state(root):
    """Channel PressureChange = asinh((P_t - P_0) / s_P), 0 at inactive cells."""
    ds = PatchDataset(root, "train", mode="full")
    nrm = ds.normalizer
    for index in (0, 5):
        sample = ds[index]
        sim, t = sample["sim"].item(), sample["t"].item()
        with h5py.File(ds.root / ds.sim_paths[sim]) as f:
            static = f[schema.PREPPED_STATIC][...].astype(np.float64)
            state = f[schema.PREPPED_OUTPUTS_GRID][t].astype(np.float64)
        active = static[schema.STATIC_NAMES.index("IsActive")] > 0.5
        initial = static[list(schema.INITIAL_STATE_STATIC)]
        expect = (np.arcsinh((state - initial) / nrm.delta_scale[:, None, None, None]) * active)[:1]
        got = sample["x"][schema.CHANGE_CHANNELS].numpy()
        np.testing.assert_allclose(got, expect, atol=1e-5)
        if t > 0:  # something moved: the channel is not trivially zero
            assert np.abs(got[0][active]).max() > 0.1
