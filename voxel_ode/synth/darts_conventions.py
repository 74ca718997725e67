"""open-darts runs (``voxel-ode synth --engine darts``): the settings every run shares, the
conventions a dataset is made and written in (``Conventions``), and the conversion of one run from
the simulator's arrays to the file's (``file_arrays``) with the description of such files
(``description``). Pure numpy: nothing here imports open-darts, so all of it is testable without.

The default ``Conventions()`` are the darts-dev development set's (shared/darts-dev/README.md):
5 m x 50 m x 50 m cells, 15-60 kg/s total injection, lateral side cells with 1000x pore volume,
permeability in mD, ``Output/*[r]`` = end of year r + 1, ``ParamsScalar`` in ``PARAM_NAMES`` order.
Other conventions test the pipeline on exports nobody tuned for. Whatever the conventions, inactive
cells hold their initial equilibrium value and the field energy rates are absolute IAPWS enthalpy
flows (W).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from voxel_ode import schema
from voxel_ode.data import description as desc
from voxel_ode.utils import UserError

DARTS_VERSION = "2.0.0"
ROCK_COMPRESSIBILITY_PER_BAR = 1e-6
WATER_CONDUCTIVITY = 0.6  # W/(m K)
WELL_DIAMETER = 0.2  # m
INJ_BHP_OVER_HYDROSTATIC = 150.0  # bar
PROD_BHP_MIN = 20.0  # bar
P_SURFACE = 1.01325  # bar
REPORT_DAYS = 365.0
OBL_STEPS = (4.0, 1.0)  # bar, K
DYNAMIC_CHUNKS = (8, 12, 5, 12)  # HDF5 chunks of Output/Pressure, Temperature: the dev set's layout
SIMULATOR_PERMEABILITY_UNIT = "mD"  # what the draw and the simulator use
MAX_BOX_HEIGHT = 3000.0  # m: keeps the deepest cell below ~260 C (top <= 3 km, <= 40 K/km)
# Input/ParamsScalar: the dev set's 26 entries (shared/darts-dev/README.md), also the file attribute param_names
PARAM_NAMES = (
    "T_inj_K", "Q_inj_total_kg_s", "Q_prod_total_kg_s", "rock_heat_capacity_kJ_m3_K", "rock_conductivity_W_m_K",
    "geothermal_gradient_K_km", "surface_temperature_K", "top_depth_m", "log10_perm_mean_mD", "log10_perm_std",
    "porosity_mean", "kv_kh_ratio", "corr_len_horizontal_m", "corr_len_vertical_m", "n_faults",
    "log10_fault_perm_mult", "n_injectors", "n_producers", "well1_x_idx", "well1_y_idx", "well2_x_idx",
    "well2_y_idx", "well3_x_idx", "well3_y_idx", "well4_x_idx", "well4_y_idx",
)
N_PARAMS = len(PARAM_NAMES)
# the lateral boundaries open-darts represents here (description.BOUNDARY_KINDS): "pore_volume" multiplies
# the side cells' pore volume, "closed" leaves them as they are (no flow through the box sides). Not
# "fixed_pressure": that needs connections to cells held at the initial state, which this model lacks.
BOUNDARY_KINDS = ("pore_volume", "closed")
TIME_CONVENTIONS = {
    "year1": "Output/*[r] = end of year r + 1; t = 0 is Input/Pressure0, Input/Temperature0",
    "initial": "Output/*[r] = state after r years; r = 0 is the initial state (Input/Pressure0, Input/Temperature0)",
}


@dataclass(frozen=True)
class Conventions:
    """How an open-darts dataset is made and written; the defaults are the dev set's.

    cell_size: (dx, dy, dz) m. injection_rate: (low, high) kg/s, the range the total injection rate
    is drawn from. lateral_boundary: one of BOUNDARY_KINDS; boundary_multiplier: the side cells' pore
    volume factor of "pore_volume" (unused when "closed": there, production = injection, see
    darts_draw). permeability_unit: of Input/PermX/Y/Z,
    "mD" or "m2". first_report: "year1" (Output[0] = end of year 1, n reports) or "initial"
    (Output[0] = the initial state, n + 1 reports). params_order: ParamsScalar[i] of a file holds
    entry params_order[i] of PARAM_NAMES (a permutation of 0..25). injector_limit: the injectors'
    maximum bottomhole pressure, bar over fresh-water hydrostatic at the box bottom; producer_limit:
    the producers' minimum, bar.
    """

    cell_size: tuple = (50.0, 50.0, 5.0)
    injection_rate: tuple = (15.0, 60.0)
    lateral_boundary: str = "pore_volume"
    boundary_multiplier: float = 1000.0
    permeability_unit: str = "mD"
    first_report: str = "year1"
    params_order: tuple = tuple(range(N_PARAMS))
    injector_limit: float = INJ_BHP_OVER_HYDROSTATIC  # bar over fresh-water hydrostatic at the box bottom
    producer_limit: float = PROD_BHP_MIN  # bar, the producers' minimum bottomhole pressure

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "cell_size", _numbers("--cell_size", self.cell_size, 3, 0.1, 1e4, "dx dy dz in m"))
        set_(self, "injection_rate", _numbers("--injection_rate", self.injection_rate, 2, 1e-3, 1e3, "kg/s"))
        if self.injection_rate[0] > self.injection_rate[1]:
            raise UserError(f"--injection_rate: low {self.injection_rate[0]:g} > high {self.injection_rate[1]:g}")
        _choice("--lateral_boundary", self.lateral_boundary, BOUNDARY_KINDS,
                " (fixed_pressure would need cells held at the initial state, which this open-darts setup lacks)")
        set_(self, "boundary_multiplier", _numbers("--boundary_multiplier", (self.boundary_multiplier,), 1, 1.0, 1e9,
                                                   "a pore volume factor")[0])
        _choice("--perm_unit", self.permeability_unit, tuple(desc.PERMEABILITY_UNITS), "")
        _choice("--first_report", self.first_report, desc.FIRST_REPORTS, "")
        order = tuple(self.params_order)
        if not all(isinstance(i, (int, np.integer)) for i in order) or sorted(order) != list(range(N_PARAMS)):
            raise UserError(f"--params_order: need a permutation of 0..{N_PARAMS - 1}, got {list(order)}")
        set_(self, "params_order", tuple(int(i) for i in order))
        set_(self, "injector_limit", _numbers("--injector_limit", (self.injector_limit,), 1, 1.0, 1e4,
                                              "bar over fresh-water hydrostatic at the box bottom")[0])
        set_(self, "producer_limit", _numbers("--producer_limit", (self.producer_limit,), 1, 1.0, 1e4, "bar")[0])

    @property
    def cell_size_zyx(self) -> tuple:
        """(dz, dy, dx) m: the [Z, Y, X] order of the arrays."""
        return self.cell_size[::-1]

    def file_index(self, entry: int) -> int:
        """Where PARAM_NAMES[entry] is in a file's ParamsScalar."""
        return self.params_order.index(entry)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Conventions":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _numbers(flag, values, n, lo, hi, what) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(math.isfinite(v) and lo <= v <= hi for v in out):
        raise UserError(f"{flag}: need {n} number(s) in [{lo:g}, {hi:g}] ({what}), got {values!r}")
    return out


