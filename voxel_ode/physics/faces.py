"""The active cells of a structured (Z, Y, X) grid and the faces between them, for two-point
flux (TPFA) discretisations: the one numbering, face list and transmissibility formula that
synth's simulator (``synth.simulator._Mesh``) and the physics priors (``physics.priors._Faces``) build
on, so that the priors see the same faces and transmissibilities as the synthetic runs.
"""

from __future__ import annotations

import numpy as np


def lateral_side(grid) -> np.ndarray:
    """(Z, Y, X) bool: the cells on the box's lateral sides (first or last along Y or X), where a
    dataset's lateral boundary (closed, side storage, support) acts."""
    _, y, x = np.indices(grid)
    return (x == 0) | (x == grid[2] - 1) | (y == 0) | (y == grid[1] - 1)


def _halves(axis):
    """Index tuples of all cells but the last (lo) and all but the first (hi) along ``axis``."""
    lo, hi = [slice(None)] * 3, [slice(None)] * 3
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    return tuple(lo), tuple(hi)


class ActiveFaces:
    """Active cells numbered 0..n-1 in C order, and the faces between neighbouring active cells:
    all Z faces, then Y, then X (``face_axis``); face i joins cells ``a[i]`` and ``b[i]``, b the
    next cell along the axis (deeper for Z)."""

    def __init__(self, active, cell_size):
        dx, dy, dz = (float(v) for v in cell_size)
        self.grid = tuple(active.shape)
        self.volume = dx * dy * dz
        self.axes = ((dz, dx * dy), (dy, dx * dz), (dx, dy * dz))  # (spacing, face area) across Z, Y, X
        self.cells = np.flatnonzero(active.ravel())  # flat index of each active cell
        self.n = self.cells.size
        local = np.full(active.size, -1, np.int64)
        local[self.cells] = np.arange(self.n)
        self.local = local.reshape(self.grid)  # local number of every grid cell, -1 if inactive
        a, b, axis_of = [], [], []
        for axis in range(3):
            lo, hi = _halves(axis)
            la, lb = self.local[lo], self.local[hi]
            face = (la >= 0) & (lb >= 0)
            a.append(la[face])
            b.append(lb[face])
            axis_of.append(np.full(int(face.sum()), axis))
        self.a, self.b, self.face_axis = np.concatenate(a), np.concatenate(b), np.concatenate(axis_of)

    def transmissibility(self, perm_zyx):
        """Per face, A / (d/2 / k_a + d/2 / k_b) in m^3 (harmonic mean permeability); ``perm_zyx``:
        the permeabilities across Z, Y and X of the active cells (three arrays of n). 0 where a k is 0."""
        spacing = np.array([s for s, _ in self.axes])[self.face_axis]
        area = np.array([s for _, s in self.axes])[self.face_axis]
        k = np.stack([np.asarray(v) for v in perm_zyx])
        half = 0.5 * spacing
        with np.errstate(divide="ignore"):
            return area / (half / k[self.face_axis, self.a] + half / k[self.face_axis, self.b])

    def boundary_cells(self, axis, side, box_only=False) -> np.ndarray:
        """Local numbers (C order) of the active cells whose neighbour across ``axis`` on ``side``
        (-1: the lower index, +1: the higher) is no active cell: an inactive one or outside the
        box; with ``box_only`` only outside the box."""
        lo, hi = _halves(axis)
        neighbour = np.full(self.grid, -2, np.int64)  # -2: outside the box, -1: inactive
        if side == -1:
            neighbour[hi] = self.local[lo]
        else:
            neighbour[lo] = self.local[hi]
        open_face = (self.local >= 0) & ((neighbour == -2) if box_only else (neighbour < 0))
        return self.local[open_face]

    def to_grid(self, values) -> np.ndarray:
        """Values of the active cells on the (Z, Y, X) grid, 0 elsewhere."""
        out = np.zeros(self.grid, np.asarray(values).dtype)
        out.ravel()[self.cells] = values
        return out
