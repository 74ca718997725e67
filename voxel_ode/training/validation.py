"""Validation during training: one-step errors on a fixed subset of the test split, the number
that picks the best checkpoint. (Whole rollouts and their metrics are inference's ``evaluate``.)"""

from __future__ import annotations

import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.metrics import within_abs, within_pct
from voxel_ode.model import step
from voxel_ode.model.precision import Precision
from voxel_ode.training.batches import context_of, to_device
from voxel_ode.training.distributed import Dist
from voxel_ode.training.loss import PRESSURE_CHANGE_IN, pressure_since_start, sets_change_since_start

@torch.no_grad()
def validate(model, loader, normalizer, device, precision: Precision, ddp: Dist, eval_scalars: bool) -> dict:
    """Masked MSE in normalized space, the seed's +/-5% accuracy and +/-5 bar / 5 K accuracy (physical).

    The MSE compares what the training loss compares: with the priors, the pressure
    change since t = 0 (asinh-scaled); the "no change" baseline is then the change so far.
    """
    since_start = sets_change_since_start(getattr(model, "module", model).config)
    model.eval()
    nd, ns = schema.N_DYNAMIC, schema.N_SCALARS
    sums = torch.zeros(4 * nd + 1 + 2 * ns + 1, dtype=torch.float64, device=device)
    tol = torch.tensor([schema.DEFAULT_PRESSURE_TOL_PA, schema.DEFAULT_TEMPERATURE_TOL_K], dtype=torch.float64,
                       device=device).reshape(1, nd, 1, 1, 1)
    for batch in loader:
        batch = to_device(batch, device)
        delta, scalars = step.predict(model, batch["x"], batch["params"], batch["active"], precision,
                                      **context_of(batch))
        target, active = batch["target_delta"][:, 0], batch["active"]
        m = (active > 0.5).double()
        n_active = m.sum()
        pred_cmp, target_cmp, no_change = delta, target, torch.zeros_like(delta)
        if since_start:
            so_far = torch.sinh(batch["x"][:, PRESSURE_CHANGE_IN:PRESSURE_CHANGE_IN + 1].float())
            pred_cmp, target_cmp, _ = pressure_since_start(delta, target, batch["x"], so_far)
            no_change, _, _ = pressure_since_start(no_change, target, batch["x"], so_far)
        err2 = ((pred_cmp - target_cmp).double() ** 2 * m).sum(dim=(0, 2, 3, 4))
        persist2 = ((no_change - target_cmp).double() ** 2 * m).sum(dim=(0, 2, 3, 4))  # "no change" baseline
        # physical next state: state(t) + change, at active cells
        state = normalizer.denormalize_state(batch["x"][:, schema.STATE_CHANNELS])
        true_next = state + normalizer.denormalize_delta(target)
        pred_next = state + normalizer.denormalize_delta(delta)
        acc_pct = (within_pct(pred_next, true_next).double() * m).sum(dim=(0, 2, 3, 4))
        acc_abs = (within_abs(pred_next, true_next, tol).double() * m).sum(dim=(0, 2, 3, 4))
        s_err2 = ((scalars - batch["target_scalars"][:, 0]).double() ** 2).sum(dim=0)
        prev = batch["scalars_prev"].double()
        ratio = batch["production_ratio"][:, 0]
        s_true = normalizer.denormalize_scalars(batch["target_scalars"][:, 0], prev, ratio)
        s_pred = normalizer.denormalize_scalars(scalars, prev, ratio)
        s_acc = within_pct(s_pred, s_true).double().sum(dim=0)
        n_samples = torch.tensor([float(len(scalars))], dtype=torch.float64, device=device)
        sums += torch.cat([err2, persist2, acc_pct, acc_abs, n_active.reshape(1), s_err2, s_acc, n_samples])
    ddp.all_reduce_sum(sums)
    parts = sums.split([nd, nd, nd, nd, 1, ns, ns, 1])
    n_act, n_smp = max(parts[4].item(), 1.0), max(parts[7].item(), 1.0)
    out = {}
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        out[f"mse_{name}"] = parts[0][c].item() / n_act
        out[f"persist_mse_{name}"] = parts[1][c].item() / n_act
        out[f"acc5pct_{name}"] = parts[2][c].item() / n_act
        out[f"acc_abs_{name}"] = parts[3][c].item() / n_act
    for j, name in enumerate(schema.SCALAR_NAMES):
        out[f"mse_{name}"] = parts[5][j].item() / n_smp
        out[f"acc5pct_{name}"] = parts[6][j].item() / n_smp
    grid = np.mean([out[f"mse_{n}"] for n in schema.DYNAMIC_NAMES])
    scal = np.mean([out[f"mse_{n}"] for n in schema.SCALAR_NAMES])
    # same weighting as the training loss: the scalar term only where it is trained
    out["loss"] = float(grid + (scal if eval_scalars else 0.0))
    out["samples"] = int(n_smp)
    model.train()
    return out