def _choice(flag, value, choices, extra):
    if value not in choices:
        raise UserError(f"{flag}: {value!r} is not one of {', '.join(choices)}{extra}")


def random_params_order(seed: int) -> tuple:
    """A shuffled ParamsScalar order, the same for every run of a dataset made with ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0, N_PARAMS]))  # no run draws (seed, 0, 26)
    return tuple(int(i) for i in rng.permutation(N_PARAMS))


def check_grid(grid, conv: Conventions) -> None:
    """UserError when the box is deeper than MAX_BOX_HEIGHT with these cells."""
    height = grid[0] * conv.cell_size[2]
    if height > MAX_BOX_HEIGHT:
        raise UserError(f"--grid/--cell_size: the box is {height:g} m high (Z cells x dz), at most "
                        f"{MAX_BOX_HEIGHT:g} m (so that the deepest cells stay below ~260 C)")


# ---------------------------------------------------------------------------
# From the simulator's arrays to the file's
# ---------------------------------------------------------------------------
# The simulator's arrays of one run (synth.darts_model.simulate), ``sim``:
#   these static grids in their file dtypes (FaultId int32, IsActive and IsWell uint8, the rest float32);
SIM_STATIC = ("FaultId", "IsActive", "IsWell", "InjRate", "Porosity", "Pressure0", "Temperature0")
#   PermX/Y/Z float64 in SIMULATOR_PERMEABILITY_UNIT; "ParamsScalar" float64 (26,) in PARAM_NAMES order;
#   Pressure, Temperature float32 (n + 1, Z, Y, X) and the five field scalars float64 (n + 1,), entry 0
#   the initial state (scalars: rates of the first simulator time step, cumulative energy 0), entry r
#   the end of year r; "report_days" (n + 1,) = 0, 365, ...; "wells" (list of dicts), "seed", "index".
PERM_NAMES = ("PermX", "PermY", "PermZ")


def file_arrays(sim: dict, conv: Conventions) -> dict:
    """One run's file in conventions ``conv``: {schema short name: array} plus "_attrs" (file
    attributes), for data.raw.write_simulation. Pure: no simulator needed."""
    first = 0 if conv.first_report == "initial" else 1
    units = desc.PERMEABILITY_UNITS
    factor = units[SIMULATOR_PERMEABILITY_UNIT] / units[conv.permeability_unit]
    arrays = {name: sim[name] for name in SIM_STATIC}
    arrays |= {name: (np.asarray(sim[name], np.float64) * factor).astype(np.float32) for name in PERM_NAMES}
    arrays["ParamsScalar"] = np.asarray(sim["ParamsScalar"], np.float64)[list(conv.params_order)].astype(np.float32)
    arrays |= {name: sim[name][first:] for name in schema.DYNAMIC_NAMES}
    arrays |= {name: np.asarray(sim[name])[first:].astype(np.float32) for name in schema.SCALAR_NAMES}
    arrays["_attrs"] = file_attrs(sim, conv, np.asarray(sim["report_days"], np.float64)[first:])
    return arrays


def description(conv: Conventions = Conventions()) -> desc.Description:
    """What files in conventions ``conv`` mean (data/description.py); the defaults give darts-dev.json's."""
    dx, dy, dz = conv.cell_size
    quantities = {"CellSizeX": dx, "CellSizeY": dy, "CellSizeZ": dz}
    if conv.lateral_boundary == "pore_volume":
        quantities["BoundaryMultiplier"] = conv.boundary_multiplier
    quantities |= {
        "RockCompressibility": {"value": ROCK_COMPRESSIBILITY_PER_BAR, "unit": "1/bar"},
        "FluidCompressibility": {"value": 4.5e-10, "unit": "1/Pa"},  # liquid water, as darts-dev.json
        "InjectionTemperature": {"param": conv.file_index(0), "unit": "K"},
        "RockHeatCapacityVolumetric": {"param": conv.file_index(3), "unit": "kJ/(m^3 K)"},
        "RockThermalConductivity": {"param": conv.file_index(4), "unit": "W/(m K)"},
        # the injectors' limit is fresh-water hydrostatic at the box bottom + injector_limit: one number
        # over the base's initial pressure (that is hot water's hydrostatic, within ~1 bar)
        "InjectorMaxBottomholePressure": {"over_initial": conv.injector_limit, "unit": "bar", "at": "base"},
        "ProducerMinBottomholePressure": {"value": conv.producer_limit, "unit": "bar"},
        "WellRadius": WELL_DIAMETER / 2,
    }
    return desc.Description.from_dict({
        "permeability_unit": conv.permeability_unit, "first_report": conv.first_report,
        "lateral_boundary": conv.lateral_boundary,
        "outside_heat_exchange": False,  # inactive cells are removed: no heat flows through them
        "well_inflow": "wellbore",  # open-darts' well model splits each well's rate
        "quantities": quantities}, "voxel-ode synth --engine darts")


