"""Normalization and training samples read from the prepped files.

API (see docs/design.md for the file layouts)
---------------------------------------------
``Normalizer(stats, delta_mode="asinh")``  (``Normalizer.from_file(path)``)
    Built from the stats.json dict. All grid methods take torch tensors with the
    channel axis at dim -4 ([C,D,H,W] or [B,C,D,H,W]); numpy arrays are accepted.
    normalize_static(static[12], active)      -> [12]  transform (log10) + z-score, 0 at inactive;
        the injection temperature gap (K): asinh(x / s_T)
    normalize_state(state[2]) / denormalize_state(state_norm[2])       z-score of (P, T)
    normalize_params(params[..., 26])         -> z-score, log10 (zeros at a floor) for scale-like params
    conditioning(params_norm[..., 26], t)     -> [..., 27]: + time_feature(t) = log1p(t)/log1p(29), what the model takes
    normalize_change(state[2], initial[2]) -> [1]  asinh((P - P0) / s_P): the pressure change since
                                                 t = 0 (initial = Pressure0/Temperature0), scaled like the targets
    normalize_dynamic(state[2], initial[2], prior[4]) -> [7]  normalize_state + normalize_change + the
                                                 prior pair (prior_pair(priors, t), normalize_priors)
    normalize_priors(prior[4]) -> [4]  thermal prior shares as they are; the pressure prior
                                                 asinh(change / s_P), like the PressureChange channel
    normalize_input(static[12], state[2], prior[4], active=None) -> x [19] in schema.INPUT_CHANNELS
                                                 order, 0 at inactive cells (active from IsActive if None)
    normalize_delta(delta[2]) / denormalize_delta(delta_norm[2])
        per-step change of (P, T) <-> model target. Default "asinh":
        asinh(delta / s_c), s_c = delta_scale[c] = for pressure the median over train
        sims of the per-simulation RMS change (stats["delta"]["per_sim_rms"]), for
        temperature the pooled 99 % quantile of |delta| (FRONT_SCALED). Errors
        in this space are absolute (in units of s_c) for small changes and
        relative for large ones, so a simulation whose pressure moves by bars
        per year does not drown one that moves by hundreds of Pa. (A scale per
        step, to lift the late years' small changes, was tried and measured
        worse: docs/benchmarks.md, "Demo and fidelity".)
        delta_mode="zscore" is the seed's pooled (delta - mean) / std, for comparison.
    update_input(x[19], delta_norm[2], active, prior[4]) -> x at t+1 (state and change channels advanced
                                                 by the predicted change, the prior pair of t+1 from the data;
                                                 inactive cells unchanged = 0)
``prior_pair(priors[T, 2, ...], t)`` -> [4]: the priors (schema.PRIOR_NAMES) at t and t + 1, as stored
    normalize_scalars(next[..., 5], prev[..., 5], production_ratio=None) -> [..., 5]:
        asinh(log(next / ref) / 0.1 %). ref is the previous value, for FieldEnergyProductionRate
        times production_ratio (production_enthalpy_ratio() of the step: what the producers'
        temperature change alone does to it), and for the running total the step's trapezoid of
        that rate x 1 year. Field scalars are well terms: under rate control they hardly move
        from one report to the next, and what moves (produced energy as the producers cool)
        follows the temperature at the producers, which the grid model predicts. So the scalar
        head learns only what the bookkeeping misses (0 for `voxel-ode synth`, a few % for a
        simulator with real steam tables), "no change" is its zero, and units and magnitudes
        (W, kg/s, J ~ 1e17) stay out of it. A tiny floor (1e-6 of the typical value in
        stats.json) keeps 0 -> 0 finite.
    denormalize_scalars(norm[..., 5], prev[..., 5], production_ratio=None) -> physical [..., 5]
        (float64, >= 0 magnitudes; total = prev total + predicted increment).

``PatchDataset(prepped_root, split, stats=None, mode="patch"|"full", rollout_steps=1,
               aug_xy_rot=False, aug_flip=False, noise_std=0.0, seed=0, context_factor=4,
               delta_mode="asinh")``
    mode="patch": one sample per line of index_{split}.jsonl; rollout_steps must be 1.
    mode="full":  one sample per (simulation, t) with the whole grid, t = 0..T-1-K.
    Sample (dict of tensors):
      "x"             [19,d,h,w] float32  normalized input at t, 0 at inactive cells
      "priors"        [K+1,2,d,h,w] float32 the priors at t..t+K as stored (update_input's next pairs)
      "active"        [1,d,h,w]  float32  1 = active cell
      "params"        [27]       float32  normalized ParamsScalar + time feature of t (Normalizer.conditioning)
      "target_delta"  [K,2,d,h,w] float32 normalized change of (P, T), steps t->t+1 .. t+K-1->t+K; 0 at inactive
      "target_scalars"[K,5]      float32  normalized scalars at t+1..t+K (increment for the total)
      "scalars_prev"  [5]        float64  physical scalars at t (to denormalize the total)
      "production_ratio" [K]     float64  production_enthalpy_ratio of steps t..t+K-1 (scalar references)
      "origin"        [3]        int64    position of the patch's first cell in the coarse-aligned
                                          frame of the (augmented) whole field: coarse cell c covers
                                          fine cells [c*F, (c+1)*F). Without augmentation this is the
                                          patch origin (z0, y0, x0) in the full grid. Zeros in full mode.
      "context_x"     [19,Dc,Hc,Wc] float32  (patch mode only) whole field at t, utils.coarsen by
      "context_active"[1,Dc,Hc,Wc]  float32   context_factor F, augmented like the patch
      "sim", "t"      int64      index of the simulation in ``dataset.sim_paths`` and the input step
    In full mode there is no context_x: the model computes the context from x itself.
    Augmentations act in the XY plane only (never Z) and identically on every grid of a
    sample; a 90 degree turn swaps the PermX and PermY channels. They are drawn from
    (seed, epoch, index), so a run is reproducible; call set_epoch(e) every epoch.
    h5py files are opened lazily in each worker process (safe with num_workers > 0);
    each worker caches per simulation the normalized params, scalars and the coarse
    whole-field context of every t (about 1 MB per simulation at full size).

``collate(samples) -> batch``: stacks; grids whose shapes differ (turned non-cubic
patches) are zero-padded at the far end, so padding is inactive (active=0, x=0, targets=0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.utils import UserError, coarsen, signed_log1p

STATIC_ACTIVE = schema.STATIC_NAMES.index("IsActive")
STATIC_PERM_X = schema.STATIC_NAMES.index("PermX")
STATIC_PERM_Y = schema.STATIC_NAMES.index("PermY")
INCREMENT_SLOTS = tuple(schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_SCALARS)
RATE_SLOTS = tuple(schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_RATES)
SCALAR_LOG_UNIT = 1e-3  # scalar targets are log-ratios in units of 0.1 %, asinh-squeezed beyond
MAX_LOG_RATIO = 20.0  # a predicted ratio is kept within e^-20 .. e^20 (no overflow in a rollout)
DELTA_SCALE_QUANTILE = 0.5  # of the per-simulation RMS change over train sims
# Temperature moves at fronts and hardly anywhere else: its median per-run RMS change (0.9 K
# on the demo data) lies far below the 20-100 K that matter, and asinh at that scale weighs a
# 5 K error in a quiet cell like a 30 K error at the front, so training preferred to under-cool
# the plume cores. Its scale is the pooled 99 % quantile of |dT| instead (3.5 K there):
# year-29 temperature error 0.43 -> 0.38 on the demo (docs/benchmarks.md).
FRONT_SCALED = ("Temperature",)
FRONT_QUANTILE = "0.99"


def _as_tensor(a, dtype=torch.float32):
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    return torch.as_tensor(np.asarray(a), dtype=dtype)




def _bcast(values, ndim_after: int, like: torch.Tensor):
    """Per-channel vector shaped to broadcast against a [..., C, *spatial] tensor."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * ndim_after))


