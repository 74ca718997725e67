"""The one source of truth for names, shapes, units and channel order.

Raw files follow the simulator's "v2.4" HDF5 schema; prepped files are this
project's packed layout. Every other module imports names from here instead of
spelling dataset paths or channel indices itself.

Axis order is always [Z, Y, X] with Z = depth (gravity points to +Z, index 0 is
the top layer). Time-dependent arrays put time first: [T, ...].

Time convention
---------------
``Output/*[t]`` is the state after ``t`` years. ``t = 0`` is the initial state
(equal to ``Input/Pressure0`` / ``Input/Temperature0`` for files made by
``voxel-ode synth``). A model learns the map state[t] -> state[t+1] for
t = 0..T-2, and a rollout starts from ``outputs_grid[0]`` and predicts
t = 1..T-1. If a real export's first report is already "end of year 1", the
pipeline still works: it simply starts from that first report.

Field scalars at report t are the field totals of the well terms at that
report (rates, in W or kg/s, positive numbers for both injection and
production); ``FieldEnergyProductionTotal`` is cumulative (J) since t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------
FULL_GRID_SHAPE = (326, 70, 76)  # (Z, Y, X) of the real simulator output
N_TIMESTEPS = 30  # yearly reports, t = 0 .. 29
SCHEMA_VERSION = "v2.4"
RAW_FILE_GLOB = "v2.4_*.h5"  # run files; sorted by name == sorted by run index

# ---------------------------------------------------------------------------
# Raw v2.4 layout
# ---------------------------------------------------------------------------
INPUT_GROUP = "Input"
OUTPUT_GROUP = "Output"


@dataclass(frozen=True)
class Field:
    name: str
    unit: str
    kind: str  # "categorical", "binary", "continuous"
    doc: str


# The 10 static grids in the raw file, in the seed's order.
RAW_STATIC_FIELDS = (
    Field("FaultId", "-", "categorical", "fault zone id, 0 = no fault"),
    Field("IsActive", "-", "binary", "1 = active cell, 0 = inactive"),
    Field("IsWell", "-", "binary", "1 = perforated well cell"),
    Field("InjRate", "kg/s", "continuous", "mass rate per perforated cell, + injection, - production"),
    Field("PermX", "m^2", "continuous", "permeability along X"),
    Field("PermY", "m^2", "continuous", "permeability along Y"),
    Field("PermZ", "m^2", "continuous", "permeability along Z"),
    Field("Porosity", "-", "continuous", "rock porosity, 0..1"),
    Field("Pressure0", "Pa", "continuous", "initial pressure"),
    Field("Temperature0", "K", "continuous", "initial temperature"),
)
RAW_STATIC_NAMES = tuple(f.name for f in RAW_STATIC_FIELDS)

# The seed says "11 static grids" but lists 10. The 11th channel is derived on
# purpose: FaultBoundary = 1 where a cell's FaultId differs from one of its 6
# face neighbours. It marks faults whether FaultId labels fault planes (ids on
# the plane cells) or fault blocks (ids on whole compartments), so the model
# gets a geometric signal instead of an arbitrary categorical number.
# InjectionTemperatureGap: how much colder the injected water is than each cell
# (declared injection temperature, else inferred from the field scalars: injected
# energy rate / water rate = enthalpy, see WATER_HEAT_CAPACITY); 0 where unknown.
DERIVED_STATIC_FIELDS = (
    Field("FaultBoundary", "-", "binary", "1 where FaultId changes to a face neighbour (derived in prep)"),
    Field("InjectionTemperatureGap", "K", "continuous",
          "injected water's temperature minus Temperature0 (derived in prep)"),
)
INJECTION_GAP = "InjectionTemperatureGap"
# The per-year physics priors (physics/priors.py), stored in prepped files as /priors
# (T, N_PRIORS, Z, Y, X) float16 when the dataset's description gives what they need
# (cell sizes, lateral boundary), zeros otherwise (stats.json "priors": false):
#   ThermalPrior: the temperature change a linear heat-transport model gives each cell after t
#     years, as a share of the injection temperature gap: the injected water's share in [0, 1]
#     plus the drift of the initial temperature itself (its gradient moved by the flow and by
#     conduction), a few thousandths of the gap;
#   PressurePrior: the pressure change since t = 0 a linear single-phase model gives, stored as
#     asinh(change / PRESSURE_PRIOR_SCALE_PA) so float16 holds it.
THERMAL_PRIOR_NAMES = ("ThermalPrior",)
PRESSURE_PRIOR_NAMES = ("PressurePrior",)
PRESSURE_PRIOR_SCALE_PA = 1e5  # 1 bar
PRIOR_NAMES = THERMAL_PRIOR_NAMES + PRESSURE_PRIOR_NAMES
N_PRIORS = len(PRIOR_NAMES)
STATIC_FIELDS = RAW_STATIC_FIELDS + DERIVED_STATIC_FIELDS
STATIC_NAMES = tuple(f.name for f in STATIC_FIELDS)  # order of /static in prepped files
N_STATIC = len(STATIC_NAMES)  # 12

PARAMS_SCALAR = "ParamsScalar"  # Input/ParamsScalar, shape (26,)

# Time-dependent grids, Output/<name>, shape (T, Z, Y, X).
DYNAMIC_FIELDS = (
    Field("Pressure", "Pa", "continuous", "pore pressure"),
    Field("Temperature", "K", "continuous", "temperature"),
)
DYNAMIC_NAMES = tuple(f.name for f in DYNAMIC_FIELDS)
N_DYNAMIC = len(DYNAMIC_NAMES)  # 2

# Field-level scalars, Output/<name>, shape (T,).
SCALAR_FIELDS = (
    Field("FieldEnergyInjectionRate", "W", "continuous", "sum over injectors of mass rate x enthalpy"),
    Field("FieldEnergyProductionRate", "W", "continuous", "sum over producers of mass rate x enthalpy"),
    Field("FieldEnergyProductionTotal", "J", "continuous", "cumulative produced energy since t=0"),
    Field("FieldWaterInjectionRate", "kg/s", "continuous", "total injected mass rate"),
    Field("FieldWaterProductionRate", "kg/s", "continuous", "total produced mass rate"),
)
SCALAR_NAMES = tuple(f.name for f in SCALAR_FIELDS)
N_SCALARS = len(SCALAR_NAMES)  # 5
# Scalars that are running sums: a model predicts their per-step increment.
CUMULATIVE_SCALARS = ("FieldEnergyProductionTotal",)
# ... and the rate each one accumulates (same order): its increment over a step is
# compared with rate x STEP_SECONDS.
CUMULATIVE_RATES = ("FieldEnergyProductionRate",)
STEP_SECONDS = 365.25 * 86400.0  # reports are yearly
GRAVITY = 9.80665  # m/s^2
# Liquid-water enthalpy h = c_w (T - 273.15), used by `voxel-ode synth` and to
# estimate the t = 0 field scalars of a run given without its t = 0 report.
WATER_HEAT_CAPACITY = 4200.0  # J/(kg K)
ENTHALPY_ZERO_T = 273.15  # K

# The 26 global parameters, Input/ParamsScalar, in order. A real export may
# use other meanings; the model only needs 26 numbers that are constant over
# a run. These are what `voxel-ode synth` varies, with units.
PARAM_FIELDS = (
    Field("InjectionTemperature", "K", "continuous", "temperature of injected water"),
    Field("TotalInjectionRate", "kg/s", "continuous", "sum of injector rates"),
    Field("TotalProductionRate", "kg/s", "continuous", "sum of producer rates (positive)"),
    Field("SurfaceTemperature", "K", "continuous", "temperature at z = 0"),
    Field("GeothermalGradient", "K/m", "continuous", "initial dT/dz"),
    Field("RockHeatCapacity", "J/(kg K)", "continuous", "rock specific heat"),
    Field("RockThermalConductivity", "W/(m K)", "continuous", "bulk thermal conductivity"),
    Field("RockDensity", "kg/m^3", "continuous", "grain density"),
    Field("RockCompressibility", "1/Pa", "continuous", "pore compressibility"),
    Field("FluidCompressibility", "1/Pa", "continuous", "water compressibility"),
    Field("LogPermMean", "log10 m^2", "continuous", "mean log10 horizontal permeability"),
    Field("LogPermStd", "log10 m^2", "continuous", "std of log10 permeability"),
    Field("PermAnisotropy", "-", "continuous", "kv/kh"),
    Field("PermCorrelationLength", "m", "continuous", "lateral correlation length"),
    Field("PorosityMean", "-", "continuous", "mean porosity"),
    Field("FaultTransMultiplier", "-", "continuous", "geometric mean fault transmissibility multiplier"),
    Field("NumFaults", "-", "continuous", "number of faults"),
    Field("NumInjectors", "-", "continuous", "number of injection wells"),
    Field("NumProducers", "-", "continuous", "number of production wells"),
    Field("CellSizeX", "m", "continuous", "cell size along X"),
    Field("CellSizeY", "m", "continuous", "cell size along Y"),
    Field("CellSizeZ", "m", "continuous", "cell size along Z"),
    Field("ReservoirTopDepth", "m", "continuous", "depth of the grid top (z = 0)"),
    Field("ReservoirThickness", "m", "continuous", "mean thickness of the active layer"),
    Field("LayerDip", "deg", "continuous", "dip of the reservoir layer"),
    Field("BoundaryAquiferStrength", "-", "continuous", "lateral pressure support, 0 = closed"),
)
PARAM_NAMES = tuple(f.name for f in PARAM_FIELDS)
N_PARAMS = len(PARAM_NAMES)  # 26
# The model is conditioned on the normalized params plus the time since the start:
# a reservoir's response to wells that switch on at t = 0 decays with time (the
# first year's pressure jump, then ever smaller changes), which the state alone
# does not tell. Feature = log1p(t) / log1p(N_TIMESTEPS - 1), t in yearly steps.
CONDITIONING_NAMES = PARAM_NAMES + ("YearsSinceStart",)
N_CONDITIONING = len(CONDITIONING_NAMES)  # 27


def raw_path(name: str) -> str:
    """HDF5 path of a raw dataset by its short name."""
    if name in RAW_STATIC_NAMES or name == PARAMS_SCALAR:
        return f"{INPUT_GROUP}/{name}"
    if name in DYNAMIC_NAMES or name in SCALAR_NAMES:
        return f"{OUTPUT_GROUP}/{name}"
    raise KeyError(f"not a raw v2.4 dataset: {name}")


# ---------------------------------------------------------------------------
# Prepped layout (one file per simulation, *.prepped.h5)
# ---------------------------------------------------------------------------
PREPPED_SUFFIX = ".prepped.h5"
PREPPED_STATIC = "static"  # (N_STATIC, Z, Y, X) float32, inactive cells = 0
PREPPED_PARAMS = "params_scalar"  # (N_PARAMS,) float32
PREPPED_OUTPUTS_GRID = "outputs_grid"  # (T, N_DYNAMIC, Z, Y, X) float32, physical units
PREPPED_OUTPUTS_SCALAR = "outputs_scalar"  # (T, N_SCALARS) float64 (energy totals reach ~1e17 J), physical units
# (T, 2) float64 kg/s: the field's (injected, produced) water as the priors' wells deliver it at each
# report (row 0: the prescribed rates); absent without priors (data/start_scalars.py reads it)
PREPPED_DELIVERED_RATES = "priors_delivered_rates"
PREPPED_PRIORS = "priors"  # (T, N_PRIORS, Z, Y, X) float16: the thermal prior's shares, then the pressure prior
STATS_FILE = "stats.json"
INDEX_FILE = "index_{split}.jsonl"  # one patch per line
# calibration: held-out runs (prep --n_calibration) that only the uncertainty bands see
SPLITS = ("train", "test", "calibration")

# ---------------------------------------------------------------------------
# Model channels
# ---------------------------------------------------------------------------
# Input = the static channels (STATIC_NAMES), the state at t (Pressure, Temperature), then the
# change of the pressure since t = 0 (Pressure minus Pressure0). Pressure is z-scored
# over the whole depth range (std ~ 50 bar), so the 0.1-20 bar a reservoir moves under
# production is ~1e-3 of a unit in its state channel, invisible to the network; scaled
# on its own the change shows whether the wells have built their pressure cone yet.
# Temperature needs no such channel: a cold plume (10-100 K) is plain in its state
# channel (std ~ 35 K), and a TemperatureChange channel measured worse on the demo (T rollout
# error 0.78 vs 0.60-0.63).
CHANGE_VARIABLES = ("Pressure",)
CHANGE_NAMES = tuple(v + "Change" for v in CHANGE_VARIABLES)
CHANGE_OF_DYNAMIC = tuple(DYNAMIC_NAMES.index(v) for v in CHANGE_VARIABLES)  # their index in the state
# Then the priors at t and at t + 1 (the thermal prior's shares of the gap, the pressure prior
# rescaled like PressureChange by features.Normalizer): data, not predictions; the model's
# temperature step starts from the thermal prior's step (model.front_step), its pressure step
# from the pressure prior at t + 1 (VoxelAutoRegressor.prior_steps).
PRIOR_NEXT_NAMES = tuple(n + "Next" for n in PRIOR_NAMES)
INPUT_CHANNELS = STATIC_NAMES + DYNAMIC_NAMES + CHANGE_NAMES + PRIOR_NAMES + PRIOR_NEXT_NAMES
N_INPUT_CHANNELS = len(INPUT_CHANNELS)  # 19
STATE_CHANNELS = slice(N_STATIC, N_STATIC + N_DYNAMIC)  # z-scored (P, T) at t
CHANGE_CHANNELS = slice(N_STATIC + N_DYNAMIC, N_STATIC + N_DYNAMIC + len(CHANGE_NAMES))  # scaled P - P0
PRIOR_CHANNELS = slice(CHANGE_CHANNELS.stop, N_INPUT_CHANNELS)  # the priors at t, then at t + 1
PREDICTED_CHANNELS = slice(N_STATIC, CHANGE_CHANNELS.stop)  # what a rollout feeds back (state, change)
DYNAMIC_CHANNELS = slice(N_STATIC, N_INPUT_CHANNELS)  # everything that changes with t
INITIAL_STATE_STATIC = tuple(STATIC_NAMES.index(n + "0") for n in DYNAMIC_NAMES)  # Pressure0, Temperature0
# The grid head predicts the change of (Pressure, Temperature) from t to t+1.
OUTPUT_CHANNELS = DYNAMIC_NAMES


def channel_index(name: str) -> int:
    """Index of a named channel in the model input."""
    return INPUT_CHANNELS.index(name)


# static channels the pipeline reads by name (index in /static and in the model input alike)
STATIC_ACTIVE = STATIC_NAMES.index("IsActive")
STATIC_INJ_RATE = STATIC_NAMES.index("InjRate")
STATIC_PERM_X = STATIC_NAMES.index("PermX")
STATIC_PERM_Y = STATIC_NAMES.index("PermY")

# Units used in reports: absolute tolerances for the accuracy metric.
DEFAULT_PRESSURE_TOL_PA = 5e5  # 5 bar
DEFAULT_TEMPERATURE_TOL_K = 5.0
