"""``predictions.h5`` and its ParaView XDMF: the one place that writes a rollout's output.

    predicted/outputs_grid   (T, 2, Z, Y, X) float32  Pa, K
    predicted/outputs_scalar (T, 5)          float64  schema.SCALAR_NAMES, physical units
    predicted/band_low, band_high (T, 2, Z, Y, X) float32  uncertainty band (inference/bands.py),
    predicted/band_width     (T, 2, Z, Y, X) float32  band_high - band_low (ParaView shows it)
    predicted/scalar_band_low, scalar_band_high (T, 5) float64   only with a bands file; root
                                                      attr band_coverage (e.g. 0.9)
    static/IsActive          (Z, Y, X)       uint8    the mask the rollout used
    truth/outputs_grid, truth/outputs_scalar          only with --save_truth and a source with outputs
    root attrs: checkpoint, stats, source, model_config (JSON), receptive_field, tile, device,
    schema_version, times_years, first_report, cell_size_m (where known)

The XDMF is an Xdmf3 temporal collection of 3D rectilinear grids in metres (depth pointing down:
Z index 0 at the top) whose cell-centred attributes are hyperslabs of predictions.h5 (no data
copied).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

from voxel_ode import files, schema

# ---------------------------------------------------------------------------
# predictions.h5 and XDMF
# ---------------------------------------------------------------------------
def write_predictions(save_path, pred_grid, pred_scalar, active, attrs: dict, truth=None, xdmf=True,
                      cell_size=None, bands=None):
    """Write predictions.h5 atomically (+ an XDMF next to it). ``truth``: (grid, scalar) or None;
    ``cell_size``: (dx, dy, dz) in m for the XDMF and the "cell_size_m" attribute (None: unknown);
    ``bands``: bands.apply's dict plus "coverage", or None."""
    save_path = Path(save_path)
    with files.atomic_path(save_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("predicted/outputs_grid", data=np.asarray(pred_grid, np.float32))
            f.create_dataset("predicted/outputs_scalar", data=np.asarray(pred_scalar, np.float64))
            if bands is not None:
                _write_bands(f, bands)
            f.create_dataset("static/IsActive", data=(np.asarray(active) > 0.5).astype(np.uint8))
            if truth is not None:
                f.create_dataset("truth/outputs_grid", data=np.asarray(truth[0], np.float32))
                if truth[1] is not None:
                    f.create_dataset("truth/outputs_scalar", data=np.asarray(truth[1], np.float64))
            f.attrs["schema_version"] = schema.SCHEMA_VERSION
            f.attrs["grid_names"] = json.dumps(list(schema.DYNAMIC_NAMES))
            f.attrs["scalar_names"] = json.dumps(list(schema.SCALAR_NAMES))
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            if cell_size is not None:
                f.attrs["cell_size_m"] = json.dumps([float(v) for v in cell_size])
    if xdmf:
        write_xdmf(save_path, save_path.with_suffix(".xdmf"), cell_size=cell_size)
    return save_path


def _write_bands(f, bands: dict) -> None:
    low, high = np.asarray(bands["low"], np.float32), np.asarray(bands["high"], np.float32)
    f.create_dataset("predicted/band_low", data=low)
    f.create_dataset("predicted/band_high", data=high)
    f.create_dataset("predicted/band_width", data=high - low)
    if bands.get("scalar_low") is not None:
        f.create_dataset("predicted/scalar_band_low", data=np.asarray(bands["scalar_low"], np.float64))
        f.create_dataset("predicted/scalar_band_high", data=np.asarray(bands["scalar_high"], np.float64))
    f.attrs["band_coverage"] = float(bands["coverage"])


# ---------------------------------------------------------------------------
# ParaView
# ---------------------------------------------------------------------------
def _data_item(parent, text, dims, fmt="XML", **attrs):
    item = ET.SubElement(parent, "DataItem", Dimensions=" ".join(map(str, dims)), Format=fmt, **attrs)
    item.text = text
    return item


def _hyperslab(parent, h5_name, dataset, full_shape, t, channel):
    """Cell attribute = one (t, channel) 3D block of a (T, C, Z, Y, X) dataset."""
    nz, ny, nx = full_shape[2:]
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Dimensions=f"{nz} {ny} {nx}", Type="HyperSlab")
    # rows: start, stride, count over the 5 dimensions
    _data_item(slab, f"{t} {channel} 0 0 0  1 1 1 1 1  1 1 {nz} {ny} {nx}", (3, 5))
    _data_item(slab, f"{h5_name}:/{dataset}", full_shape, fmt="HDF", NumberType="Float", Precision="4")