def file_attrs(sim: dict, conv: Conventions, report_days) -> dict:
    """The file attributes of the dev set's layout: settings, parameter names, provenance, wells."""
    dx, dy, dz = conv.cell_size
    multiplier = conv.boundary_multiplier if conv.lateral_boundary == "pore_volume" else 1.0
    fixed = {"DX": dx, "DY": dy, "DZ": dz, "well_diameter": WELL_DIAMETER, "aquifer_volume_mult": multiplier,
             "rock_compressibility": ROCK_COMPRESSIBILITY_PER_BAR, "water_conductivity": WATER_CONDUCTIVITY,
             "inj_bhp_max_over_init": conv.injector_limit, "prod_bhp_min": conv.producer_limit,
             "p_surface": P_SURFACE, "obl_p_step": OBL_STEPS[0], "obl_t_step": OBL_STEPS[1]}
    return {
        "fixed_settings": json.dumps(fixed),
        "grid_cell_size_m": np.array(conv.cell_size_zyx),
        "param_names": json.dumps([PARAM_NAMES[i] for i in conv.params_order]),
        "report_times_days": np.asarray(report_days, np.float64),
        "schema": "v2.4",
        "seed": np.int64(sim["seed"]),
        "run_index": np.int64(sim["index"]),
        "simulator": f"open-darts {DARTS_VERSION} (IAPWSPhysics, PT state, IAPWS-95)",
        "generator": "voxel-ode synth --engine darts",
        "wells": json.dumps(sim["wells"]),
        "time_convention": TIME_CONVENTIONS[conv.first_report],
    }
