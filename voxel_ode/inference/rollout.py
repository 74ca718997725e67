"""Autoregressive rollout of a whole simulation, baselines, and evaluation over a split.

``voxel-ode rollout`` (== ``scripts/rollout_inference.py``): from the initial
state t = 0, predict t = 1..T-1 on the full grid, feeding each predicted
Pressure/Temperature back in. The model predicts the normalized change; it is
denormalized and added to ACTIVE cells only, so inactive cells keep their
values for the whole rollout. Writes ``predictions.h5``::

    predicted/outputs_grid   (T, 2, Z, Y, X) float32  Pa, K
    predicted/outputs_scalar (T, 5)          float64  schema.SCALAR_NAMES, physical units
    static/IsActive          (Z, Y, X)       uint8    the mask the rollout used
    truth/outputs_grid, truth/outputs_scalar          only with --save_truth and a source with outputs
    root attrs: checkpoint, stats, source, model_config (JSON), receptive_field, tile, device, schema_version

Scalars at t = 0 are not predicted: they are a copy of the source's t = 0
values when it has outputs, NaN otherwise. The cumulative
FieldEnergyProductionTotal is predicted as a per-step increment and summed.

``--tile Z Y X`` runs the local path tile by tile with a halo of
``model.receptive_field`` cells, so the result equals the full-grid one; the
whole-field context (coarse, small) is computed once per step on the whole grid
and passed to every tile with the tile's origin. Tiles without an active cell
are skipped: only active cells are ever updated, so their change is unused.

Without ``--tile`` the local path still skips what has no active cell: a model that zeroes
its features at inactive cells (the default) computes the same values at active cells on
the bounding box of the active cells as on the whole grid, so the grid is cut into the
cheapest set of such boxes (one, or slabs along an axis, each with the halo its neighbours
need; ``crop_plan``, ``auto_plan``). A 15 %-active grid then costs a fraction of a full one.

``voxel-ode evaluate`` rolls out every simulation of a split with the model
and the baselines (persistence; optionally a linear per-voxel model fitted on
the train split), prints a summary table and writes metrics.json, a per-step
CSV, predictions (+ XDMF) and PNG pictures.

The linear baseline predicts the physical change of P and T at a voxel as
W @ [normalized inputs, normalized params, 1], fitted by ridge least
squares on subsampled active cells of the train split (one-step targets) and
rolled out like the model; it has no notion of time, so it cannot follow a
large first-year transient that then decays, and its rollouts drift.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from voxel_ode.inference import metrics as M
from voxel_ode import schema
from voxel_ode.model.precision import add_amp_arg
from voxel_ode.utils import UserError, atomic_path, write_json_atomic

ACTIVE_STATIC = schema.STATIC_NAMES.index("IsActive")


# ---------------------------------------------------------------------------
# Loading one simulation into memory
# ---------------------------------------------------------------------------
def load_prepped_sim(path) -> dict:
    """Arrays of one prepped file: static, params_scalar, outputs_grid, priors, outputs_scalar, source."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            for name in (schema.PREPPED_STATIC, schema.PREPPED_PARAMS, schema.PREPPED_OUTPUTS_GRID):
                if name not in f:
                    raise UserError(f"{path}: /{name}: missing (not a prepped file?)")
            sim = {
                "static": f[schema.PREPPED_STATIC][()].astype(np.float32),
                "params_scalar": f[schema.PREPPED_PARAMS][()].astype(np.float32),
                "outputs_grid": f[schema.PREPPED_OUTPUTS_GRID][()].astype(np.float32),
                "source": str(path),
            }
            if schema.PREPPED_PRIORS not in f:
                raise UserError(f"{path}: /{schema.PREPPED_PRIORS}: missing (prepped by an older voxel-ode: "
                                "run `voxel-ode prep` again)")
            sim["priors"] = f[schema.PREPPED_PRIORS][()]  # float16: 416 MB on the full grid
            if schema.PREPPED_OUTPUTS_SCALAR in f:
                sim["outputs_scalar"] = f[schema.PREPPED_OUTPUTS_SCALAR][()].astype(np.float64)
    except OSError as err:
        raise UserError(f"{path}: -: cannot open as HDF5 ({err})") from None
    if sim["static"].shape[0] != schema.N_STATIC:
        raise UserError(f"{path}: /{schema.PREPPED_STATIC}: {sim['static'].shape[0]} channels, expected {schema.N_STATIC}")
    if not (sim["static"][schema.STATIC_NAMES.index("IsActive")] > 0.5).any():
        # nothing to predict: the field scalars would come from the model alone
        raise UserError(f"{path}: /{schema.PREPPED_STATIC}: no active cell (prep refuses such runs)")
    return sim


def load_raw_sim(path, fill_value=None, desc=None) -> dict:
    """A raw v2.4 file -> the same arrays prep would write (mask, units, time origin, derived channels).

    Prep logic is not re-implemented here: data_prep.prepare_arrays validates and packs the
    file in memory. ``desc``: the dataset description prep used (stats.json "description").
    """
    from voxel_ode.data import prep as data_prep

    sim = dict(data_prep.prepare_arrays(path, fill_value=fill_value, desc=desc))
    sim["source"] = str(path)
    return sim


