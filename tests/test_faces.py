"""faces.ActiveFaces: the cell numbering, face list and transmissibilities synth and the priors share."""

import numpy as np
import pytest

from voxel_ode.physics.faces import ActiveFaces


def test_faces_join_active_neighbours_with_harmonic_transmissibility():
    active = np.ones((2, 1, 3), bool)
    active[1, 0, 2] = False  # 5 active cells, numbered in C order
    f = ActiveFaces(active, (10.0, 20.0, 2.0))  # dx, dy, dz
    assert f.n == 5 and f.volume == 400.0 and list(f.cells) == [0, 1, 2, 3, 4]
    # Z faces first (cell above, cell below), then X; none across Y (one row)
    assert list(zip(f.a, f.b, f.face_axis)) == [(0, 3, 0), (1, 4, 0), (0, 1, 2), (1, 2, 2), (3, 4, 2)]
    k = np.array([1.0, 4.0, 1.0, 1.0, 0.0])
    t = f.transmissibility([k, k, k])
    assert t[0] == pytest.approx(200.0 / (1.0 / 1.0 + 1.0 / 1.0))  # Z: area dx dy, half-spacing dz / 2
    assert t[2] == pytest.approx(40.0 / (5.0 / 1.0 + 5.0 / 4.0))  # X: area dy dz, half-spacing dx / 2
    assert t[1] == 0.0 and t[4] == 0.0  # an impermeable cell closes its faces
    # open sides: inactive neighbours and the box's edges
    assert list(f.boundary_cells(2, 1)) == [2, 4]  # 2: box edge, 4: inactive neighbour
    assert list(f.boundary_cells(2, 1, box_only=True)) == [2]
    assert list(f.boundary_cells(0, -1)) == [0, 1, 2] and list(f.boundary_cells(0, 1)) == [2, 3, 4]
    assert f.to_grid(np.arange(5.0))[1, 0].tolist() == [3.0, 4.0, 0.0]
