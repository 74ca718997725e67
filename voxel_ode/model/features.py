"""The model's inputs and targets: the one place that turns physical fields into what the
network reads and back (normalization, channel assembly in schema.INPUT_CHANNELS order, the
prior pair of a step). Training samples and inference rollouts both build their inputs here.

API
---
``Normalizer(stats, delta_mode="asinh")``
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
        worse on the demo.)
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
"""

from __future__ import annotations

import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.utils import UserError, signed_log1p

INCREMENT_SLOTS = tuple(schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_SCALARS)


RATE_SLOTS = tuple(schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_RATES)


SCALAR_LOG_UNIT = 1e-3  # scalar targets are log-ratios in units of 0.1 %, asinh-squeezed beyond


MAX_LOG_RATIO = 20.0  # a predicted ratio is kept within e^-20 .. e^20 (no overflow in a rollout)


DELTA_SCALE_QUANTILE = 0.5  # of the per-simulation RMS change over train sims


# Temperature moves at fronts and hardly anywhere else: its median per-run RMS change (0.9 K
# on the demo data) lies far below the 20-100 K that matter, and asinh at that scale weighs a
# 5 K error in a quiet cell like a 30 K error at the front, so training preferred to under-cool
# the plume cores. Its scale is the pooled 99 % quantile of |dT| instead (3.5 K there):
# year-29 temperature error 0.43 -> 0.38 on the demo.
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
    idx = np.flatnonzero((static[schema.STATIC_INJ_RATE] < 0) & (static[schema.STATIC_ACTIVE] > 0.5))
    return idx, -static[schema.STATIC_INJ_RATE].ravel()[idx].astype(np.float64)


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
            active = _as_tensor(static)[..., schema.STATIC_ACTIVE : schema.STATIC_ACTIVE + 1, :, :, :]
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
        so the model reads both with one sinh (VoxelAutoRegressor.prior_steps)."""
        prior = _as_tensor(prior).float().clone()
        ratio = schema.PRESSURE_PRIOR_SCALE_PA / float(self.delta_scale[schema.DYNAMIC_NAMES.index("Pressure")])
        for i in PRESSURE_PRIOR_SLOTS:
            prior[..., i, :, :, :] = torch.asinh(torch.sinh(prior[..., i, :, :, :].double()) * ratio).float()
        return prior

    def normalize_input(self, static, state, prior, active=None, static_norm=None) -> torch.Tensor:
        """static (N_STATIC, ...), state (2, ...) at t, prior = prior_pair(priors, t) -> x.
        ``static_norm``: normalize_static(static) when the caller keeps it (a rollout: the static
        channels never change)."""
        static = _as_tensor(static)
        if active is None:
            active = static[..., schema.STATIC_ACTIVE : schema.STATIC_ACTIVE + 1, :, :, :]
        mask = _as_tensor(active) > 0.5
        if static_norm is None:
            static_norm = self.normalize_static(static, mask)
        initial = static[..., list(schema.INITIAL_STATE_STATIC), :, :, :]
        x = torch.cat([static_norm, self.normalize_dynamic(state, initial, prior)], dim=-4)
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