def _apply_transform(v: torch.Tensor, transforms, channel_dim: int, scales=None) -> torch.Tensor:
    """Apply the per-channel transforms recorded in stats.json along ``channel_dim``."""
    if all(t == "none" for t in transforms):
        return v
    parts = list(torch.unbind(v, dim=channel_dim))
    for i, t in enumerate(transforms):
        if t == "log10":
            parts[i] = torch.log10(parts[i].clamp_min(1e-30))  # inactive cells may hold 0
        elif t == "signed_log1p":
            parts[i] = signed_log1p(parts[i])
        elif t == "asinh":
            parts[i] = torch.asinh(parts[i] / float(scales[i]))
        elif t != "none":
            raise UserError(f"stats.json: transform: unknown transform {t!r}")
    return torch.stack(parts, dim=channel_dim)


def delta_scales_from_stats(stats: dict) -> np.ndarray:
    """The per-channel scale s_c of the asinh change normalization (see module doc)."""
    delta = stats["delta"]
    scales = []
    rms = np.asarray(delta.get("per_sim_rms") or [], dtype=np.float64).reshape(-1, schema.N_DYNAMIC)
    for c in range(schema.N_DYNAMIC):
        col = rms[:, c]
        col = col[np.isfinite(col) & (col > 0)]  # a run without injection has zero T change
        s = float(np.quantile(col, DELTA_SCALE_QUANTILE)) if col.size else 0.0
        if schema.DYNAMIC_NAMES[c] in FRONT_SCALED:
            s = float(delta.get("abs_quantiles", {}).get(FRONT_QUANTILE, [0.0] * 2)[c]) or s
        if not s > 0:  # fall back to the pooled median |delta|, then the std
            s = float(delta.get("abs_quantiles", {}).get("0.5", [0.0] * 2)[c])
        if not s > 0:
            s = float(delta["std"][c])
        scales.append(s if s > 0 else 1.0)
    return np.asarray(scales, dtype=np.float64)


PRODUCTION_RATE_SLOT = schema.SCALAR_NAMES.index("FieldEnergyProductionRate")
# the pressure prior's channels in a prior pair (at t, at t + 1)
PRESSURE_PRIOR_SLOTS = tuple(schema.PRIOR_NAMES.index(n) + k * schema.N_PRIORS
                             for k in range(2) for n in schema.PRESSURE_PRIOR_NAMES)
