"""Autoregressive rollout of a whole simulation: from the initial state t = 0, predict t = 1..T-1
on the full grid, feeding each predicted Pressure/Temperature back in.

The model predicts the normalized change (model.step.predict); it is denormalized and added to
ACTIVE cells only, so inactive cells keep their values for the whole rollout. Scalars at t = 0
are not predicted: they are a copy of the source's t = 0 values when it has outputs, an estimate
from the inputs otherwise (``initial_scalars``). The cumulative FieldEnergyProductionTotal is
predicted as a per-step increment and summed. Where the local path runs (whole grid, tiles, the
active cells' boxes) is regions.py's; the baselines (baselines.py) roll out through the same
``run_stepper``.
"""

from __future__ import annotations


import h5py
import numpy as np
import torch
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data import pack, prepped, raw, start_scalars
from voxel_ode.data.description import Description
from voxel_ode.inference.regions import PlannedForward, region_plan
from voxel_ode.model import precision as precisions
from voxel_ode.model.features import prior_pair, producer_cells, production_enthalpy_ratio
from voxel_ode.model.precision import Precision
from voxel_ode.utils import UserError


def load_raw_sim(path, fill_value=None, desc: Description | None = None) -> dict:
    """A raw v2.4 file -> the same arrays prep would write (mask, units, time origin, derived channels).

    Prep logic is not re-implemented here: pack.prepare_arrays validates and packs the file in
    memory. ``desc``: the dataset description prep used (Stats.description).
    """
    sim = dict(pack.prepare_arrays(path, fill_value=fill_value, desc=desc))
    sim["source"] = str(path)
    return sim


def load_sim(path, fill_value=None, desc: Description | None = None, n_reports: int = schema.N_TIMESTEPS) -> dict:
    """Prepped or raw v2.4 file, told apart by layout; a raw file with Input/ only is a forecast's
    start (pack.prepare_forecast), of ``n_reports`` reports from t = 0."""
    path = files.regular_file(path)
    try:
        with h5py.File(path, "r") as f:
            is_raw, forecast = schema.INPUT_GROUP in f, schema.INPUT_GROUP in f and not raw.has_outputs(f)
    except OSError as err:
        raise UserError(f"{path}: -: cannot open as HDF5 ({err})") from None
    if forecast:
        return pack.prepare_forecast(path, desc or Description(), n_reports, fill_value)
    return load_raw_sim(path, fill_value, desc) if is_raw else prepped.load_prepped_sim(path)


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


def initial_scalars(sim: dict, start_enthalpy: dict | None = None) -> np.ndarray:
    """(5,) field scalars at t = 0: outputs_scalar[0], else an estimate from the inputs
    (start_scalars.estimate by ``start_enthalpy``, what prep fitted on the training runs' reports;
    None: the prescribed rates and c_w (T - 273.15) in W)."""
    if "outputs_scalar" in sim and np.all(np.isfinite(sim["outputs_scalar"][0])):
        return np.asarray(sim["outputs_scalar"][0], np.float64).copy()
    return start_scalars.estimate(sim["static"], start_enthalpy, sim.get("delivered_rates"))


