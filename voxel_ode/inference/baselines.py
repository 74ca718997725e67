"""The baselines a model is scored against: persistence (nothing changes) and a per-voxel linear model.

The linear baseline predicts the physical change of P and T at a voxel as W @ [normalized inputs,
normalized params, 1], fitted by ridge least squares on subsampled active cells of the train split
(one-step targets) and rolled out like the model; it has no notion of time, so it cannot follow a
large first-year transient that then decays, and its rollouts drift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data import prepped
from voxel_ode.data.stats import Stats
from voxel_ode.inference.rollout import priors_of
from voxel_ode.model.features import Normalizer, prior_pair
from voxel_ode.utils import UserError

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
        self.active = self.static[schema.STATIC_ACTIVE] > 0.5
        self.params = np.asarray(self.normalizer.normalize_params(sim["params_scalar"]), np.float64)
        self.priors, self.t = priors_of(sim), 0

    def step(self, state, prev_scalars):
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
    prior: the prior pair of the step (features.prior_pair)."""
    values = state.reshape(schema.N_DYNAMIC, -1)[:, idx][:, :, None, None]  # [2, n, 1, 1]: channel at dim -4
    initial = static_flat[list(schema.INITIAL_STATE_STATIC)][:, idx][:, :, None, None]
    prior = prior.reshape(prior.shape[0], -1)[:, idx][:, :, None, None]
    dyn = np.asarray(normalizer.normalize_dynamic(values, initial, prior), np.float64)[:, :, 0, 0]
    cols = np.vstack([static_norm_flat[:, idx], dyn]).T  # (n, 14)
    p = np.broadcast_to(params_norm, (len(idx), schema.N_PARAMS))
    return np.hstack([cols, p, np.ones((len(idx), 1))])


def fit_linear_baseline(prepped_root, stats: Stats, normalizer=None, split="train", cells_per_step=2000, seed=0,
                        ridge=LINEAR_RIDGE, save_path=None, progress=True) -> np.ndarray:
    """Ridge least-squares fit of the linear per-voxel model on a split's active cells, subsampled.

    For every simulation and step t -> t+1, ``cells_per_step`` random active
    cells give one row each. Returns weights (2, N_INPUT_CHANNELS + N_PARAMS + 1); saved as .npz when
    ``save_path`` is given (keys ``weights``, ``feature_names``).
    """
    if normalizer is None:
        normalizer = Normalizer(stats)
    paths = sorted((Path(prepped_root) / split).glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: {split}/: no *{schema.PREPPED_SUFFIX} files to fit the linear baseline on")
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for path in tqdm(paths, desc="fit linear baseline", disable=not progress, leave=False):
        sim = prepped.load_prepped_sim(path)
        flat_active = np.flatnonzero(sim["static"][schema.STATIC_ACTIVE].ravel() > 0.5)
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
        with files.atomic_path(save_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, weights=weights, feature_names=names, stats_digest=stats.digest,
                         ridge=float(ridge))
    return weights


def load_linear_baseline(path, stats: Stats | None = None) -> np.ndarray | None:
    """Weights from a .npz; None when ``stats`` is given and the file was fitted with other stats."""
    with np.load(path, allow_pickle=False) as data:
        if stats is not None and ("stats_digest" not in data or str(data["stats_digest"]) != stats.digest):
            return None
        return data["weights"]