STATIC_INJ_RATE = schema.STATIC_NAMES.index("InjRate")


def prior_pair(priors, t: int):
    """The priors at step t and at t + 1 (the last frame again past the end), as stored:
    priors (T, N_PRIORS, ...) -> (2 N_PRIORS, ...); Normalizer.normalize_dynamic makes input channels of them."""
    last = priors.shape[0] - 1
    frames = [priors[min(t, last)], priors[min(t + 1, last)]]
    if isinstance(priors, torch.Tensor):
        return torch.cat(frames, dim=0)
    return np.concatenate(frames, axis=0).astype(np.float32)


def producer_cells(static) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the active producer cells (InjRate < 0), their mass rates > 0 in kg/s);
    static (N_STATIC, Z, Y, X) physical. Computed once per simulation."""
    static = np.asarray(static)
    idx = np.flatnonzero((static[STATIC_INJ_RATE] < 0) & (static[STATIC_ACTIVE] > 0.5))
    return idx, -static[STATIC_INJ_RATE].ravel()[idx].astype(np.float64)


def production_enthalpy_ratio(producers, temp_now, temp_next) -> float:
    """sum(q_prod h(T_next)) / sum(q_prod h(T_now)) over ``producers`` (from producer_cells).

    The physics part of the change of FieldEnergyProductionRate over a step: producers
    deliver their fixed mass rate at the enthalpy of the water in their cells
    (liquid water, h = c_w (T - 273.15)). 1.0 without producers. Temperatures (Z, Y, X).
    """
    idx, q = producers
    if not idx.size:
        return 1.0
    h_now = np.asarray(temp_now).ravel()[idx].astype(np.float64) - schema.ENTHALPY_ZERO_T
    h_next = np.asarray(temp_next).ravel()[idx].astype(np.float64) - schema.ENTHALPY_ZERO_T
    now = float(np.sum(q * h_now))
    return float(np.sum(q * h_next)) / now if now > 0 else 1.0


def _read_stats(stats: dict) -> dict:
    """The arrays a Normalizer takes from stats.json, checked (UserError naming a missing key)."""
    try:
        names = tuple(stats["static"]["names"])
        if names != schema.STATIC_NAMES:
            raise UserError(f"stats.json: static/names: {names} != schema {schema.STATIC_NAMES}")
        return {
            "static_transform": list(stats["static"]["transform"]),
            "static_mean": np.asarray(stats["static"]["mean"], np.float64),
            "static_std": np.asarray(stats["static"]["std"], np.float64),
            "state_mean": np.asarray(stats["dynamic"]["mean"], np.float64),
            "state_std": np.asarray(stats["dynamic"]["std"], np.float64),
            "delta_mean": np.asarray(stats["delta"]["mean"], np.float64),
            "delta_std": np.asarray(stats["delta"]["std"], np.float64),
            "params_transform": list(stats["params"].get("transform", ["none"] * schema.N_PARAMS)),
            "params_mean": np.asarray(stats["params"]["mean"], np.float64),
            "params_std": np.asarray(stats["params"]["std"], np.float64),
            "params_floor": np.array([-np.inf if f is None else f
                                      for f in stats["params"].get("floor") or [None] * schema.N_PARAMS], np.float64),
            "scalar_transform": list(stats["scalars"]["transform"]),
            "scalar_mean": np.asarray(stats["scalars"]["mean"], np.float64),  # sets the floor of the scalars
        }
    except KeyError as err:
        raise UserError(f"stats.json: {err.args[0]}: missing key") from None


def _static_scales(delta_scale: np.ndarray) -> list[float]:
    """Scales of the "asinh" static channels: the injection temperature gap (K) shares the
    temperature target's scale, so the channel and the change it predicts read alike."""
    scales = [delta_scale[schema.DYNAMIC_NAMES.index("Pressure")]] * schema.N_STATIC
    scales[schema.STATIC_NAMES.index(schema.INJECTION_GAP)] = delta_scale[schema.DYNAMIC_NAMES.index("Temperature")]
    return scales