class ModelStepper:
    """A VoxelAutoRegressor + Normalizer as a stepper (full grid or tiled): normalizes the state,
    has the model predict over the grid's regions (regions.PlannedForward), denormalizes the change."""

    name = "model"

    def __init__(self, model, normalizer, device="cpu", tile=None, precision: Precision = precisions.FP32,
                 crop=True):
        self.model = model.eval()
        self.normalizer = normalizer
        self.start_enthalpy = normalizer.stats.get(start_scalars.KEY)  # how the field scalars start and go on
        self.device = torch.device(device)
        if tile is not None and (len(tile) != 3 or min(int(v) for v in tile) < 1):
            raise UserError(f"--tile: needs three sizes of at least 1 cell (Z Y X), got {list(tile)}")
        self.tile = tuple(int(v) for v in tile) if tile else None
        self.crop = crop  # False: the local path on the whole grid (no crop_plan), for comparison
        # the caller's choice (precision.resolve: bf16 on a CPU only where it measured faster)
        self.precision = precision
        self.receptive_field = int(getattr(model, "receptive_field", 0))
        config = getattr(model, "config", None)
        self.context_factor = int(getattr(config, "context_factor", getattr(model, "context_factor", 4)))
        # a purely local model pools its scalar head over whatever it is given: per tile that is
        # not the field's value, so tiled rollouts of such models leave the scalars NaN
        self.tiled_scalars_ok = bool(getattr(config, "global_context", True))
        if self.tile and not self.tiled_scalars_ok:
            print("note: model without a whole-field path: field scalars are not predicted in tiled mode (NaN)")

    def start(self, sim):
        self.static = sim["static"]
        self.active_np = self.static[schema.STATIC_ACTIVE] > 0.5
        self.params_norm = torch.as_tensor(np.asarray(self.normalizer.normalize_params(sim["params_scalar"]), np.float32))
        self.t = 0  # input step of the next call to step()
        self.active = torch.as_tensor(self.active_np[None, None].astype(np.float32), device=self.device)
        # the static channels never change: normalize them once (same result as normalize_input)
        self.static_norm = torch.as_tensor(self.normalizer.normalize_static(self.static), dtype=torch.float32)
        self.producers = producer_cells(self.static)
        self.priors = priors_of(sim)
        # where the training runs' reports follow the priors' delivered water rates (wells held at a
        # limit), the field's water rates are those, not the model's (data/start_scalars.py)
        follows = (self.start_enthalpy or {}).get("rates_after_start") == "delivered"
        self.delivered = sim.get("delivered_rates") if follows else None
        self.plan = region_plan(self.active_np, self.model, self.receptive_field, self.tile, self.crop,
                                self.tiled_scalars_ok)
        self.predict = PlannedForward(self.model, self.device, self.precision, self.context_factor, self.plan,
                                      self.tiled_scalars_ok)

    def step(self, state, prev_scalars):
        t = self.t
        x = self.normalizer.normalize_input(self.static, state, prior_pair(self.priors, t), self.active_np,
                                            self.static_norm)
        x = x[None].to(self.device)
        params = self.normalizer.conditioning(self.params_norm, t)[None].to(self.device)
        self.t += 1
        with torch.no_grad():
            delta_norm, scalars_norm = self.predict(x, params, self.active)
        delta = np.asarray(self.normalizer.denormalize_delta(delta_norm[0].cpu().numpy()), np.float32)
        scalars = None
        if scalars_norm is not None:
            # the producers' share of the change comes from the predicted temperature
            ratio = production_enthalpy_ratio(self.producers, state[1], state[1] + delta[1])
            scalars = self.normalizer.denormalize_scalars(scalars_norm[0].cpu().numpy(), prev_scalars, ratio)
            scalars = np.asarray(scalars, np.float64)
            if self.delivered is not None and t + 1 < len(self.delivered):
                scalars = start_scalars.follow_delivered(scalars, prev_scalars, self.delivered[t + 1])
        return delta, scalars


def run_stepper(stepper, sim: dict, n_steps: int | None = None, progress=True, desc="rollout"):
    """Roll a stepper out from t = 0: returns (outputs_grid (T,2,Z,Y,X) f32, outputs_scalar (T,5) f64)."""
    if n_steps is None:  # as many as the truth has, else as the priors (a forecast's), else the schema's
        n_steps = len(sim["outputs_grid"]) if "outputs_grid" in sim else \
            len(sim["priors"]) if "priors" in sim else schema.N_TIMESTEPS
    active = sim["static"][schema.STATIC_ACTIVE] > 0.5
    state = initial_state(sim)
    grid = np.empty((n_steps,) + state.shape, np.float32)
    scalar = np.full((n_steps, schema.N_SCALARS), np.nan)
    grid[0] = state
    # the t = 0 report, or an estimate from the inputs in the training data's enthalpy convention
    scalar[0] = initial_scalars(sim, getattr(stepper, "start_enthalpy", None))
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


def rollout(model, normalizer, sim_arrays, device="cpu", tile=None, precision: Precision = precisions.FP32,
            progress=True, crop=True):
    """Predict a whole simulation from its initial state; physical units.

    ``sim_arrays``: dict with ``static`` (N_STATIC,Z,Y,X), ``params_scalar`` (26,),
    optionally ``outputs_grid`` (T,2,Z,Y,X) (its [0] is the initial state, its
    length the number of steps; without it Pressure0/Temperature0 and
    schema.N_TIMESTEPS) and ``outputs_scalar`` (T,5) (its [0] is copied to
    the predicted t = 0, else an estimate from the inputs). ``crop=False``: the local path on the whole grid, not
    cropped to the active cells (crop_plan; same result, for comparison). Returns (outputs_grid, outputs_scalar).
    """
    stepper = ModelStepper(model, normalizer, device=device, tile=tile, precision=precision, crop=crop)
    return run_stepper(stepper, sim_arrays, progress=progress)


