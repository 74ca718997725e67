"""Raw v2.4 files: the contract between a simulator's export and the pipeline.

A raw file holds the schema's datasets (``schema.raw_path``: ``Input/<static grid>``,
``Input/ParamsScalar``, ``Output/<dynamic grid or field scalar>``) and free-form file
attributes. What its numbers mean (units, the time of the first report, which ``ParamsScalar``
entry is what) is declared next to the files in ``description.json`` (``data/description.py``).

This module is the writer both synth engines use (``synth.voxel`` and ``synth.open_darts``).
"""

from __future__ import annotations

from pathlib import Path

import h5py

from voxel_ode import schema
from voxel_ode.utils import atomic_path

# the datasets of a raw file, in the order they are written
DATASET_NAMES = schema.RAW_STATIC_NAMES + (schema.PARAMS_SCALAR,) + schema.DYNAMIC_NAMES + schema.SCALAR_NAMES


def run_file_name(index: int) -> str:
    """File name of run ``index``: v2.4_0001.h5, ... (sorted by name = sorted by index)."""
    return f"{schema.SCHEMA_VERSION}_{index:04d}.h5"


def write_raw(path, arrays: dict, attrs: dict, dynamic_chunks=None) -> Path:
    """Write the schema's datasets from ``arrays`` (in their own dtypes) and the file attributes
    ``attrs`` atomically, byte-reproducibly (no HDF5 timestamps). ``dynamic_chunks``: store the
    dynamic grids gzip-compressed in chunks of at most this shape (open-darts: the dev set's layout)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in DATASET_NAMES:
                data = arrays[name]
                kw = {}
                if dynamic_chunks is not None and name in schema.DYNAMIC_NAMES:
                    kw = {"chunks": tuple(min(c, s) for c, s in zip(dynamic_chunks, data.shape)), "compression": "gzip"}
                f.create_dataset(schema.raw_path(name), data=data, track_times=False, **kw)
            for key, value in attrs.items():
                f.attrs[key] = value
    return path


def write_simulation(path, arrays: dict, dynamic_chunks=None) -> Path:
    """One run as a synth engine's ``simulate`` returns it: the schema's arrays plus ``"_attrs"``
    (the file attributes). Keys starting with "_" other than that are not written."""
    return write_raw(path, arrays, arrays["_attrs"], dynamic_chunks)
