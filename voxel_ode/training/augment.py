"""XY augmentations, as sequences of three primitive operations on the last two axes (Y, X):
"flip_y", "flip_x", "transpose". A 90 degree turn (np.rot90 with axes (Y, X)) is flip_x followed
by transpose; a transpose swaps the X and Y permeability channels (the seed's rotations did not).
Never along Z: gravity points there."""

from __future__ import annotations

import torch

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