class _InputTransforms:
    """The model's grid inputs: static channels, state, change since t = 0, priors, and the
    advance of an input by a predicted step. Part of Normalizer (its __init__ sets the arrays)."""

    def normalize_static(self, static, active=None) -> torch.Tensor:
        s = _as_tensor(static)
        s = _apply_transform(s, self.static_transform, channel_dim=-4, scales=self.static_scale)
        s = (s - _bcast(self.static_mean, 3, s)) / _bcast(self.static_std, 3, s)
        if active is None:
            active = _as_tensor(static)[..., STATIC_ACTIVE : STATIC_ACTIVE + 1, :, :, :]
        return s * (_as_tensor(active) > 0.5)

    def normalize_state(self, state) -> torch.Tensor:
        s = _as_tensor(state)
        return (s - _bcast(self.state_mean, 3, s)) / _bcast(self.state_std, 3, s)

    def denormalize_state(self, state_norm) -> torch.Tensor:
        s = _as_tensor(state_norm, torch.float64)
        return s * _bcast(self.state_std, 3, s) + _bcast(self.state_mean, 3, s)

    def normalize_change(self, state, initial) -> torch.Tensor:
        """Change since t = 0 of schema.CHANGE_VARIABLES, asinh-scaled with the target scale s_c
        (float64 difference: a 100 Pa change of a 2e7 Pa pressure is near float32's resolution)."""
        idx = list(schema.CHANGE_OF_DYNAMIC)
        change = _as_tensor(state, torch.float64)[..., idx, :, :, :] - _as_tensor(initial, torch.float64)[..., idx, :, :, :]
        return torch.asinh(change / _bcast(self.delta_scale[idx], 3, change)).to(torch.float32)

    def normalize_dynamic(self, state, initial, prior) -> torch.Tensor:
        """The time-dependent input channels (schema.DYNAMIC_CHANNELS) at one t; ``prior`` is
        ``prior_pair(priors, t)`` (normalize_priors)."""
        return torch.cat([self.normalize_state(state), self.normalize_change(state, initial),
                          self.normalize_priors(prior)], dim=-4)

    def normalize_priors(self, prior) -> torch.Tensor:
        """A prior pair as stored (prior_pair) -> input channels: the thermal prior's shares as
        they are, the pressure prior from asinh(change / PRESSURE_PRIOR_SCALE_PA) to
        asinh(change / s_P), the scale of the PressureChange channel and of the pressure target,
        so the model reads both with one sinh (model._mix_responses)."""
        prior = _as_tensor(prior).float().clone()
        ratio = schema.PRESSURE_PRIOR_SCALE_PA / float(self.delta_scale[schema.DYNAMIC_NAMES.index("Pressure")])
        for i in PRESSURE_PRIOR_SLOTS:
            prior[..., i, :, :, :] = torch.asinh(torch.sinh(prior[..., i, :, :, :].double()) * ratio).float()
        return prior

    def normalize_input(self, static, state, prior, active=None) -> torch.Tensor:
        """static (N_STATIC, ...), state (2, ...) at t, prior = prior_pair(priors, t) -> x."""
        static = _as_tensor(static)
        if active is None:
            active = static[..., STATIC_ACTIVE : STATIC_ACTIVE + 1, :, :, :]
        mask = _as_tensor(active) > 0.5
        initial = static[..., list(schema.INITIAL_STATE_STATIC), :, :, :]
        x = torch.cat([self.normalize_static(static, mask), self.normalize_dynamic(state, initial, prior)], dim=-4)
        return x * mask

    def update_input(self, x, delta_norm, active, prior) -> torch.Tensor:
        """Advance the normalized input by one predicted step (multi-step training); ``prior`` is
        the prior pair of the new step as stored (prior_pair: data, not predicted)."""
        d = delta_norm.float()  # differentiable: multi-step training backpropagates through it
        scale = _bcast(self.delta_scale, 3, d)
        change = self._delta_to_physical(d)  # denormalize_delta's formula, kept in float32 and the graph
        mask = active > 0.5
        state = x[..., schema.STATE_CHANNELS, :, :, :]
        state = state + change / _bcast(self.state_std, 3, d) * mask
        idx = list(schema.CHANGE_OF_DYNAMIC)
        since_start = x[..., schema.CHANGE_CHANNELS, :, :, :]
        step = (change / scale)[..., idx, :, :, :]
        since_start = torch.where(mask, torch.asinh(torch.sinh(since_start) + step), since_start)
        prior = self.normalize_priors(prior).to(x.dtype) * mask
        return torch.cat([x[..., : schema.N_STATIC, :, :, :], state.to(x.dtype), since_start.to(x.dtype), prior], dim=-4)