def write_xdmf(h5_path, xdmf_path=None, cell_size=None) -> Path:
    """XDMF next to predictions.h5: a time series of the predicted (and, if stored, true) P and T
    (and, where the file has bands, their widths: PressureBandWidth, TemperatureBandWidth).

    Z Y X cells -> a 3DRectMesh of (Z+1, Y+1, X+1) nodes with Center="Cell"
    attributes, in metres: x and y grow with the index from 0, z is the elevation
    below the grid's top (0, -dz, -2 dz, ...), so depth points down and Z index 0 is
    at the top. ``cell_size`` is (dx, dy, dz) in m; by default the file's
    "cell_size_m" attribute (written by write_predictions), else 1 m cells
    (the XDMF then says so in an Information element). The h5 file is referenced by
    its name, so the pair can be moved together.
    """
    h5_path = Path(h5_path)
    xdmf_path = Path(xdmf_path) if xdmf_path else h5_path.with_suffix(".xdmf")
    with h5py.File(h5_path, "r") as f:
        series = [(g, f[f"{g}/outputs_grid"].shape) for g in ("predicted", "truth") if f"{g}/outputs_grid" in f]
        has_band = "predicted/band_width" in f
        has_active = "static/IsActive" in f
        if cell_size is None and "cell_size_m" in f.attrs:
            try:
                cell_size = json.loads(f.attrs["cell_size_m"])
            except (TypeError, ValueError):
                cell_size = None
    known = cell_size is not None
    dx, dy, dz = (float(v) for v in cell_size) if known else (1.0, 1.0, 1.0)
    shape = series[0][1]
    nz, ny, nx = shape[2:]
    nodes = {"x": np.arange(nx + 1) * dx, "y": np.arange(ny + 1) * dy, "z": -np.arange(nz + 1) * dz}
    root = ET.Element("Xdmf", Version="3.0")
    domain = ET.SubElement(root, "Domain")
    if not known:
        ET.SubElement(domain, "Information", Name="cell_size",
                      Value="unknown: unit spacing (1 m cells), not the run's cell sizes")
    collection = ET.SubElement(domain, "Grid", Name="rollout", GridType="Collection", CollectionType="Temporal")
    for t in range(shape[0]):
        grid = ET.SubElement(collection, "Grid", Name=f"step{t:02d}", GridType="Uniform")
        ET.SubElement(grid, "Time", Value=str(t))
        ET.SubElement(grid, "Topology", TopologyType="3DRectMesh", Dimensions=f"{nz + 1} {ny + 1} {nx + 1}")
        geo = ET.SubElement(grid, "Geometry", GeometryType="VXVYVZ")
        for axis in ("x", "y", "z"):
            _data_item(geo, " ".join(f"{v:g}" for v in nodes[axis]), (len(nodes[axis]),), NumberType="Float",
                       Precision="8")
        for group, gshape in series:
            prefix = "" if group == "predicted" else "True"
            for c, var in enumerate(schema.DYNAMIC_NAMES):
                attr = ET.SubElement(grid, "Attribute", Name=prefix + var, AttributeType="Scalar", Center="Cell")
                _hyperslab(attr, h5_path.name, f"{group}/outputs_grid", gshape, t, c)
        for c, var in enumerate(schema.DYNAMIC_NAMES if has_band else ()):
            attr = ET.SubElement(grid, "Attribute", Name=var + "BandWidth", AttributeType="Scalar", Center="Cell")
            _hyperslab(attr, h5_path.name, "predicted/band_width", shape, t, c)
        if has_active:
            attr = ET.SubElement(grid, "Attribute", Name="IsActive", AttributeType="Scalar", Center="Cell")
            _data_item(attr, f"{h5_path.name}:/static/IsActive", (nz, ny, nx), fmt="HDF",
                       NumberType="UChar", Precision="1")
    ET.indent(root)
    with files.atomic_path(xdmf_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b'<?xml version="1.0" ?>\n<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>\n')
            ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=False)
    return xdmf_path
