"""Pictures are written, slices mask inactive cells, and the XDMF points at real datasets."""

import json
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from test_rollout import GRID, N_T, prepped_arrays
from fixtures import DESCRIPTION
from voxel_ode import schema
from voxel_ode.inference import plots
from voxel_ode.inference import predictions
from voxel_ode.data.description import Description


CELL_SIZE = (100.0, 50.0, 10.0)  # dx, dy, dz in m


def _write(tmp_path, truth=True, cell_size=CELL_SIZE):
    sim = prepped_arrays(seed=3)
    pred = sim["outputs_grid"] + 1.0
    path = predictions.write_predictions(
        tmp_path / "predictions.h5", pred, sim["outputs_scalar"], sim["static"][1], {"source": "x"},
        truth=(sim["outputs_grid"], sim["outputs_scalar"]) if truth else None, xdmf=True, cell_size=cell_size)
    return sim, pred, path


def _node_coordinates(grid):
    geo = grid.find("Geometry")
    assert geo.get("GeometryType") == "VXVYVZ"
    return [np.array(item.text.split(), float) for item in geo.findall("DataItem")]


def _resolve(xdmf_dir, text):
    fname, dset = text.strip().split(":")
    return xdmf_dir / fname, dset


def test_xdmf_is_valid_and_points_at_existing_datasets(tmp_path):
    _, _, h5 = _write(tmp_path)
    xdmf = h5.with_suffix(".xdmf")
    root = ET.parse(xdmf).getroot()  # raises if not well-formed XML
    assert root.tag == "Xdmf" and root.get("Version") == "3.0"
    collection = root.find("Domain/Grid")
    assert collection.get("CollectionType") == "Temporal"
    steps = collection.findall("Grid")
    assert len(steps) == N_T
    assert [float(g.find("Time").get("Value")) for g in steps] == list(range(N_T))
    nz, ny, nx = GRID
    n_checked = 0
    with h5py.File(h5) as f:
        for t, grid in enumerate(steps):
            topo = grid.find("Topology")
            assert topo.get("TopologyType") == "3DRectMesh"
            assert topo.get("Dimensions") == f"{nz + 1} {ny + 1} {nx + 1}"  # nodes, for cell data
            # metres from the cell sizes; z is the elevation below the top: depth points down
            vx, vy, vz = _node_coordinates(grid)
            np.testing.assert_array_equal(vx, np.arange(nx + 1) * CELL_SIZE[0])
            np.testing.assert_array_equal(vy, np.arange(ny + 1) * CELL_SIZE[1])
            np.testing.assert_array_equal(vz, -np.arange(nz + 1) * CELL_SIZE[2])
            names = {a.get("Name") for a in grid.findall("Attribute")}
            assert names == {"Pressure", "Temperature", "TruePressure", "TrueTemperature", "IsActive"}
            for attr in grid.findall("Attribute"):
                assert attr.get("Center") == "Cell"
                item = attr.find("DataItem")
                if item.get("ItemType") == "HyperSlab":
                    assert item.get("Dimensions") == f"{nz} {ny} {nx}"
                    sel, src = item.findall("DataItem")
                    start, stride, count = np.array(sel.text.split(), int).reshape(3, 5)
                    _, dset = _resolve(tmp_path, src.text)
                    ds = f[dset]
                    assert tuple(int(v) for v in src.get("Dimensions").split()) == ds.shape
                    assert start[0] == t and tuple(count[2:]) == GRID and np.all(stride == 1)
                    channel = schema.DYNAMIC_NAMES.index(attr.get("Name").removeprefix("True"))
                    assert start[1] == channel
                else:
                    fname, dset = _resolve(tmp_path, item.text)
                    assert fname.exists()
                    assert tuple(int(v) for v in item.get("Dimensions").split()) == f[dset].shape == GRID
                n_checked += 1
    assert n_checked == N_T * 5


