"""One model step: the forward pass that training's unroll, training's validation and an
inference rollout all run, under the run's one autocast (precision.Precision).

Each caller then advances its own state: training in normalized space (Normalizer.update_input,
differentiable through the unroll), a rollout in physical units (the predicted change added to
the active cells, the next input normalized from that state like a sample of real data).
"""

from __future__ import annotations

import torch

from voxel_ode.model.network import coarsen
from voxel_ode.model.precision import Precision


def predict(model, x, params, active, precision: Precision, **context) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized change of (P, T) [B, 2, ...], normalized field scalars [B, 5]), both float32.
    ``context``: the whole-field context arguments of VoxelAutoRegressor.forward."""
    with precision.autocast():
        delta, scalars = model(x, params, active, **context)
    return delta.float(), scalars.float()


def whole_field_context(model, x, params, active, precision: Precision, factor: int):
    """The whole-field path's context of a whole grid x, pooled by ``factor`` (None for a purely
    local model): computed once per step and shared by every region a rollout computes the local
    path on."""
    if getattr(model, "compute_context", None) is None:
        return None
    x_coarse, active_coarse = coarsen(x, active, factor)
    with precision.autocast():
        return model.compute_context(x_coarse, params, active_coarse)
