"""Fit the pressure mix head to the training runs before the network trains.

The model's pressure prediction starts from a mix of the well responses (model.response_mix):
sum_k a_k r_k + c sum_k h_k d_k, with the weights from the params and time only. That mix is a
small regression (27 inputs -> 3 numbers per run and year) whose loss over whole runs is exact
and cheap: with per-run Gram matrices of the response channels, the relative error of the mixed
change since t = 0 needs no grid at all. Fitted this way (full batch, every training run and
year, the rollout metric itself as the loss), the head alone left 0.10 of the year-29 pressure
change on the fidelity test runs; learned by the network's training steps (batches of 4, one
year at a time, next to the residual), the same head left 0.14 after 50 minutes
(docs/benchmarks.md, "Mix heads"). train() runs this first and then keeps the head fixed; the
network learns the residual around it.

With the pressure prior (model.ModelConfig.pressure_prior, the default) the pressure step no
longer uses the mix, but the head's point u still places the front mix on the support scale
(model.front_weights), so the fit still runs: the responses are the data that locate a run's
support.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.model import params_l1

S = schema.STATIC_NAMES
MIX_NAMES = schema.RESPONSE_NAMES + schema.COLD_RESPONSE_NAMES  # the model's pressure_mix_weights order


def pressure_mix_terms(path, normalizer) -> dict:
    """What the mix's error on one prepped run needs, per input step t (target step t + 1):
    gram [2K, 2K] = B^T B, cross [T-1, 2K] = B^T change, norm2 [T-1] = ||change||^2 over the
    active cells (B: the mix channels in Pa, change: pressure(t + 1) - pressure(0)), and the
    conditioning [T-1, 27]. float64: the sums reach ~1e20 Pa^2."""
    with h5py.File(path, "r") as f:
        static = f[schema.PREPPED_STATIC]
        active = static[S.index("IsActive")] > 0.5
        basis = np.stack([static[S.index(n)][active] for n in MIX_NAMES], 1).astype(np.float64)
        pressure = f[schema.PREPPED_OUTPUTS_GRID]
        p0 = pressure[0, 0][active].astype(np.float64)
        change = np.stack([pressure[t, 0][active] - p0 for t in range(1, pressure.shape[0])], 1)
        params = f[schema.PREPPED_PARAMS][:]
    params_norm = normalizer.normalize_params(params)
    return {"gram": torch.from_numpy(basis.T @ basis), "cross": torch.from_numpy(basis.T @ change).T,
            "norm2": torch.from_numpy((change ** 2).sum(0)),
            "conditioning": torch.stack([normalizer.conditioning(params_norm, t) for t in range(change.shape[1])])}


def stack_terms(runs: list[dict]) -> dict:
    """One row per (run, input step) with a change to match; rows without one (no wells) are left out."""
    rows = {"run": [], "last": [], "cross": [], "norm2": [], "conditioning": []}
    for i, run in enumerate(runs):
        keep = run["norm2"] > 0
        rows["run"].append(torch.full((int(keep.sum()),), i))
        rows["last"].append((torch.arange(len(keep)) == len(keep) - 1)[keep])
        for key in ("cross", "norm2", "conditioning"):
            rows[key].append(run[key][keep])
    out = {key: torch.cat(v) for key, v in rows.items()}
    out["gram"] = torch.stack([run["gram"] for run in runs])[out["run"]]  # [rows, 2K, 2K]
    return out


def mix_rel_errors(weights: torch.Tensor, terms: dict) -> torch.Tensor:
    """[rows] ||mix - change|| / ||change|| of each (run, step) row with these mix weights
    ([rows, 2K]: model.pressure_mix_weights of the rows' conditioning)."""
    w = weights.double()
    sq = torch.einsum("nk,nkl,nl->n", w, terms["gram"], w) - 2 * (w * terms["cross"]).sum(1) + terms["norm2"]
    return torch.sqrt(sq.clamp_min(0) / terms["norm2"])


def fit_pressure_mix(model, paths, normalizer, iters: int = 3000, l1: float = 0.02, lr: float = 3e-3,
                     grad_clip: float = 1.0, progress: bool = True) -> dict:
    """Train model.response_head alone on the runs in ``paths``: full-batch AdamW on the mean
    squared relative error of the mixed change plus ``l1`` x the |weights| of the head's first
    layer over the params columns (model.params_l1; the time column is free).
    Returns the mean relative error at the last step before and after."""
    from tqdm import tqdm

    runs = [pressure_mix_terms(p, normalizer) for p in
            tqdm(list(paths), desc="mix fit: read", unit="run", disable=not progress, leave=False)]
    if not runs:
        raise ValueError("fit_pressure_mix: no runs")
    return {"runs": len(runs), **fit_head(model, stack_terms(runs), iters, l1, lr, grad_clip, progress)}


def fit_head(model, terms: dict, iters: int = 3000, l1: float = 0.02, lr: float = 3e-3, grad_clip: float = 1.0,
             progress: bool = False, run_weights: torch.Tensor | None = None) -> dict:
    """fit_pressure_mix on terms already read and stacked (stack_terms). ``run_weights`` [runs]:
    how much each run counts in the loss (e.g. bootstrap counts; benchmarks/mix_cv.py), 1 by default."""
    from tqdm import tqdm

    head, cond, last = model.response_head, terms["conditioning"], terms["last"]
    if run_weights is None:
        run_weights = torch.ones(int(terms["run"].max()) + 1)
    row_weights = run_weights.double()[terms["run"]]
    row_weights = row_weights / row_weights.sum()
    was_training = head.training
    head.train()
    with torch.no_grad():
        before = mix_rel_errors(model.pressure_mix_weights(cond), terms)[last].mean().item()
    optimizer = torch.optim.AdamW(head.parameters(), lr, weight_decay=1e-2)
    for _ in tqdm(range(iters), desc="mix fit", disable=not progress, leave=False):
        loss = (row_weights * mix_rel_errors(model.pressure_mix_weights(cond), terms) ** 2).sum() + l1 * params_l1(head)
        optimizer.zero_grad()
        loss.backward()
        if grad_clip > 0:  # without it a rare Adam step blew a head up (docs/benchmarks.md, "Mix heads")
            torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no stale gradients in the network's clipping later
    head.train(was_training)
    with torch.no_grad():
        after = mix_rel_errors(model.pressure_mix_weights(cond), terms)[last].mean().item()
    return {"last_step_error_before": before, "last_step_error_after": after}


def train_files(prepped_root) -> list[Path]:
    return sorted((Path(prepped_root) / "train").glob(f"*{schema.PREPPED_SUFFIX}"))
