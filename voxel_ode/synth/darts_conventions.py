"""open-darts runs (``voxel-ode synth --engine darts``): the settings every run shares and the
conventions of the files they write.

Conventions of the files (the dev set's, declared in ``description.json``): permeability in mD,
``Output/*[r]`` = end of year r + 1, inactive cells hold their initial equilibrium value, field
energy rates = absolute IAPWS enthalpy flow (W), ``ParamsScalar`` = the 26 dev-set entries
(``PARAM_NAMES``). Nothing here imports open-darts.
"""

from __future__ import annotations

import json

import numpy as np

from voxel_ode.data import description as desc

DARTS_VERSION = "2.0.0"
CELL_SIZE = (5.0, 50.0, 50.0)  # dz, dy, dx in m
BOUNDARY_MULTIPLIER = 1000.0
ROCK_COMPRESSIBILITY_PER_BAR = 1e-6
WATER_CONDUCTIVITY = 0.6  # W/(m K)
WELL_DIAMETER = 0.2  # m
INJ_BHP_OVER_HYDROSTATIC = 150.0  # bar
PROD_BHP_MIN = 20.0  # bar
P_SURFACE = 1.01325  # bar
REPORT_DAYS = 365.0
OBL_STEPS = (4.0, 1.0)  # bar, K
DYNAMIC_CHUNKS = (8, 12, 5, 12)  # HDF5 chunks of Output/Pressure, Temperature: the dev set's layout
# Input/ParamsScalar: the dev set's 26 entries (shared/darts-dev/README.md), also the file attribute param_names
PARAM_NAMES = (
    "T_inj_K", "Q_inj_total_kg_s", "Q_prod_total_kg_s", "rock_heat_capacity_kJ_m3_K", "rock_conductivity_W_m_K",
    "geothermal_gradient_K_km", "surface_temperature_K", "top_depth_m", "log10_perm_mean_mD", "log10_perm_std",
    "porosity_mean", "kv_kh_ratio", "corr_len_horizontal_m", "corr_len_vertical_m", "n_faults",
    "log10_fault_perm_mult", "n_injectors", "n_producers", "well1_x_idx", "well1_y_idx", "well2_x_idx",
    "well2_y_idx", "well3_x_idx", "well3_y_idx", "well4_x_idx", "well4_y_idx",
)


def description():
    """What these files mean (data/description.py): the darts-dev conventions."""
    dz, dy, dx = CELL_SIZE
    return desc.Description.from_dict({
        "permeability_unit": "mD", "first_report": "year1", "lateral_boundary": "pore_volume",
        "quantities": {
            "CellSizeX": dx, "CellSizeY": dy, "CellSizeZ": dz,
            "BoundaryMultiplier": BOUNDARY_MULTIPLIER,
            "RockCompressibility": {"value": ROCK_COMPRESSIBILITY_PER_BAR, "unit": "1/bar"},
            "FluidCompressibility": {"value": 4.5e-10, "unit": "1/Pa"},  # liquid water, as darts-dev.json
            "InjectionTemperature": {"param": 0, "unit": "K"},
            "RockHeatCapacityVolumetric": {"param": 3, "unit": "kJ/(m^3 K)"},
            "RockThermalConductivity": {"param": 4, "unit": "W/(m K)"},
        }}, "voxel-ode synth --engine darts")


def file_attrs(run, seed, index, report_times) -> dict:
    """The file attributes of the dev set's layout: settings, parameter names, provenance, wells."""
    dz, dy, dx = CELL_SIZE
    fixed = {"DX": dx, "DY": dy, "DZ": dz, "well_diameter": WELL_DIAMETER, "aquifer_volume_mult": BOUNDARY_MULTIPLIER,
             "rock_compressibility": ROCK_COMPRESSIBILITY_PER_BAR, "water_conductivity": WATER_CONDUCTIVITY,
             "inj_bhp_max_over_init": INJ_BHP_OVER_HYDROSTATIC, "prod_bhp_min": PROD_BHP_MIN,
             "p_surface": P_SURFACE, "obl_p_step": OBL_STEPS[0], "obl_t_step": OBL_STEPS[1]}
    return {
        "fixed_settings": json.dumps(fixed),
        "grid_cell_size_m": np.array(CELL_SIZE),
        "param_names": json.dumps(list(PARAM_NAMES)),
        "report_times_days": report_times.astype(np.float64),
        "schema": "v2.4",
        "seed": np.int64(seed),
        "run_index": np.int64(index),
        "simulator": f"open-darts {DARTS_VERSION} (IAPWSPhysics, PT state, IAPWS-95)",
        "generator": "voxel-ode synth --engine darts",
        "wells": json.dumps(run["wells"]),
        "time_convention": "Output/*[r] = end of year r + 1; t = 0 is Input/Pressure0, Input/Temperature0",
    }
