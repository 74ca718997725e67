"""The training loss: one module whose forward runs the whole K-step unroll, so DDP sees one
forward per backward even when the model is applied K times.

The seed's "MSE for grids + MSE for scalars, weighted equally": masked MSE over active cells of
the normalized change of (P, T) plus MSE of the normalized field scalars. The scalars are only
trained where they are well-posed: when the model has a whole-field path, or on full-grid
samples. ``rollout_grad`` pushforward detaches each step's input (gradients never flow through
earlier steps, the pushforward trick); full backpropagates through the whole unroll.
"""

from __future__ import annotations

import torch

from voxel_ode import schema
from voxel_ode.model import step
from voxel_ode.model.precision import Precision
from voxel_ode.training.batches import context_of

def masked_channel_mse(pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-channel MSE over active cells of [B,C,D,H,W] tensors -> [C]."""
    m = (active > 0.5).to(pred.dtype)
    se = ((pred - target) ** 2 * m).sum(dim=(0, 2, 3, 4))
    return se / m.sum().clamp_min(1.0)


PRESSURE_OUT = schema.OUTPUT_CHANNELS.index("Pressure")


PRESSURE_CHANGE_IN = schema.channel_index("PressureChange")


def pressure_since_start(delta, target, x, true_so_far):
    """Swap the pressure channel of (prediction, target) [B,2,...] for asinh(change since t = 0 / s_P).

    x: the step's input (its PressureChange channel is the change so far, the model's own after
    the first unrolled step); true_so_far: the true (P - P0) / s_P at the input step.
    Returns (prediction, target, true change / s_P at the next step).
    """
    p, c = PRESSURE_OUT, PRESSURE_CHANGE_IN
    true_next = true_so_far + torch.sinh(target[:, p:p + 1])
    pred_next = torch.sinh(x[:, c:c + 1].float()) + torch.sinh(delta[:, p:p + 1])
    delta = torch.cat([delta[:, :p], torch.asinh(pred_next), delta[:, p + 1:]], dim=1)
    target = torch.cat([target[:, :p], torch.asinh(true_next), target[:, p + 1:]], dim=1)
    return delta, target, true_next


class Unroll(torch.nn.Module):
    """Applies the model for K steps and returns the training loss and its parts."""

    def __init__(self, model: torch.nn.Module, normalizer, train_scalars: bool, precision: Precision):
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.train_scalars = train_scalars
        self.precision = precision
        # With the priors each step sets the pressure change since t = 0, so the pressure loss
        # compares that (asinh-scaled) instead of the step's increment: an error of the prior's
        # gain then weighs what it does in a rollout, and the small yearly increments after the
        # first year no longer make the pressure term dwarf the temperature term.
        self.pressure_since_start = sets_change_since_start(model.config)

    def forward(self, batch: dict, k_steps: int, detach_between: bool):
        x, active, params = batch["x"], batch["active"], batch["params"]
        t = batch["t"]
        context = context_of(batch)
        grid_losses, scalar_losses = [], []
        true_so_far = torch.sinh(x[:, PRESSURE_CHANGE_IN:PRESSURE_CHANGE_IN + 1].float())  # true (P - P0) / s_P
        for k in range(k_steps):
            delta, scalars = step.predict(self.model, x, params, active, self.precision, **context)
            pred, target = delta, batch["target_delta"][:, k]
            if self.pressure_since_start:
                pred, target, true_so_far = pressure_since_start(pred, target, x, true_so_far)
            grid_losses.append(masked_channel_mse(pred, target, active))
            scalar_losses.append(((scalars - batch["target_scalars"][:, k]) ** 2).mean(dim=0))
            if k + 1 < k_steps:  # feed the model its own prediction, one step later
                prior = batch["priors"][:, k + 1:k + 3].flatten(1, 2)  # the pair of step k + 1
                x = self.normalizer.update_input(x, delta.detach() if detach_between else delta, active, prior)
                params = self.normalizer.conditioning(params[:, :-1], t + k + 1)
        grid = torch.stack(grid_losses).mean(dim=0)  # [2]
        scalar = torch.stack(scalar_losses).mean(dim=0)  # [5]
        # the seed: MSE for grids + MSE for scalars, weighted equally. Without a trained
        # scalar path the term is multiplied by 0 (keeps every parameter in the graph for DDP).
        loss = grid.mean() + (scalar.mean() if self.train_scalars else 0.0 * scalar.sum())
        return loss, grid.detach(), scalar.detach()


def sets_change_since_start(config) -> bool:
    """Whether the model's pressure step sets the change since t = 0 (the priors)."""
    return bool(config.priors)
