"""Where a rollout step computes the model's local path: the whole grid, tiles, or the boxes that
hold the active cells.

``--tile Z Y X`` runs the local path tile by tile with a halo of ``model.receptive_field``
cells, so the result equals the full-grid one; the whole-field context (coarse, small) is
computed once per step on the whole grid and passed to every tile with the tile's origin. Tiles
without an active cell are skipped: only active cells are ever updated, so their change is unused.

Without ``--tile`` the local path still skips what has no active cell: a model that zeroes its
features at inactive cells (the default) computes the same values at active cells on the
bounding box of the active cells as on the whole grid, so the grid is cut into the cheapest set
of such boxes (one, or slabs along an axis, each with the halo its neighbours need; ``crop_plan``,
``auto_plan``). A 15 %-active grid then costs a fraction of a full one.
"""

from __future__ import annotations

import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.model import step
from voxel_ode.model.precision import Precision

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


class PlannedForward:
    """The model's normalized prediction for a whole grid: in one pass, or region by region
    (``plan``, see crop_plan) with the whole-field context computed once and shared."""

    def __init__(self, model, device, precision: Precision, context_factor: int, plan, scalars_ok: bool):
        self.model, self.device, self.precision = model, device, precision
        self.context_factor, self.plan, self.scalars_ok = context_factor, plan, scalars_ok

    def _forward(self, x, params, context, origin, active):
        origin = torch.as_tensor([origin], dtype=torch.long)  # [1, 3], in the whole grid's frame
        return step.predict(self.model, x, params, active, self.precision, context=context, origin=origin)

    def __call__(self, x, params, active):
        """Normalized change (1, 2, Z, Y, X) and normalized scalars (1, 5) for the whole grid."""
        context = step.whole_field_context(self.model, x, params, active, self.precision, self.context_factor)
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
