"""Patch origins and the patch index (``index_{split}.jsonl``: one line per run, step and patch).

On the full 326x70x76 grid, 32^3 patches at stride 8 give 38 x 6 x 7 = 1,596 origins per run
and step (the last origin on each axis is snapped to the far edge, so the whole grid is covered).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from voxel_ode import schema
from voxel_ode import files
from voxel_ode.utils import UserError

DEFAULT_PATCH = (32, 32, 32)


DEFAULT_STRIDE = (8, 8, 8)


DEFAULT_MIN_ACTIVE_FRAC = 0.05


# ---------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------
def axis_origins(n: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis: 0, s, 2s, ... and the last one snapped to ``n - p``.

    The patch is clipped to the axis length when the axis is shorter than it.
    """
    p = min(patch, n)
    starts = list(range(0, n - p + 1, stride))
    if starts[-1] != n - p:  # cover the far edge too
        starts.append(n - p)
    return starts


def effective_patch(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
    return tuple(min(int(p), int(n)) for p, n in zip(patch, shape))


def patch_origins(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int]]:
    """All (z0, y0, x0) patch origins, z outermost. 326x70x76, 32^3, stride 8 -> 38*6*7 = 1596."""
    zs, ys, xs = (axis_origins(n, p, s) for n, p, s in zip(shape, patch, stride))
    return [(z, y, x) for z in zs for y in ys for x in xs]


def patch_active_fractions(mask: np.ndarray, patch, stride) -> tuple[np.ndarray, np.ndarray]:
    """(origins (N, 3) int, active fraction (N,)) for every patch origin, from a 3D summed-area table."""
    pz, py, px = effective_patch(mask.shape, patch)
    starts = [np.array(axis_origins(n, p, s)) for n, p, s in zip(mask.shape, patch, stride)]
    sat = np.zeros(tuple(n + 1 for n in mask.shape), np.int64)
    sat[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    z0, y0, x0 = starts
    z1, y1, x1 = z0 + pz, y0 + py, x0 + px

    def s(a, b, c):
        return sat[np.ix_(a, b, c)]

    count = (s(z1, y1, x1) - s(z0, y1, x1) - s(z1, y0, x1) - s(z1, y1, x0)
             + s(z0, y0, x1) + s(z0, y1, x0) + s(z1, y0, x0) - s(z0, y0, x0))
    grid = np.stack(np.meshgrid(z0, y0, x0, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid, count.reshape(-1) / float(pz * py * px)


def write_index(path: Path, sims: list[tuple[str, dict]], min_active_frac: float, patch) -> int:
    """One line per (sim, t, kept patch); returns the number of lines."""
    n_lines = 0
    with files.atomic_path(path) as tmp, open(tmp, "w", buffering=1 << 20) as out:
        for rel, s in sims:
            pz, py, px = effective_patch(s["grid"], patch)
            keep = s["active_fracs"] >= min_active_frac
            # The patch part of each line is the same for every t: format it once per sim.
            tails = [f'"z0": {z}, "z1": {z + pz}, "y0": {y}, "y1": {y + py}, "x0": {x}, "x1": {x + px}, '
                     f'"active_frac": {round(float(a), 4)}}}\n'
                     for (z, y, x), a in zip(s["origins"][keep].tolist(), s["active_fracs"][keep])]
            head = '{"sim_path": ' + json.dumps(rel) + ', "t": '
            for t in range(s["n_timesteps"] - 1):
                prefix = f"{head}{t}, "
                out.writelines(prefix + tail for tail in tails)
                n_lines += len(tails)
    return n_lines


def read_index(root, split: str) -> tuple[list[str], np.ndarray]:
    """(run paths relative to root, rows (run, t, z0, z1, y0, y1, x0, x1)) of a split's index."""
    path = Path(root) / schema.INDEX_FILE.format(split=split)
    if not path.is_file():
        raise UserError(f"{path}: {path.name}: file not found (run `voxel-ode prep` first)")
    sims: dict[str, int] = {}
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                sim = sims.setdefault(e["sim_path"], len(sims))
                rows.append((sim, e["t"], e["z0"], e["z1"], e["y0"], e["y1"], e["x0"], e["x1"]))
            except (ValueError, KeyError) as err:
                raise UserError(f"{path}: line {line_no}: bad patch entry ({err})") from None
    if not rows:
        raise UserError(f"{path}: {path.name}: no patches")
    return list(sims), np.asarray(rows, np.int64)