def test_xdmf_without_cell_sizes_says_it_uses_unit_spacing(tmp_path):
    _write(tmp_path, cell_size=None)
    root = ET.parse(tmp_path / "predictions.xdmf").getroot()
    assert "unit spacing" in root.find("Domain/Information").get("Value")
    vx, vy, vz = _node_coordinates(root.find("Domain/Grid/Grid"))
    nz, ny, nx = GRID
    np.testing.assert_array_equal(vz, -np.arange(nz + 1.0))
    np.testing.assert_array_equal(vx, np.arange(nx + 1.0))
    # the cell sizes are kept in predictions.h5 and found there when the XDMF is rewritten
    _, _, h5 = _write(tmp_path)
    assert json.loads(h5py.File(h5)["/"].attrs["cell_size_m"]) == list(CELL_SIZE)
    predictions.write_xdmf(h5)
    root = ET.parse(tmp_path / "predictions.xdmf").getroot()
    assert root.find("Domain/Information") is None
    np.testing.assert_array_equal(_node_coordinates(root.find("Domain/Grid/Grid"))[2],
                                  -np.arange(nz + 1) * CELL_SIZE[2])


def test_xdmf_without_truth_has_only_predictions(tmp_path):
    _write(tmp_path, truth=False)
    root = ET.parse(tmp_path / "predictions.xdmf").getroot()
    names = {a.get("Name") for a in root.iter("Attribute")}
    assert names == {"Pressure", "Temperature", "IsActive"}