class _TargetTransforms:
    """The model's targets: the per-step change of (P, T) and the field scalars (module doc).
    Part of Normalizer (its __init__ sets the arrays)."""

    def normalize_delta(self, delta) -> torch.Tensor:
        """Change of (P, T) over one step -> model target."""
        d = _as_tensor(delta, torch.float64)
        if self.delta_mode == "asinh":
            out = torch.asinh(d / _bcast(self.delta_scale, 3, d))
        else:
            out = (d - _bcast(self.delta_mean, 3, d)) / _bcast(self.delta_std, 3, d)
        return out.to(torch.float32)

    def denormalize_delta(self, delta_norm) -> torch.Tensor:
        """Normalized change -> change in Pa and K (float64; callers apply it at active cells only)."""
        return self._delta_to_physical(_as_tensor(delta_norm, torch.float64))

    def _delta_to_physical(self, d: torch.Tensor) -> torch.Tensor:
        """The inverse of normalize_delta, in the dtype and on the device of ``d``."""
        if self.delta_mode == "asinh":
            return torch.sinh(d) * _bcast(self.delta_scale, 3, d)
        return d * _bcast(self.delta_std, 3, d) + _bcast(self.delta_mean, 3, d)

    def _scalar_floor(self) -> np.ndarray:
        """A magnitude far below any meaningful value of each scalar (keeps 0 -> 0 finite)."""
        typical = np.expm1(np.abs(self.scalar_mean)) if all(t == "signed_log1p" for t in self.scalar_transform) \
            else np.abs(self.scalar_mean)
        return 1e-6 * typical + 1e-30

    def _scalar_refs(self, prev: torch.Tensor, production_ratio) -> tuple[torch.Tensor, torch.Tensor]:
        """Per slot, the magnitude a scalar is compared with and its floor (module doc)."""
        floor = torch.as_tensor(self._scalar_floor(), dtype=torch.float64, device=prev.device)
        ref = prev.abs().clone()
        floor = floor.expand_as(ref).clone()
        ratio = torch.as_tensor(1.0 if production_ratio is None else production_ratio, dtype=torch.float64,
                                device=prev.device)
        ref[..., PRODUCTION_RATE_SLOT] = ref[..., PRODUCTION_RATE_SLOT] * ratio
        for slot, rate in zip(INCREMENT_SLOTS, RATE_SLOTS):
            # trapezoid over the step, between the rate now and its reference at t+1
            ref[..., slot] = (prev[..., rate].abs() + ref[..., rate]) / 2 * schema.STEP_SECONDS
            floor[..., slot] = floor[..., rate] * schema.STEP_SECONDS
        return ref, floor

    def normalize_scalars(self, values_next, values_prev, production_ratio=None) -> torch.Tensor:
        """asinh(log(next / reference) / 0.1 %) per slot (see the module doc)."""
        nxt = _as_tensor(values_next, torch.float64)
        prev = _as_tensor(values_prev, torch.float64)
        ref, floor = self._scalar_refs(prev, production_ratio)
        value = nxt.abs().clone()
        for slot in INCREMENT_SLOTS:
            value[..., slot] = (nxt[..., slot] - prev[..., slot]).abs()
        log_ratio = torch.log((value + floor) / (ref + floor))
        return torch.asinh(log_ratio / SCALAR_LOG_UNIT).to(torch.float32)

    def denormalize_scalars(self, scalars_norm, values_prev, production_ratio=None) -> torch.Tensor:
        z = _as_tensor(scalars_norm, torch.float64)
        prev = _as_tensor(values_prev, torch.float64)
        ref, floor = self._scalar_refs(prev, production_ratio)
        log_ratio = (torch.sinh(z) * SCALAR_LOG_UNIT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        value = ((ref + floor) * torch.exp(log_ratio) - floor).clamp_min(0.0)
        out = torch.where(prev < 0, -value, value)  # rates keep their sign (positive in v2.4)
        for slot in INCREMENT_SLOTS:
            out[..., slot] = prev[..., slot] + value[..., slot]
        return out


class Normalizer(_InputTransforms, _TargetTransforms):
    """Physical <-> normalized values, from the stats.json dict (module doc lists the methods).

    Holds the stats' arrays and scales and builds the conditioning vector; the grid inputs and
    the targets are transformed by the methods of its two bases."""

    def __init__(self, stats: dict, delta_mode: str = "asinh"):
        if delta_mode not in ("asinh", "zscore"):
            raise ValueError(f"delta_mode must be 'asinh' or 'zscore', not {delta_mode!r}")
        self.__dict__.update(_read_stats(stats))  # static_mean, state_std, ...: the names _read_stats gives
        self.delta_mode = delta_mode
        self.delta_scale = delta_scales_from_stats(stats)
        self.static_scale = _static_scales(self.delta_scale)
        self.stats = stats

    @classmethod
    def from_file(cls, path, **kwargs) -> "Normalizer":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: stats.json: file not found (run `voxel-ode prep` first)")
        from voxel_ode.data.prep import load_stats

        return cls(load_stats(path), **kwargs)  # validated: one line naming the file and field

    # ---- the conditioning vector --------------------------------------------
    @staticmethod
    def time_feature(t) -> torch.Tensor:
        """The conditioning entry for input step t (schema.CONDITIONING_NAMES[-1]); t: int or tensor."""
        t = torch.as_tensor(t, dtype=torch.float32)
        return torch.log1p(t) / float(np.log1p(schema.N_TIMESTEPS - 1))

    def conditioning(self, params_norm, t) -> torch.Tensor:
        """[..., 26] normalized params + time feature of step t -> [..., 27] (what the model takes)."""
        params_norm = _as_tensor(params_norm)
        feature = self.time_feature(t).to(params_norm.device).expand(params_norm.shape[:-1])
        return torch.cat([params_norm, feature.unsqueeze(-1)], dim=-1)

    def normalize_params(self, params) -> torch.Tensor:
        p = torch.maximum(_as_tensor(params, torch.float64), torch.as_tensor(self.params_floor))
        p = _apply_transform(p, self.params_transform, channel_dim=-1)
        p = (p - torch.as_tensor(self.params_mean)) / torch.as_tensor(self.params_std)
        return p.to(torch.float32)


# ---------------------------------------------------------------------------
# XY augmentations, as sequences of three primitive operations on the last two
# axes (Y, X): "flip_y", "flip_x", "transpose". A 90 degree turn (np.rot90 with
# axes (Y, X)) is flip_x followed by transpose.
# ---------------------------------------------------------------------------
def augmentation_ops(turns: int, flip_y: bool, flip_x: bool) -> list[str]:
    ops = ["flip_x", "transpose"] * (turns % 4)
    if flip_y:
        ops.append("flip_y")
    if flip_x:
        ops.append("flip_x")
    return ops


def apply_ops(grid: torch.Tensor, ops, perm_channels: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply XY ops to a [..., C, D, H, W] grid; a transpose swaps the two permeability channels."""
    for op in ops:
        if op == "flip_y":
            grid = torch.flip(grid, dims=(-2,))
        elif op == "flip_x":
            grid = torch.flip(grid, dims=(-1,))
        else:
            grid = grid.transpose(-2, -1)
            if perm_channels is not None:  # the X permeability now lies along Y and vice versa
                i, j = perm_channels
                idx = list(range(grid.shape[-4]))
                idx[i], idx[j] = j, i
                grid = grid[..., idx, :, :, :]
    return grid.contiguous()


def apply_ops_box(box, extent, ops):
    """Move a patch box ((y0, y1), (x0, x1)) inside a frame of size (H, W) along with the ops."""
    (y0, y1), (x0, x1) = box
    h, w = extent
    for op in ops:
        if op == "flip_y":
            y0, y1 = h - y1, h - y0
        elif op == "flip_x":
            x0, x1 = w - x1, w - x0
        else:
            y0, y1, x0, x1, h, w = x0, x1, y0, y1, w, h
    return ((y0, y1), (x0, x1)), (h, w)


def _read_priors(f: h5py.File, steps: slice, box=(slice(None),) * 3) -> np.ndarray:
    """The stored priors of ``steps`` in ``box`` (a UserError for a file prepped without them)."""
    if schema.PREPPED_PRIORS not in f:
        raise UserError(f"{f.filename}: /{schema.PREPPED_PRIORS}: missing (prepped by an older "
                        "voxel-ode: run `voxel-ode prep` again)")
    return f[schema.PREPPED_PRIORS][(steps, slice(None)) + tuple(box)].astype(np.float32)


class _CoarseContext:
    """Patch mode: a simulation's whole field at every t, normalized and coarsened once by
    ``factor`` (utils.coarsen), for its samples' context_x / context_active."""

    def __init__(self, normalizer: Normalizer, f: h5py.File, static: torch.Tensor, factor: int):
        self.normalizer, self.f, self.factor = normalizer, f, factor
        self.active = static[STATIC_ACTIVE : STATIC_ACTIVE + 1] > 0.5
        self.initial = static[list(schema.INITIAL_STATE_STATIC)]
        self.static_norm = normalizer.normalize_static(static, self.active)
        self.dynamic = []

    def add(self, t: int, grid_t: np.ndarray, n_t: int) -> None:
        """The dynamic channels of step t (grid_t: its stored P, T)."""
        pair = prior_pair(_read_priors(self.f, slice(t, min(t + 2, n_t))), 0)
        state = self.normalizer.normalize_dynamic(torch.from_numpy(grid_t), self.initial, pair) * self.active
        self.dynamic.append(coarsen(state, self.active.float(), self.factor)[0])

    def entries(self) -> dict:
        static_c, frac = coarsen(self.static_norm, self.active.float(), self.factor)
        return {"context_static": static_c, "context_dynamic": torch.stack(self.dynamic), "context_active": frac}


class _SimFiles:
    """The prepped files of a split, opened lazily in each process (never shared by forked
    DataLoader workers), and per simulation what all its samples share (``entry``)."""

    def __init__(self, root: Path, sim_paths: list[str], normalizer: Normalizer, context_factor: int | None):
        self.root, self.sim_paths, self.normalizer = root, sim_paths, normalizer
        self.context_factor = context_factor  # None: no whole-field context (full mode)
        self._pid = None
        self._files: dict[int, h5py.File] = {}
        self._cache: dict[int, dict] = {}

    def file(self, sim: int) -> h5py.File:
        if self._pid != os.getpid():  # first use in this process: drop anything inherited
            self._pid, self._files, self._cache = os.getpid(), {}, {}
        if sim not in self._files:
            path = self.root / self.sim_paths[sim]
            try:
                self._files[sim] = h5py.File(path, "r")
            except OSError as err:
                raise UserError(f"{path}: file: cannot open ({err})") from None
        return self._files[sim]

    def entry(self, sim: int) -> dict:
        """Normalized params, physical scalars, grid shape, the producers' enthalpy ratio of every
        step and, with a context factor, the coarse whole-field context of every t."""
        f = self.file(sim)
        if sim in self._cache:
            return self._cache[sim]
        static = torch.from_numpy(f[schema.PREPPED_STATIC][...].astype(np.float32))
        grids = f[schema.PREPPED_OUTPUTS_GRID]
        n_t = grids.shape[0]
        entry = {
            "n_timesteps": n_t,
            "params": self.normalizer.normalize_params(f[schema.PREPPED_PARAMS][...]),
            "scalars": np.asarray(f[schema.PREPPED_OUTPUTS_SCALAR][...], np.float64),
            "grid_shape": tuple(static.shape[-3:]),
        }
        context = None if self.context_factor is None else \
            _CoarseContext(self.normalizer, f, static, self.context_factor)
        # one pass over the steps, each read once: the grids are the bulk of a file
        producers = producer_cells(static.numpy())
        ratios, temp_prev = [], None
        for t in range(n_t):
            grid_t = grids[t].astype(np.float32)
            if temp_prev is not None:
                ratios.append(production_enthalpy_ratio(producers, temp_prev, grid_t[1]))
            temp_prev = grid_t[1]
            if context is not None:
                context.add(t, grid_t, n_t)
        entry["production_ratio"] = np.asarray(ratios, np.float64)
        if context is not None:
            entry.update(context.entries())
        self._cache[sim] = entry
        return entry

    def __del__(self):
        for f in getattr(self, "_files", {}).values():
            try:
                f.close()
            except Exception:
                pass


class _PatchSampling:
    """mode="patch": one sample per line of index_{split}.jsonl (a box of the grid at t),
    with the simulation's coarse whole field at t as context.

    A sampling (this or _FullSampling) lists the samples, gives a row's box and adds what the
    mode adds to a sample; PatchDataset picks one by ``mode``."""

    def __init__(self, context_factor: int):
        self.context_factor = context_factor

    @staticmethod
    def list_samples(root: Path, split: str, rollout_steps: int) -> tuple[list[str], np.ndarray]:
        """(sim_paths, rows (sim, t, z0, z1, y0, y1, x0, x1)) from the split's patch index."""
        path = root / schema.INDEX_FILE.format(split=split)
        if not path.is_file():
            raise UserError(f"{path}: {path.name}: file not found (run `voxel-ode prep` first)")
        sims: dict[str, int] = {}
        rows = []
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    sim = sims.setdefault(e["sim_path"], len(sims))
                    rows.append((sim, e["t"], e["z0"], e["z1"], e["y0"], e["y1"], e["x0"], e["x1"]))
                except (ValueError, KeyError) as err:
                    raise UserError(f"{path}: line {line_no}: bad patch entry ({err})") from None
        if not rows:
            raise UserError(f"{path}: {path.name}: no patches")
        return list(sims), np.asarray(rows, np.int64)

    @staticmethod
    def box(row, grid_shape) -> tuple:
        z0, z1, y0, y1, x0, x1 = (int(v) for v in row[2:])
        return (z0, z1), (y0, y1), (x0, x1)

    def add_context(self, sample: dict, entry: dict, t: int, box, ops) -> None:
        """origin and context_x / context_active; the patch box moves in the padded
        (coarse-aligned) frame of the augmented whole field."""
        (z0, _), (y0, y1), (x0, x1) = box
        ctx_x = torch.cat([entry["context_static"], entry["context_dynamic"][t]], dim=0)
        ctx_active = entry["context_active"]
        padded = tuple(c * self.context_factor for c in ctx_active.shape[-2:])
        ((y0, _), (x0, _)), _ = apply_ops_box(((y0, y1), (x0, x1)), padded, ops)
        sample["origin"] = torch.tensor([z0, y0, x0], dtype=torch.int64)
        sample["context_x"] = apply_ops(ctx_x, ops, (STATIC_PERM_X, STATIC_PERM_Y))
        sample["context_active"] = apply_ops(ctx_active, ops)


class _FullSampling:
    """mode="full": one sample per (simulation, t) with the whole grid, t = 0..T-1-K; no
    context (the model computes it from x itself)."""

    context_factor = None

    @staticmethod
    def list_samples(root: Path, split: str, rollout_steps: int) -> tuple[list[str], np.ndarray]:
        """(sim_paths, rows (sim, t)) of the split's prepped files."""
        sim_paths = sorted(str(p.relative_to(root)) for p in (root / split).glob(f"*{schema.PREPPED_SUFFIX}"))
        if not sim_paths:
            raise UserError(f"{root / split}: *{schema.PREPPED_SUFFIX}: no prepped simulations")
        with h5py.File(root / sim_paths[0], "r") as f:
            n_t = f[schema.PREPPED_OUTPUTS_GRID].shape[0]
        rows = [(s, t) for s in range(len(sim_paths)) for t in range(0, n_t - rollout_steps)]
        return sim_paths, np.asarray(rows, np.int64).reshape(-1, 2)

    @staticmethod
    def box(row, grid_shape) -> tuple:
        return tuple((0, n) for n in grid_shape)

    def add_context(self, sample: dict, entry: dict, t: int, box, ops) -> None:
        pass  # the whole grid is its own context, and its origin is 0


def _load_stats(root: Path) -> dict:
    stats_path = root / schema.STATS_FILE
    if not stats_path.is_file():
        raise UserError(f"{stats_path}: stats.json: file not found (run `voxel-ode prep` first)")
    from voxel_ode.data.prep import load_stats

    return load_stats(stats_path)  # validated: one line naming the file and field


class PatchDataset(torch.utils.data.Dataset):
    """Training samples from a prepped root (see the module doc for the sample layout).

    Where the samples lie (patches or whole grids) is the sampling's (_PatchSampling,
    _FullSampling); the files and what a simulation's samples share are _SimFiles'; this
    class reads a sample's box, normalizes and augments it."""

    def __init__(
        self,
        prepped_root,
        split: str,
        stats: dict | None = None,
        mode: str = "patch",
        rollout_steps: int = 1,
        aug_xy_rot: bool = False,
        aug_flip: bool = False,
        noise_std: float = 0.0,
        seed: int = 0,
        context_factor: int = 4,
        delta_mode: str = "asinh",
    ):
        self.root = Path(prepped_root)
        if split not in schema.SPLITS:
            raise UserError(f"{self.root}: split: {split!r} is not one of {schema.SPLITS}")
        if mode not in ("patch", "full"):
            raise ValueError(f"mode must be 'patch' or 'full', not {mode!r}")
        if rollout_steps < 1 or (mode == "patch" and rollout_steps != 1):
            raise UserError(f"{self.root}: rollout_steps: {rollout_steps} (patch mode needs 1; use mode='full' for K > 1)")
        self.stats = _load_stats(self.root) if stats is None else stats
        self.normalizer = Normalizer(self.stats, delta_mode=delta_mode)
        self.split, self.mode, self.K = split, mode, rollout_steps
        self.aug_xy_rot, self.aug_flip, self.noise_std = aug_xy_rot, aug_flip, float(noise_std)
        self.seed, self.epoch, self.factor = int(seed), 0, int(context_factor)
        self.sampling = _PatchSampling(self.factor) if mode == "patch" else _FullSampling()
        self.sim_paths, self.samples = self.sampling.list_samples(self.root, split, self.K)
        self._sims = _SimFiles(self.root, self.sim_paths, self.normalizer, self.sampling.context_factor)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _draw_ops(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        turns = int(rng.integers(4)) if self.aug_xy_rot else 0
        flips = rng.random(2) < 0.5 if self.aug_flip else (False, False)
        return augmentation_ops(turns, bool(flips[0]), bool(flips[1])), rng

    def __getitem__(self, index: int) -> dict:
        row = self.samples[index]
        sim, t = int(row[0]), int(row[1])
        f, entry = self._sims.file(sim), self._sims.entry(sim)
        box = self.sampling.box(row, entry["grid_shape"])
        sample = self._read(f, entry, sim, t, box)
        ops, rng = self._draw_ops(index)
        self._augment(sample, ops, rng)
        self.sampling.add_context(sample, entry, t, box, ops)
        return sample

    def _read(self, f: h5py.File, entry: dict, sim: int, t: int, box) -> dict:
        """The sample of steps t..t+K in ``box`` ((lo, hi) per axis), normalized, not augmented."""
        nrm, K = self.normalizer, self.K
        box = tuple(slice(lo, hi) for lo, hi in box)
        static = f[schema.PREPPED_STATIC][(slice(None),) + box].astype(np.float32)
        grids = f[schema.PREPPED_OUTPUTS_GRID][(slice(t, t + K + 1), slice(None)) + box]
        active = torch.from_numpy(static[STATIC_ACTIVE : STATIC_ACTIVE + 1] > 0.5)
        frames = _read_priors(f, slice(t, t + K + 1), box)  # step k's pair: frames k and k + 1
        x = nrm.normalize_input(static, grids[0].astype(np.float32), prior_pair(frames, 0), active)
        delta = np.diff(grids.astype(np.float64), axis=0)  # exact differences of the stored values
        scalars = entry["scalars"]
        production_ratio = entry["production_ratio"][t:t + K]
        return {
            "x": x,
            "active": active.float(),
            "params": nrm.conditioning(entry["params"], t),
            "target_delta": nrm.normalize_delta(delta) * active,
            "priors": torch.from_numpy(frames),
            "target_scalars": nrm.normalize_scalars(scalars[t + 1 : t + K + 1], scalars[t:t + K], production_ratio),
            "scalars_prev": torch.from_numpy(scalars[t].copy()),
            "production_ratio": torch.from_numpy(production_ratio.copy()),
            "origin": torch.zeros(3, dtype=torch.int64),
            "sim": torch.tensor(sim),
            "t": torch.tensor(t),
        }

    def _augment(self, sample: dict, ops, rng) -> None:
        """The XY ops on every grid of the sample, then the input noise (drawn from ``rng``)."""
        sample["x"] = apply_ops(sample["x"], ops, (STATIC_PERM_X, STATIC_PERM_Y))
        for key in ("priors", "active", "target_delta"):
            sample[key] = apply_ops(sample[key], ops)
        if self.noise_std > 0:  # on the predicted inputs only (not the prior), at active cells
            x = sample["x"]
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = torch.randn(x[schema.PREDICTED_CHANNELS].shape, generator=gen) * self.noise_std
            x[schema.PREDICTED_CHANNELS] += noise * sample["active"]


def collate(samples: list[dict]) -> dict:
    """Stack samples; grids of different shapes are zero-padded at the far end (= inactive)."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            target = [max(n) for n in zip(*shapes)]
            padded = []
            for v in values:
                pad = []
                for have, want in zip(reversed(v.shape), reversed(target)):
                    pad += [0, want - have]
                padded.append(torch.nn.functional.pad(v, pad))
            values = padded
        batch[key] = torch.stack(values)
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Keep each DataLoader worker on one thread: the 3D convolutions want the cores."""
    torch.set_num_threads(1)