def load_sim(path, fill_value=None, desc=None) -> dict:
    """Prepped or raw v2.4 file, told apart by layout."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: -: no such file")
    try:
        with h5py.File(path, "r") as f:
            is_raw = schema.INPUT_GROUP in f
    except OSError as err:
        raise UserError(f"{path}: -: cannot open as HDF5 ({err})") from None
    return load_raw_sim(path, fill_value, desc) if is_raw else load_prepped_sim(path)


def description_of(stats: dict):
    """The dataset description prep used (stats.json "description"), for raw files."""
    from voxel_ode.data import description

    return description.Description.from_dict(stats.get("description") or {}, "stats.json description")


def priors_of(sim: dict) -> np.ndarray:
    """The simulation's per-year priors (T, N_PRIORS, Z, Y, X), the model's prior input channels, as
    prep or load_raw_sim derived them (with the dataset's description)."""
    if "priors" not in sim:
        raise UserError(f"{sim.get('source', 'simulation')}: no /priors: load it with rollout.load_sim")
    return sim["priors"]


def initial_state(sim: dict) -> np.ndarray:
    """(2, Z, Y, X) state at t = 0: outputs_grid[0], else Pressure0/Temperature0."""
    if "outputs_grid" in sim:
        return sim["outputs_grid"][0].astype(np.float32).copy()
    return sim["static"][list(schema.INITIAL_STATE_STATIC)].astype(np.float32)


def initial_scalars(sim: dict) -> np.ndarray:
    """(5,) field scalars at t = 0: outputs_scalar[0], else an estimate from the inputs.

    The model predicts each scalar relative to its previous value, so a rollout needs a
    start. Without the t = 0 report: water rates = sums of InjRate (+ injection,
    - production), energy rates = those rates x liquid-water enthalpy c_w (T - 273.15)
    at Temperature0 (producers) and at Temperature0 + InjectionTemperatureGap (injectors),
    total = 0. Exact for `voxel-ode synth` runs; for
    a simulator with other enthalpies give the t = 0 report instead.
    """
    if "outputs_scalar" in sim and np.all(np.isfinite(sim["outputs_scalar"][0])):
        return np.asarray(sim["outputs_scalar"][0], np.float64).copy()
    static = sim["static"]
    active = static[ACTIVE_STATIC] > 0.5
    rate = np.where(active, static[schema.STATIC_NAMES.index("InjRate")], 0.0).astype(np.float64)
    t0 = static[schema.STATIC_NAMES.index("Temperature0")].astype(np.float64)
    gap = static[schema.STATIC_NAMES.index(schema.INJECTION_GAP)].astype(np.float64)
    injectors = active & (rate > 0)
    t_inj = float(np.mean((t0 + gap)[injectors])) if injectors.any() else schema.ENTHALPY_ZERO_T
    enthalpy = lambda temp: schema.WATER_HEAT_CAPACITY * (temp - schema.ENTHALPY_ZERO_T)  # noqa: E731
    inj, prod = np.maximum(rate, 0.0), np.maximum(-rate, 0.0)
    values = {"FieldEnergyInjectionRate": inj.sum() * enthalpy(t_inj),
              "FieldEnergyProductionRate": float(np.sum(prod * enthalpy(t0))),
              "FieldEnergyProductionTotal": 0.0,
              "FieldWaterInjectionRate": inj.sum(), "FieldWaterProductionRate": prod.sum()}
    return np.asarray([values[n] for n in schema.SCALAR_NAMES], np.float64)


# ---------------------------------------------------------------------------
# Steppers: state (physical) -> change (physical) + scalars (physical)
# ---------------------------------------------------------------------------
class PersistenceStepper:
    """Baseline: the state never changes; scalars stay at their t = 0 value."""

    name = "persistence"
    receptive_field = 0

    def start(self, sim):
        self.shape = sim["static"].shape[1:]

    def step(self, state, prev_scalars):
        # scalars stay at their last value (the cumulative total adds nothing)
        scalars = None if prev_scalars is None else prev_scalars.copy()
        return np.zeros((schema.N_DYNAMIC,) + tuple(self.shape), np.float32), scalars


def tile_ranges(n: int, size: int):
    """Cores [a, b) covering 0..n with tiles of ``size`` (the last one shorter)."""
    size = max(1, min(int(size), n))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _active_box(active: np.ndarray, lo, hi):
    """(lo, hi) of the active cells of active[lo:hi] (grid coordinates), None when there are none."""
    sub = active[tuple(slice(a, b) for a, b in zip(lo, hi))]
    if not sub.any():
        return None
    box_lo, box_hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(sub.any(axis=tuple(i for i in range(3) if i != axis)))
        box_lo.append(lo[axis] + int(hit[0]))
        box_hi.append(lo[axis] + int(hit[-1]) + 1)
    return tuple(box_lo), tuple(box_hi)


def crop_plan(active: np.ndarray, halo: int, cores, shrink: bool):
    """[(core lo, core hi, region lo, region hi)]: the local path runs on each region, and its
    output on the core's part of it is kept. Cores without an active cell are left out (only active
    cells are ever updated). Region = core + halo (the receptive field), clipped to the grid.

    ``shrink`` (a model that zeroes its features at inactive cells, model.mask_features, with a
    per-voxel norm): an inactive cell then acts exactly like the zero padding outside a region, so
    the region shrinks to the bounding box of the active cells within it and the core to that of
    its own active cells: cost follows the active cells, and the result stays the full grid's.
    """
    plan = []
    for lo, hi in cores:
        core = _active_box(active, lo, hi) if shrink else ((lo, hi) if active[
            tuple(slice(a, b) for a, b in zip(lo, hi))].any() else None)
        if core is None:
            continue
        r_lo = tuple(max(0, a - halo) for a in lo)
        r_hi = tuple(min(n, b + halo) for b, n in zip(hi, active.shape))
        region = _active_box(active, r_lo, r_hi) if shrink else (r_lo, r_hi)
        plan.append((*core, *region))
    return plan


# per region, the fixed cost of a forward pass (kernel set-up, context crop) in cells of work
REGION_OVERHEAD_CELLS = 20_000


def auto_plan(active: np.ndarray, halo: int, shrink: bool):
    """The cheapest crop_plan among: one core (the whole grid: its active bounding box) and slabs
    along each axis (2 to 16 per axis), by cells computed + REGION_OVERHEAD_CELLS per region. A
    thin or dipping active layer spans most of the grid's box but few of its slabs."""
    whole = ((0, 0, 0), tuple(active.shape))
    best = crop_plan(active, halo, [whole], shrink)
    if not shrink:
        return best

    def cost(plan):
        return sum(int(np.prod(np.subtract(p[3], p[2]))) + REGION_OVERHEAD_CELLS for p in plan)

    for axis, n in enumerate(active.shape):
        for k in (2, 3, 4, 6, 8, 12, 16):
            if n // k < max(4, halo):  # slabs thinner than the halo mostly recompute their neighbours
                break
            cores = []
            for a, b in tile_ranges(n, -(-n // k)):
                lo, hi = list(whole[0]), list(whole[1])
                lo[axis], hi[axis] = a, b
                cores.append((tuple(lo), tuple(hi)))
            plan = crop_plan(active, halo, cores, shrink)
            if cost(plan) < cost(best):
                best = plan
    return best


def region_plan(active: np.ndarray, model, receptive_field: int, tile=None, crop=True, scalars_ok=True):
    """The regions a model step computes on this grid (crop_plan), or None for one pass over
    the whole grid: tiles with ``tile``, else the cheapest crop (auto_plan) where cropping is exact."""
    config = getattr(model, "config", None)
    # exact shrinking needs features zeroed at inactive cells and a per-voxel norm
    shrink = bool(getattr(config, "mask_features", False)) and getattr(config, "norm", None) == "channel"
    if tile:
        cores = [((z0, y0, x0), (z1, y1, x1)) for z0, z1 in tile_ranges(active.shape[0], tile[0])
                 for y0, y1 in tile_ranges(active.shape[1], tile[1])
                 for x0, x1 in tile_ranges(active.shape[2], tile[2])]
        plan = crop_plan(active, receptive_field, cores, shrink)
    elif not (crop and shrink):
        return None
    elif scalars_ok:
        plan = auto_plan(active, receptive_field, shrink)
    else:  # scalars pooled over the local features: one region holding every active cell
        plan = crop_plan(active, receptive_field, [((0, 0, 0), active.shape)], shrink)
    return plan or None  # no active cell at all: the whole grid, as before


class _PlannedForward:
    """The model's normalized prediction for a whole grid: in one pass, or region by region
    (``plan``, see crop_plan) with the whole-field context computed once and shared."""

    def __init__(self, model, device, amp_dtype, context_factor: int, plan, scalars_ok: bool):
        import torch

        self.torch, self.model, self.device, self.amp_dtype = torch, model, device, amp_dtype
        self.context_factor, self.plan, self.scalars_ok = context_factor, plan, scalars_ok

    def _autocast(self):
        dtype = self.amp_dtype or self.torch.bfloat16  # a disabled autocast still needs a dtype it supports
        return self.torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)

    def _forward(self, x, params, context, origin, active):
        torch = self.torch
        with self._autocast():
            origin = torch.as_tensor([origin], dtype=torch.long)  # [1, 3], in the whole grid's frame
            delta, scalars = self.model(x, params, active, context=context, origin=origin)
        return delta.float(), (None if scalars is None else scalars.float())

    def __call__(self, x, params, active):
        """Normalized change (1, 2, Z, Y, X) and normalized scalars (1, 5) for the whole grid."""
        torch = self.torch
        context = None
        if getattr(self.model, "compute_context", None) is not None:
            # the whole-field path: once per step on the coarsened whole grid, shared by every tile
            from voxel_ode.utils import coarsen

            x_coarse, active_coarse = coarsen(x, active, self.context_factor)
            with self._autocast():
                context = self.model.compute_context(x_coarse, params, active_coarse)
        if self.plan is None:
            return self._forward(x, params, context, (0, 0, 0), active)
        out = torch.zeros((1, schema.N_DYNAMIC) + tuple(x.shape[-3:]), device=self.device)
        scalars = None
        for c_lo, c_hi, r_lo, r_hi in self.plan:
            region = (..., *(slice(a, b) for a, b in zip(r_lo, r_hi)))
            delta, s = self._forward(x[region], params, context, r_lo, active[region])
            inner = (..., *(slice(a - r, b - r) for a, b, r in zip(c_lo, c_hi, r_lo)))
            out[(..., *(slice(a, b) for a, b in zip(c_lo, c_hi)))] = delta[inner]
            # field scalars come from the whole-field path: the same for every region
            scalars = s if scalars is None else scalars
        return out, (scalars if self.scalars_ok or len(self.plan) == 1 else None)


class ModelStepper:
    """A VoxelAutoRegressor + Normalizer as a stepper (full grid or tiled): normalizes the state,
    has the model predict over the grid's regions (_PlannedForward), denormalizes the change."""

    name = "model"

    def __init__(self, model, normalizer, device="cpu", tile=None, amp_dtype=None, crop=True):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.tile = tuple(tile) if tile else None
        self.crop = crop  # False: the local path on the whole grid (no crop_plan), for comparison
        # None = fp32; the caller's choice (precision.resolve: bf16 on a CPU only where it measured faster)
        self.amp_dtype = amp_dtype
        self.receptive_field = int(getattr(model, "receptive_field", 0))
        config = getattr(model, "config", None)
        self.context_factor = int(getattr(config, "context_factor", getattr(model, "context_factor", 4)))
        # a purely local model pools its scalar head over whatever it is given: per tile that is
        # not the field's value, so tiled rollouts of such models leave the scalars NaN
        self.tiled_scalars_ok = bool(getattr(config, "global_context", True))
        if self.tile and not self.tiled_scalars_ok:
            print("note: model without a whole-field path: field scalars are not predicted in tiled mode (NaN)")

    def start(self, sim):
        torch = self.torch
        self.static = sim["static"]
        self.active_np = self.static[ACTIVE_STATIC] > 0.5
        self.params_norm = torch.as_tensor(np.asarray(self.normalizer.normalize_params(sim["params_scalar"]), np.float32))
        self.t = 0  # input step of the next call to step()
        self.active = torch.as_tensor(self.active_np[None, None].astype(np.float32), device=self.device)
        # the static channels never change: normalize them once (same result as normalize_input)
        self.static_norm = torch.as_tensor(self.normalizer.normalize_static(self.static), dtype=torch.float32)
        from voxel_ode.training.dataset import producer_cells

        self.initial = self.static[list(schema.INITIAL_STATE_STATIC)]  # Pressure0, Temperature0
        self.producers = producer_cells(self.static)
        self.priors = priors_of(sim)
        self.plan = region_plan(self.active_np, self.model, self.receptive_field, self.tile, self.crop,
                                self.tiled_scalars_ok)
        self.predict = _PlannedForward(self.model, self.device, self.amp_dtype, self.context_factor, self.plan,
                                       self.tiled_scalars_ok)

    def step(self, state, prev_scalars):
        torch = self.torch
        from voxel_ode.training.dataset import prior_pair

        t = self.t
        dynamic = self.normalizer.normalize_dynamic(state, self.initial, prior_pair(self.priors, t))
        x = torch.cat([self.static_norm, dynamic.float()]) * torch.as_tensor(self.active_np)  # 0 at inactive cells
        x = x[None].to(self.device)
        params = self.normalizer.conditioning(self.params_norm, t)[None].to(self.device)
        self.t += 1
        with torch.no_grad():
            delta_norm, scalars_norm = self.predict(x, params, self.active)
        delta = np.asarray(self.normalizer.denormalize_delta(delta_norm[0].cpu().numpy()), np.float32)
        scalars = None
        if scalars_norm is not None:
            from voxel_ode.training.dataset import production_enthalpy_ratio

            # the producers' share of the change comes from the predicted temperature
            ratio = production_enthalpy_ratio(self.producers, state[1], state[1] + delta[1])
            scalars = self.normalizer.denormalize_scalars(scalars_norm[0].cpu().numpy(), prev_scalars, ratio)
            scalars = np.asarray(scalars, np.float64)
        return delta, scalars


def run_stepper(stepper, sim: dict, n_steps: int | None = None, progress=True, desc="rollout"):
    """Roll a stepper out from t = 0: returns (outputs_grid (T,2,Z,Y,X) f32, outputs_scalar (T,5) f64)."""
    if n_steps is None:
        n_steps = len(sim["outputs_grid"]) if "outputs_grid" in sim else schema.N_TIMESTEPS
    active = sim["static"][ACTIVE_STATIC] > 0.5
    state = initial_state(sim)
    grid = np.empty((n_steps,) + state.shape, np.float32)
    scalar = np.full((n_steps, schema.N_SCALARS), np.nan)
    grid[0] = state
    scalar[0] = initial_scalars(sim)  # the t = 0 report, or an estimate from the inputs
    stepper.start(sim)
    prev = scalar[0].copy()
    for t in tqdm(range(1, n_steps), desc=desc, disable=not progress, leave=False):
        delta, scalars = stepper.step(state, prev)
        # inactive cells keep their values: the change is applied to active cells only
        state = state.copy()
        state[:, active] += delta[:, active]
        grid[t] = state
        if scalars is not None:
            scalar[t] = scalars
            prev = scalar[t].copy()
    return grid, scalar


def rollout(model, normalizer, sim_arrays, device="cpu", tile=None, amp_dtype=None, progress=True, crop=True):
    """Predict a whole simulation from its initial state; physical units.

    ``sim_arrays``: dict with ``static`` (N_STATIC,Z,Y,X), ``params_scalar`` (26,),
    optionally ``outputs_grid`` (T,2,Z,Y,X) (its [0] is the initial state, its
    length the number of steps; without it Pressure0/Temperature0 and
    schema.N_TIMESTEPS) and ``outputs_scalar`` (T,5) (its [0] is copied to
    the predicted t = 0, else NaN). ``crop=False``: the local path on the whole grid, not
    cropped to the active cells (crop_plan; same result, for comparison). Returns (outputs_grid, outputs_scalar).
    """
    stepper = ModelStepper(model, normalizer, device=device, tile=tile, amp_dtype=amp_dtype, crop=crop)
    return run_stepper(stepper, sim_arrays, progress=progress)


# ---------------------------------------------------------------------------
# Linear per-voxel baseline
# ---------------------------------------------------------------------------
class LinearStepper:
    """Change of P and T at a voxel = W @ [normalized inputs, normalized params, 1]."""

    name = "linear"
    receptive_field = 0

    def __init__(self, weights: np.ndarray, normalizer):
        self.weights = np.asarray(weights, np.float64)  # (2, N_INPUT_CHANNELS + N_PARAMS + 1), physical change per feature
        self.normalizer = normalizer

    def start(self, sim):
        self.static = sim["static"]
        self.active = self.static[ACTIVE_STATIC] > 0.5
        self.params = np.asarray(self.normalizer.normalize_params(sim["params_scalar"]), np.float64)
        self.priors, self.t = priors_of(sim), 0

    def step(self, state, prev_scalars):
        from voxel_ode.training.dataset import prior_pair

        prior = prior_pair(self.priors, self.t)
        self.t += 1
        x = np.asarray(self.normalizer.normalize_input(self.static, state, prior), np.float64)[:, self.active]
        w_in = self.weights[:, : schema.N_INPUT_CHANNELS]
        const = self.weights[:, schema.N_INPUT_CHANNELS : -1] @ self.params + self.weights[:, -1]
        delta = np.zeros(state.shape, np.float32)
        delta[:, self.active] = (w_in @ x + const[:, None]).astype(np.float32)
        return delta, None  # no scalar model: scalars are NaN


LINEAR_RIDGE = 1.0  # ridge strength on z-scored features (see fit_linear_baseline)


def _linear_features(normalizer, static_flat, static_norm_flat, state, prior, params_norm, idx):
    """Rows [normalized inputs, normalized params, 1] at flat cell indices ``idx`` (all active);
    prior: the prior pair of the step (dataset.prior_pair)."""
    values = state.reshape(schema.N_DYNAMIC, -1)[:, idx][:, :, None, None]  # [2, n, 1, 1]: channel at dim -4
    initial = static_flat[list(schema.INITIAL_STATE_STATIC)][:, idx][:, :, None, None]
    prior = prior.reshape(prior.shape[0], -1)[:, idx][:, :, None, None]
    dyn = np.asarray(normalizer.normalize_dynamic(values, initial, prior), np.float64)[:, :, 0, 0]
    cols = np.vstack([static_norm_flat[:, idx], dyn]).T  # (n, 14)
    p = np.broadcast_to(params_norm, (len(idx), schema.N_PARAMS))
    return np.hstack([cols, p, np.ones((len(idx), 1))])


def fit_linear_baseline(prepped_root, stats, normalizer=None, split="train", cells_per_step=2000, seed=0,
                        ridge=LINEAR_RIDGE, save_path=None, progress=True) -> np.ndarray:
    """Ridge least-squares fit of the linear per-voxel model on a split's active cells, subsampled.

    For every simulation and step t -> t+1, ``cells_per_step`` random active
    cells give one row each. Returns weights (2, N_INPUT_CHANNELS + N_PARAMS + 1); saved as .npz when
    ``save_path`` is given (keys ``weights``, ``feature_names``).
    """
    from voxel_ode.training.dataset import Normalizer, prior_pair

    if normalizer is None:
        normalizer = Normalizer(stats)
    paths = sorted((Path(prepped_root) / split).glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: {split}/: no *{schema.PREPPED_SUFFIX} files to fit the linear baseline on")
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for path in tqdm(paths, desc="fit linear baseline", disable=not progress, leave=False):
        sim = load_prepped_sim(path)
        flat_active = np.flatnonzero(sim["static"][ACTIVE_STATIC].ravel() > 0.5)
        static_flat = sim["static"].reshape(schema.N_STATIC, -1)
        static_norm = np.asarray(normalizer.normalize_static(sim["static"]), np.float64).reshape(schema.N_STATIC, -1)
        params_norm = np.asarray(normalizer.normalize_params(sim["params_scalar"]), np.float64)
        grid = sim["outputs_grid"]
        for t in range(len(grid) - 1):
            idx = rng.choice(flat_active, size=min(cells_per_step, flat_active.size), replace=False)
            rows.append(_linear_features(normalizer, static_flat, static_norm, grid[t],
                                         prior_pair(sim["priors"], t), params_norm, idx))
            change = (grid[t + 1] - grid[t]).reshape(schema.N_DYNAMIC, -1)[:, idx].T
            targets.append(change.astype(np.float64))
    a, b = np.vstack(rows), np.vstack(targets)
    # Ridge, not plain least squares: the 26 params are constant within a simulation, so a
    # few training simulations leave them nearly collinear (and PermX/Y/Z are too); the
    # min-norm fit then uses huge opposing weights that blow up on a new simulation.
    # Features are z-scored, so one ridge strength fits all of them; the bias is not penalized.
    gram = a.T @ a / len(a)
    penalty = np.full(a.shape[1], float(ridge))
    penalty[-1] = 0.0
    if ridge > 0:
        weights = np.linalg.solve(gram + np.diag(penalty), a.T @ b / len(a)).T  # (2, features)
    else:  # plain (min-norm) least squares, for comparison
        weights = np.linalg.lstsq(a, b, rcond=None)[0].T
    if save_path is not None:
        names = np.array(list(schema.INPUT_CHANNELS) + list(schema.PARAM_NAMES) + ["bias"])
        with atomic_path(save_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, weights=weights, feature_names=names, stats_digest=stats_digest(stats),
                         ridge=float(ridge))
    return weights


def stats_digest(stats: dict) -> str:
    """Fingerprint of a stats dict: a saved linear baseline is reused only with the same normalization."""
    import hashlib

    return hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:16]


def load_linear_baseline(path, stats: dict | None = None) -> np.ndarray | None:
    """Weights from a .npz; None when ``stats`` is given and the file was fitted with other stats."""
    with np.load(path, allow_pickle=False) as data:
        if stats is not None and ("stats_digest" not in data or str(data["stats_digest"]) != stats_digest(stats)):
            return None
        return data["weights"]


# ---------------------------------------------------------------------------
# predictions.h5 and XDMF
# ---------------------------------------------------------------------------
def write_predictions(save_path, pred_grid, pred_scalar, active, attrs: dict, truth=None, xdmf=True,
                      cell_size=None):
    """Write predictions.h5 atomically (+ an XDMF next to it). ``truth``: (grid, scalar) or None;
    ``cell_size``: (dx, dy, dz) in m for the XDMF and the "cell_size_m" attribute (None: unknown)."""
    save_path = Path(save_path)
    with atomic_path(save_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("predicted/outputs_grid", data=np.asarray(pred_grid, np.float32))
            f.create_dataset("predicted/outputs_scalar", data=np.asarray(pred_scalar, np.float64))
            f.create_dataset("static/IsActive", data=(np.asarray(active) > 0.5).astype(np.uint8))
            if truth is not None:
                f.create_dataset("truth/outputs_grid", data=np.asarray(truth[0], np.float32))
                if truth[1] is not None:
                    f.create_dataset("truth/outputs_scalar", data=np.asarray(truth[1], np.float64))
            f.attrs["schema_version"] = schema.SCHEMA_VERSION
            f.attrs["grid_names"] = json.dumps(list(schema.DYNAMIC_NAMES))
            f.attrs["scalar_names"] = json.dumps(list(schema.SCALAR_NAMES))
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            if cell_size is not None:
                f.attrs["cell_size_m"] = json.dumps([float(v) for v in cell_size])
    if xdmf:
        from voxel_ode.inference.plots import write_xdmf

        write_xdmf(save_path, save_path.with_suffix(".xdmf"), cell_size=cell_size)
    return save_path


# ---------------------------------------------------------------------------
# Checkpoint, stats and the `rollout` command
# ---------------------------------------------------------------------------
ARCH_FLAGS = ("receptive_field_radius", "base_channels", "depth")


def check_arch_flags(args, model_config: dict, ckpt_path) -> None:
    """The architecture comes from the checkpoint; a flag that disagrees is a user error."""
    for name in ARCH_FLAGS:
        given = getattr(args, name, None)
        if given is None or name not in model_config:
            continue
        if int(given) != int(model_config[name]):
            raise UserError(
                f"{ckpt_path}: model_config.{name}: checkpoint has {model_config[name]}, --{name} says {given} "
                f"(the architecture is read from the checkpoint; drop the flag)"
            )


def resolve_stats(stats_path, ckpt: dict, ckpt_path) -> dict:
    """stats.json of the checkpoint; a --stats_path must agree with it in every field that changes
    the result (checks.RESULT_KEYS: normalization, transforms, change scales, cell size). Both are
    validated (finite, positive scales, known transforms, shapes)."""
    from voxel_ode.data import checks

    checks.check_checkpoint_stats(ckpt, ckpt_path)
    ckpt_stats = ckpt.get("stats")
    if stats_path is None:
        if ckpt_stats is None:
            raise UserError(f"{ckpt_path}: stats: checkpoint has no stats; pass --stats_path")
        return ckpt_stats
    try:
        stats = json.loads(Path(stats_path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{stats_path}: -: cannot read stats.json ({err})") from None
    checks.validate_stats(stats, stats_path)
    if ckpt_stats is not None:  # older checkpoints have no digest: a field-by-field comparison
        checks.check_same_stats(stats, stats_path, ckpt_stats, ckpt_path, ckpt.get("stats_digest"))
    return stats


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda: no CUDA device available")
    return name


def amp_dtype_for(amp: str | None, device: str):
    """--amp auto|bf16|fp16|none -> autocast dtype (None = fp32): precision.resolve, the choice training makes."""
    from voxel_ode.model import precision

    chosen = precision.resolve(amp, device)
    print(f"precision: {chosen.name} ({chosen.reason})")
    return chosen.dtype


def load_model_and_normalizer(ckpt_path, stats_path=None, device="cpu", args=None, stats_fallback=None):
    """(model on device, Normalizer, stats, model_config dict) from a checkpoint.

    The normalization is the checkpoint's (its stats and ``delta_mode``);
    ``stats_fallback`` (a stats.json path) is used only when the checkpoint has no stats.
    """
    from voxel_ode.training.dataset import Normalizer
    from voxel_ode.model.network import load_model

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        raise UserError(f"{ckpt_path}: -: no such checkpoint")
    model, ckpt = load_model(ckpt_path, map_location="cpu")  # weights_only=True; raises UserError
    config = dict(ckpt.get("model_config") or {})
    if args is not None:
        check_arch_flags(args, config, ckpt_path)
    if stats_path is None and ckpt.get("stats") is None and stats_fallback is not None:
        stats_path = stats_fallback
    stats = resolve_stats(stats_path, ckpt, ckpt_path)
    normalizer = Normalizer(stats, delta_mode=ckpt.get("delta_mode", "asinh"))
    return model.to(device).eval(), normalizer, stats, config


def add_rollout_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prepped_sim_path", help="simulation to roll out (prepped; a raw v2.4 file is detected too)")
    src.add_argument("--raw_sim_path", help="a raw v2.4 file, normalized with the checkpoint's stats")
    parser.add_argument("--stats_path", help="stats.json (default: the stats stored in the checkpoint; must agree)")
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--save_path", default="./predictions.h5",
                        help="predictions file to write (an .xdmf for ParaView goes next to it)")
    for name in ARCH_FLAGS:  # seed flags: accepted, checked against the checkpoint
        parser.add_argument(f"--{name}", type=int, default=None, help="checked against the checkpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    add_amp_arg(parser)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="run the local path in tiles of this size (halo = receptive field)")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG pictures here")
    parser.add_argument("--xdmf", action=argparse.BooleanOptionalAction, default=True,
                        help="write an XDMF next to predictions.h5 for ParaView")
    parser.add_argument("--save_truth", action="store_true", help="also copy the source's outputs into truth/")
    parser.add_argument("--fill_value", type=float, default=None, help="raw files: value marking inactive cells")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_rollout(args) -> int:
    device = pick_device(args.device)
    model, normalizer, stats, config = load_model_and_normalizer(args.ckpt_path, args.stats_path, device, args)
    amp = amp_dtype_for(args.amp, device)
    src = args.raw_sim_path or args.prepped_sim_path
    sim = load_sim(src, fill_value=args.fill_value, desc=description_of(stats))  # as prep derived them
    print(f"receptive field: {model.receptive_field} cells (tile halo)" + (f", tiles {tuple(args.tile)}" if args.tile else ""))
    t0 = time.perf_counter()
    grid, scalar = rollout(model, normalizer, sim, device=device, tile=args.tile, amp_dtype=amp,
                           progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"{len(grid) - 1} steps on {grid.shape[2:]} in {dt:.1f} s ({dt / max(1, len(grid) - 1):.2f} s/step, {device})")
    truth = None
    if args.save_truth and "outputs_grid" in sim:
        truth = (sim["outputs_grid"], sim.get("outputs_scalar"))
    attrs = {
        "checkpoint": str(Path(args.ckpt_path).resolve()),
        "stats": str(Path(args.stats_path).resolve()) if args.stats_path else "checkpoint",
        "source": str(Path(src).resolve()),
        "model_config": json.dumps(config),
        "receptive_field": int(model.receptive_field),
        "tile": json.dumps(list(args.tile) if args.tile else None),
        "device": device,
        # frame t = t years after the start; frame 0 is the initial state (a simulator whose first
        # report is the end of year 1 has its report r at frame r + 1)
        "times_years": json.dumps(list(range(len(grid)))),
        "first_report": str(sim.get("first_report", "initial")),
    }
    from voxel_ode.inference.plots import cell_size_of

    write_predictions(args.save_path, grid, scalar, sim["static"][ACTIVE_STATIC], attrs, truth=truth, xdmf=args.xdmf,
                      cell_size=cell_size_of(sim, stats))
    print(f"wrote {args.save_path}")
    if args.plots:
        if "outputs_grid" not in sim:
            print("note: --plots needs the source's outputs (truth); skipped")
        else:
            from voxel_ode.inference import plots

            plots.plot_simulation(args.plots, sim, {"model": (grid, scalar)}, stats)
            print(f"wrote pictures to {args.plots}")
    return 0


# ---------------------------------------------------------------------------
# Evaluation over a split
# ---------------------------------------------------------------------------
def evaluate_sim(sim: dict, preds: dict, stats: dict, tol_pressure, tol_temperature) -> dict:
    """{method: {"grid": {var: {metric: (T,)}}, "scalar": {...}}} for one simulation."""
    active = sim["static"][ACTIVE_STATIC]
    out = {}
    for method, (grid, scalar) in preds.items():
        entry = {"grid": M.grid_metrics(grid, sim["outputs_grid"], active, stats["dynamic"]["std"],
                                        tol_pressure, tol_temperature)}
        if "outputs_scalar" in sim and not np.all(np.isnan(scalar[1:])):
            entry["scalar"] = M.scalar_metrics(scalar, sim["outputs_scalar"], stats.get("scalars"))
        out[method] = entry
    return out


# rows of the summary table: (label, group, variable or None = mean over scalars, metric)
TABLE_ROWS = (
    ("rel. change error P", "grid", "Pressure", "rel_change_err"),
    ("rel. change error T", "grid", "Temperature", "rel_change_err"),
    ("acc +/-tol P", "grid", "Pressure", "acc_abs"),
    ("acc +/-tol T", "grid", "Temperature", "acc_abs"),
    ("acc +/-5% P", "grid", "Pressure", "acc_pct"),
    ("acc +/-5% T", "grid", "Temperature", "acc_pct"),
    ("acc +/-5% scalars", "scalar", None, "acc_pct"),
    ("rel. error scalars", "scalar", None, "rel_err"),
    ("norm. MSE P", "grid", "Pressure", "mse_norm"),
    ("norm. MSE T", "grid", "Temperature", "mse_norm"),
)


def summarize(per_sim: dict) -> dict:
    """Average over simulations of each metric at the last step and over steps t >= 1."""
    methods = sorted({m for sim in per_sim.values() for m in sim}, key=["model", "persistence", "linear"].index)
    summary = {}
    for method in methods:
        summary[method] = {}
        for label, group, var, metric in TABLE_ROWS:
            vals = {"last": [], "mean": []}
            for sim in per_sim.values():
                entry = sim.get(method, {}).get(group)
                if entry is None:
                    continue
                names = [var] if var else list(entry)
                s = M.summarize_steps({n: {metric: entry[n][metric]} for n in names if metric in entry[n]})
                for key in vals:
                    vals[key].extend(s[n][metric][key] for n in s)
            summary[method][label] = {k: M.finite_mean(v) for k, v in vals.items()}
    return summary


def format_table(summary: dict, tol_pressure=schema.DEFAULT_PRESSURE_TOL_PA,
                 tol_temperature=schema.DEFAULT_TEMPERATURE_TOL_K) -> str:
    """The summary as a text table, with a legend of its columns and rows."""
    methods = list(summary)
    head = f"{'metric':<22}" + "".join(f"{m + ' last':>18}{m + ' mean':>18}" for m in methods)
    lines = [head, "-" * len(head)]
    for label, *_ in TABLE_ROWS:
        row = f"{label:<22}"
        for m in methods:
            for key in ("last", "mean"):
                v = summary[m][label][key]
                ok = v is not None and math.isfinite(v)  # None = NaN in the JSON-ready summary
                row += f"{v:>18.4g}" if ok else f"{'-':>18}"
        lines.append(row)
    lines += [
        "last: at the last step; mean: over steps 1..T-1; both averaged over the simulations",
        "rel. change error: ||pred - true|| / ||true - true(t=0)|| over active cells (persistence = 1, lower is better)",
        f"acc +/-tol: share of active cells within {tol_pressure:g} Pa (P) or {tol_temperature:g} K (T) of the truth;"
        " +/-5%: within 5% of the true value (scalars: the 5 field scalars, averaged)",
        "norm. MSE: squared error divided by the variable's variance in stats.json",
    ]
    return "\n".join(lines)


def write_step_csv(path, per_sim: dict) -> None:
    """One row per (simulation, method, variable, step) with every metric."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            cols = sorted(set(M.GRID_METRICS) | set(M.SCALAR_METRICS))
            w.writerow(["sim", "method", "variable", "step", *cols])
            for sim_name, methods in per_sim.items():
                for method, groups in methods.items():
                    for group in groups.values():
                        for var, mets in group.items():
                            n = len(next(iter(mets.values())))
                            for t in range(n):
                                vals = [mets[c][t] if c in mets else "" for c in cols]
                                w.writerow([sim_name, method, var, t, *vals])


def evaluate(prepped_root, ckpt_path, out_dir, split="test", device="cpu", tile=None, amp="auto", plots=True,
             linear_baseline=False, linear_baseline_path=None, tol_pressure=schema.DEFAULT_PRESSURE_TOL_PA,
             tol_temperature=schema.DEFAULT_TEMPERATURE_TOL_K, save_predictions=True, xdmf=True,
             max_sims=None, progress=True) -> dict:
    """Roll out every simulation of ``split`` with the model and baselines; returns the summary dict.

    Writes ``out_dir/metrics.json`` ({"summary", "per_sim", "config"}),
    ``metrics_per_step.csv``, ``predictions/<run>.h5`` (+ .xdmf) and, with
    ``plots``, ``plots/<run>/*.png`` and ``plots/error_curves.png``.
    """
    out_dir = Path(out_dir)
    prepped_root = Path(prepped_root)
    model, normalizer, stats, config = load_model_and_normalizer(
        ckpt_path, None, device, stats_fallback=prepped_root / schema.STATS_FILE)
    amp_dtype = amp_dtype_for(amp, device)
    paths = sorted((prepped_root / split).glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: {split}/: no *{schema.PREPPED_SUFFIX} files")
    paths = paths[:max_sims] if max_sims else paths
    steppers = [ModelStepper(model, normalizer, device=device, tile=tile, amp_dtype=amp_dtype), PersistenceStepper()]
    if linear_baseline:
        lin_path = Path(linear_baseline_path) if linear_baseline_path else out_dir / "linear_baseline.npz"
        weights = load_linear_baseline(lin_path, stats) if lin_path.exists() else None
        if weights is None:  # none yet, or fitted with other stats: (re)fit on the train split
            weights = fit_linear_baseline(prepped_root, stats, normalizer, save_path=lin_path, progress=progress)
        steppers.append(LinearStepper(weights, normalizer))
    print(f"receptive field: {model.receptive_field} cells; {len(paths)} {split} simulations")
    per_sim, timings = {}, []
    for path in tqdm(paths, desc=f"evaluate {split}", disable=not progress):
        sim = load_prepped_sim(path)
        name = path.name[: -len(schema.PREPPED_SUFFIX)]
        preds = {}
        for stepper in steppers:
            t0 = time.perf_counter()
            preds[stepper.name] = run_stepper(stepper, sim, progress=False)
            if stepper.name == "model":
                timings.append((time.perf_counter() - t0) / max(1, len(sim["outputs_grid"]) - 1))
        per_sim[name] = evaluate_sim(sim, preds, stats, tol_pressure, tol_temperature)
        if save_predictions:
            attrs = {"checkpoint": str(Path(ckpt_path).resolve()), "stats": "checkpoint",
                     "source": str(path.resolve()), "model_config": json.dumps(config),
                     "receptive_field": int(model.receptive_field), "device": device}
            from voxel_ode.inference.plots import cell_size_of

            write_predictions(out_dir / "predictions" / f"{name}.h5", *preds["model"], sim["static"][ACTIVE_STATIC],
                              attrs, truth=(sim["outputs_grid"], sim.get("outputs_scalar")), xdmf=xdmf,
                              cell_size=cell_size_of(sim, stats))
        if plots:
            from voxel_ode.inference import plots as P

            P.plot_simulation(out_dir / "plots" / name, sim, preds, stats, per_sim[name])
    summary = summarize(per_sim)
    print(format_table(summary, tol_pressure, tol_temperature))
    report = {
        "summary": summary,
        "per_sim": per_sim,
        "config": {"checkpoint": str(ckpt_path), "split": split, "tile": list(tile) if tile else None,
                   "tol_pressure": tol_pressure, "tol_temperature": tol_temperature, "device": device,
                   "model_seconds_per_step": M.finite_mean(timings)},
    }
    write_json_atomic(out_dir / "metrics.json", M.to_jsonable(report))
    write_step_csv(out_dir / "metrics_per_step.csv", per_sim)
    if plots:
        from voxel_ode.inference import plots as P

        P.plot_error_curves(per_sim, out_dir / "plots" / "error_curves.png")
    return M.to_jsonable(summary)


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prepped_root", required=True, help="output folder of prep (stats.json, train/, test/)")
    parser.add_argument("--ckpt_path", required=True, help="trained model (a .pt written by train)")
    parser.add_argument("--split", default="test", choices=schema.SPLITS, help="simulations to roll out and score")
    parser.add_argument("--out", default="./evaluation",
                        help="folder for metrics.json, metrics_per_step.csv, predictions/ and plots/")
    parser.add_argument("--plots", action="store_true", help="write PNG pictures under OUT/plots")
    parser.add_argument("--linear_baseline", action="store_true",
                        help="also fit (or load OUT/linear_baseline.npz) and score a linear per-voxel model")
    parser.add_argument("--linear_baseline_path", default=None,
                        help="where the linear baseline's weights are kept (default: OUT/linear_baseline.npz)")
    parser.add_argument("--tol_pressure", type=float, default=schema.DEFAULT_PRESSURE_TOL_PA,
                        help="Pa: a cell counts as right in the 'acc +/-tol P' row when this close to the truth")
    parser.add_argument("--tol_temperature", type=float, default=schema.DEFAULT_TEMPERATURE_TOL_K,
                        help="K: the same for the 'acc +/-tol T' row")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    add_amp_arg(parser)
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="run the local path in tiles of this size (default: the whole grid at once)")
    parser.add_argument("--no_predictions", action="store_true", help="do not write predictions/*.h5")
    parser.add_argument("--xdmf", action=argparse.BooleanOptionalAction, default=True,
                        help="write an XDMF next to each predictions file for ParaView")
    parser.add_argument("--max_sims", type=int, default=None,
                        help="evaluate only the first N simulations of the split (default: all)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run_evaluate(args) -> int:
    evaluate(args.prepped_root, args.ckpt_path, args.out, split=args.split, device=pick_device(args.device),
             tile=args.tile, amp=args.amp, plots=args.plots, linear_baseline=args.linear_baseline,
             linear_baseline_path=args.linear_baseline_path, tol_pressure=args.tol_pressure,
             tol_temperature=args.tol_temperature, save_predictions=not args.no_predictions, xdmf=args.xdmf,
             max_sims=args.max_sims, progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