def test_injector_cell_is_largest_positive_rate():
    sim = prepped_arrays()
    static = sim["static"].copy()
    inj = schema.STATIC_NAMES.index("InjRate")
    static[inj, 4, 2, 3] = 99.0
    assert plots.injector_cell(static) == (4, 2, 3)
    static[inj] = -1.0  # producers only: fall back to the centre
    assert plots.injector_cell(static) == tuple(n // 2 for n in GRID)


def test_pictures_are_written_and_inactive_cells_blank(tmp_path, monkeypatch):
    sim = prepped_arrays(seed=1)
    pred = sim["outputs_grid"] + 1.0
    shown, extents, labels = [], [], []
    real_imshow = plots.plt.Axes.imshow

    def spy(self, img, *a, **k):
        shown.append(img)
        extents.append(k.get("extent"))
        labels.append(self)  # labelled after imshow: read below
        return real_imshow(self, img, *a, **k)

    monkeypatch.setattr(plots.plt.Axes, "imshow", spy)
    files = plots.plot_simulation(tmp_path, sim, {"model": (pred, sim["outputs_scalar"]),
                                                  "persistence": (np.repeat(sim["outputs_grid"][:1], N_T, 0),
                                                                  sim["outputs_scalar"])}, steps=[2],
                                  desc=Description.from_dict(DESCRIPTION))
    assert [f.name for f in files] == ["slices_step02.png", "scalars.png", "error_curves.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    z, y, x = plots.injector_cell(sim["static"])
    inactive_zx = sim["static"][1][:, y, :] < 0.5
    assert len(shown) == 12  # 2 variables x 2 sections x (truth, prediction, error)
    assert np.array_equal(np.ma.getmaskarray(shown[0]), inactive_zx)  # truth, Z-X: inactive = masked
    # error panels: pred - truth over active cells, pressure shown in bar (1 Pa = 1e-5 bar), temperature in K
    np.testing.assert_allclose(shown[2].compressed(), 1e-5, rtol=1e-3)
    np.testing.assert_allclose(shown[8].compressed(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(shown[0].compressed(), sim["outputs_grid"][2, 0][:, y, :][~inactive_zx] * 1e-5)
    # axes in metres from the run's cell sizes; depth grows downwards (row 0 = the top)
    dx, dy, dz = (float(sim["params_scalar"][schema.PARAM_NAMES.index(n)]) for n in ("CellSizeX", "CellSizeY", "CellSizeZ"))
    assert plots.cell_size_of(sim, Description.from_dict(DESCRIPTION)) == pytest.approx((dx, dy, dz))
    assert plots.cell_size_of(sim, Description()) is None  # nothing declared: cells, not metres
    fitted = dict(DESCRIPTION, calibrated={"CellSizeX": "calibrated", "CellSizeY": "calibrated",
                                           "CellSizeZ": "calibrated"})
    assert plots.cell_size_of(sim, Description.from_dict(fitted)) is None  # fitted sizes are not drawn as metres
    nz, ny, nx = GRID
    assert extents[0] == pytest.approx((0, nx * dx, nz * dz, 0))  # Z-X section
    assert extents[3] == pytest.approx((0, nx * dx, ny * dy, 0))  # X-Y section
    assert (labels[0].get_xlabel(), labels[0].get_ylabel()) == ("X (m)", "depth (m)")


def test_scalar_pictures_show_energy_in_mw_and_tj(tmp_path, monkeypatch):
    sim = prepped_arrays(seed=1)
    lines, labels = [], []
    real_plot, real_ylabel = plots.plt.Axes.plot, plots.plt.Axes.set_ylabel

    def spy_plot(self, y, *a, **k):
        lines.append(np.asarray(y))
        return real_plot(self, y, *a, **k)

    def spy_ylabel(self, label, *a, **k):
        labels.append(label)
        return real_ylabel(self, label, *a, **k)

    monkeypatch.setattr(plots.plt.Axes, "plot", spy_plot)
    monkeypatch.setattr(plots.plt.Axes, "set_ylabel", spy_ylabel)
    plots.plot_scalars(sim["outputs_scalar"], {"model": sim["outputs_scalar"] * 2}, tmp_path / "s.png")
    assert labels == ["MW", "MW", "TJ", "kg/s", "kg/s"]  # schema.SCALAR_NAMES order
    truth = np.asarray(sim["outputs_scalar"], np.float64)
    for i, factor in enumerate((1e-6, 1e-6, 1e-12, 1.0, 1.0)):  # truth, then the model, per scalar
        np.testing.assert_allclose(lines[2 * i], truth[:, i] * factor)
        np.testing.assert_allclose(lines[2 * i + 1], 2 * truth[:, i] * factor)


def test_scalar_panels_do_not_magnify_tiny_drifts(tmp_path, monkeypatch):
    # a rate constant within 1e-4 must look flat: the panel spans >= MIN_SCALAR_SPAN of the value
    axes_seen = []
    real_save = plots._save

    def keep_axes(fig, path):
        axes_seen.extend(fig.axes)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_axes)
    scalars = np.full((N_T, len(schema.SCALAR_NAMES)), 31.4)
    drifting = scalars * (1 + 1e-4 * np.arange(N_T))[:, None]
    plots.plot_scalars(scalars, {"model": drifting}, tmp_path / "s.png")
    for ax, name in zip(axes_seen, schema.SCALAR_NAMES):
        lo, hi = ax.get_ylim()
        shown = 31.4 * plots.display_unit(name)[1]
        assert lo < shown < hi and hi - lo >= plots.MIN_SCALAR_SPAN * shown * 0.999
        assert not ax.yaxis.get_major_formatter().get_useOffset()


def test_a_forecast_picture_scales_to_the_forecast_too(tmp_path, monkeypatch):
    """Without truth the middle panel is compared with the initial state: its colour scale spans
    both, so a plume colder than any initial cell is not clipped to the scale's end."""
    sim = prepped_arrays(seed=1)
    forecast = {k: v for k, v in sim.items() if k not in ("outputs_grid", "outputs_scalar")}
    pred = np.repeat(sim["outputs_grid"][:1], N_T, 0)
    pred[2, 1] -= 50.0  # 50 K colder everywhere at step 2
    scales = []
    real_imshow = plots.plt.Axes.imshow

    def spy(self, img, *a, **k):
        scales.append((k.get("vmin"), k.get("vmax"), img))
        return real_imshow(self, img, *a, **k)

    monkeypatch.setattr(plots.plt.Axes, "imshow", spy)
    plots.plot_slices(forecast, pred, tmp_path / "s.png", step=2)
    vmin, vmax, shown = scales[7]  # temperature, Z-X section, the forecast
    initial = scales[6][2]
    assert vmin == pytest.approx(float(shown.min())) and vmax == pytest.approx(float(initial.max()))
    assert vmin < float(initial.min()) - 40.0 and scales[6][:2] == (vmin, vmax)  # one scale for both panels
