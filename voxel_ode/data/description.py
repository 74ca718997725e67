"""What a dataset's files mean: the one place where a user declares an export's conventions.

A v2.4 file is grids and 26 numbers; what they mean differs between simulators. The
physics priors (physics/priors.py) need cell sizes, the permeability unit, the time of the
first report and, where known, a few physical constants. Nothing is read from
``ParamsScalar`` by position unless a description says so.

``description.json`` next to the raw files (or ``prep --description FILE``)::

    {
      "permeability_unit": "mD",            # "m2" or "mD"; inferred from magnitudes if absent
      "first_report": "year1",              # "initial" (Output[0] is t = 0) or "year1"; inferred if absent
      "lateral_boundary": "pore_volume",    # "closed", "fixed_pressure" or "pore_volume" (see BOUNDARY_KINDS)
      "outside_heat_exchange": false,       # conduction to the rock outside the active cells (default true)
      "well_inflow": "wellbore",            # "wellbore" (default) or "as_given" (see WELL_INFLOWS)
      "quantities": {                       # each: a number (in the unit below), {"value": v, "unit": u}
        "CellSizeX": 50, "CellSizeY": 50, "CellSizeZ": {"value": 5, "unit": "m"},   # or {"param": i, "unit": u}
        "InjectionTemperature": {"param": 0, "unit": "K"},
        "BoundaryMultiplier": 1000
      }
    }

``QUANTITIES`` lists every quantity the pipeline can use, its unit and what happens
without it. ``voxel-ode synth`` writes the description of its own files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxel_ode import files
from voxel_ode.utils import UserError

FILE_NAME = "description.json"
PERMEABILITY_UNITS = {"m2": 1.0, "mD": 9.869233e-16}  # factor to m^2
FIRST_REPORTS = ("initial", "year1")
# How the box's lateral sides (first/last X and Y cells) connect to the reservoir beyond:
#   closed          no flow through them;
#   fixed_pressure  to water held at the initial pressure, through BoundaryMultiplier times the
#                   half-cell transmissibility (voxel-ode synth: its BoundaryAquiferStrength);
#   pore_volume     the side cells' pore volume is BoundaryMultiplier times their own (a large
#                   storage, as open-darts' aquifer cells).
BOUNDARY_KINDS = ("closed", "fixed_pressure", "pore_volume")
# How a well's rate reaches its cells:
#   wellbore  a well (a column of same-sign InjRate cells) delivers the sum of its InjRate through
#             its wellbore, split over the cells by their pressures, permeability and the wellbore's
#             water column, as a simulator's well model does (InjRate's own split is not used);
#   as_given  each cell takes exactly its InjRate (per-cell mass sources; no wellbore, so no
#             bottomhole pressure limits). voxel-ode synth's own engine.
WELL_INFLOWS = ("wellbore", "as_given")

# name -> (SI unit, {unit: (scale, offset)} to SI, what happens without it)
_K = {"K": (1.0, 0.0), "C": (1.0, 273.15), "degC": (1.0, 273.15)}
_PER_PA = {"1/Pa": (1.0, 0.0), "1/bar": (1e-5, 0.0), "1/MPa": (1e-6, 0.0)}
_HEAT_VOL = {"J/(m^3 K)": (1.0, 0.0), "kJ/(m^3 K)": (1e3, 0.0), "MJ/(m^3 K)": (1e6, 0.0)}
_LENGTH = {"m": (1.0, 0.0), "ft": (0.3048, 0.0)}
_PRESSURE = {"Pa": (1.0, 0.0), "kPa": (1e3, 0.0), "bar": (1e5, 0.0), "MPa": (1e6, 0.0), "psi": (6894.757, 0.0)}
QUANTITIES = {
    "CellSizeX": ("m", _LENGTH, "fitted by prep on training runs (physics/calibration.py), else no physics priors"),
    "CellSizeY": ("m", _LENGTH, "fitted by prep on training runs (physics/calibration.py), else no physics priors"),
    "CellSizeZ": ("m", _LENGTH, "fitted by prep on training runs (physics/calibration.py), else no physics priors"),
    "TotalCompressibility": ("1/Pa", _PER_PA, "RockCompressibility + FluidCompressibility, else a generic 5e-10 /Pa"),
    "RockCompressibility": ("1/Pa", _PER_PA, "counted 0 when FluidCompressibility is given"),
    "FluidCompressibility": ("1/Pa", _PER_PA, "counted 0 when RockCompressibility is given"),
    "InjectionTemperature": ("K", _K, "from the field scalars: injected energy rate / water rate"),
    # what the field scalars' enthalpy convention needs added (reference state, pressure work):
    # fitted by prep where neither this nor InjectionTemperature is declared and it calibrates
    "InjectionTemperatureOffset": ("K", {"K": (1.0, 0.0)}, "0: the scalars' enthalpy read as c_w (T - 273.15)"),
    "RockHeatCapacityVolumetric": ("J/(m^3 K)", _HEAT_VOL, "RockHeatCapacity x RockDensity, else generic 2.3e6"),
    "RockHeatCapacity": ("J/(kg K)", {"J/(kg K)": (1.0, 0.0), "kJ/(kg K)": (1e3, 0.0)}, "see above"),
    "RockDensity": ("kg/m^3", {"kg/m^3": (1.0, 0.0), "g/cm^3": (1e3, 0.0)}, "see above"),
    "RockThermalConductivity": ("W/(m K)", {"W/(m K)": (1.0, 0.0)}, "a generic 2.5 W/(m K)"),
    "BoundaryMultiplier": ("-", {"-": (1.0, 0.0)}, "required by fixed_pressure and pore_volume boundaries"),
    # at a well's shallowest perforation (physics/priors.py adds the wellbore's water column below it)
    "ProducerMinBottomholePressure": ("Pa", _PRESSURE, "producers deliver their rates at any pressure"),
    "InjectorMaxBottomholePressure": ("Pa", _PRESSURE, "injectors deliver their rates at any pressure"),
    "WellRadius": ("m", _LENGTH, "a generic 0.108 m, an 8 1/2-inch hole (the wells' inflow, well_inflow wellbore)"),
}
CELL_SIZE_QUANTITIES = ("CellSizeX", "CellSizeY", "CellSizeZ")
BOTTOMHOLE_LIMITS = ("ProducerMinBottomholePressure", "InjectorMaxBottomholePressure")
# A limit declared {"over_initial": v, "unit": u, "at": ...} is v above (below, if negative) an initial
# pressure of the run: "well" the well's own at its shallowest perforation, "base" the reservoir
# base's (its deepest active layer's mean): simulators often set limits so, and one number then
# holds for every run whatever its depth.
LIMIT_REFERENCES = ("well", "base")
CALIBRATED_CHOICES = ("lateral_boundary", "outside_heat_exchange")  # calibrated entries that are not quantities


@dataclass
class Description:
    """A dataset's declared conventions (None / absent = not declared)."""

    permeability_unit: str | None = None
    first_report: str | None = None
    lateral_boundary: str | None = None
    quantities: dict = field(default_factory=dict)  # name -> {"value": v} or {"param": i}, plus "unit"
    source: str = "none"  # where it came from, for messages
    # whether the active cells exchange heat by conduction with the rock outside them (inactive
    # cells, beyond the box); None = not declared = yes (real caprock and basement do; open-darts
    # removes inactive cells: no heat flux there)
    outside_heat_exchange: bool | None = None
    # entries prep fitted on the training split (physics/calibration.py) -> how; not declared by anyone
    calibrated: dict = field(default_factory=dict)
    well_inflow: str | None = None  # WELL_INFLOWS; None = not declared = wellbore

    def to_dict(self) -> dict:
        quantities = {name: {k: v for k, v in spec.items() if k in ("param", "value", "over_initial", "at", "unit")}
                      for name, spec in self.quantities.items()}
        out = {"permeability_unit": self.permeability_unit, "first_report": self.first_report,
               "lateral_boundary": self.lateral_boundary, "outside_heat_exchange": self.outside_heat_exchange,
               "quantities": quantities}
        if self.well_inflow is not None:  # absent from records made before it existed: digests unchanged
            out["well_inflow"] = self.well_inflow
        return out | ({"calibrated": dict(self.calibrated)} if self.calibrated else {})

    @classmethod
    def from_dict(cls, d: dict, source: str = "(dict)") -> "Description":
        if not isinstance(d, dict):
            raise UserError(f"{source}: a dataset description must be a JSON object")
        keys = ("permeability_unit", "first_report", "lateral_boundary", "outside_heat_exchange", "well_inflow",
                "quantities")
        unknown = set(d) - set(keys) - {"format", "notes", "calibrated"}
        if unknown:
            raise UserError(f"{source}: unknown keys {sorted(unknown)} (known: {', '.join(keys)})")
        if not isinstance(d.get("quantities") or {}, dict):
            raise UserError(f"{source}: quantities: expected an object {{name: value}}, got a "
                            f"{type(d['quantities']).__name__}")
        heat = d.get("outside_heat_exchange")
        if heat is not None and not isinstance(heat, bool):
            raise UserError(f"{source}: outside_heat_exchange: {heat!r} is not true or false")
        desc = cls(d.get("permeability_unit"), d.get("first_report"), d.get("lateral_boundary"),
                   {k: _quantity_spec(k, v, source) for k, v in (d.get("quantities") or {}).items()}, source, heat,
                   _calibrated(d.get("calibrated"), source), d.get("well_inflow"))
        _check_choice(source, "permeability_unit", desc.permeability_unit, tuple(PERMEABILITY_UNITS))
        _check_choice(source, "first_report", desc.first_report, FIRST_REPORTS)
        _check_choice(source, "lateral_boundary", desc.lateral_boundary, BOUNDARY_KINDS)
        _check_choice(source, "well_inflow", desc.well_inflow, WELL_INFLOWS)
        limits = set(BOTTOMHOLE_LIMITS) & set(desc.quantities)
        if desc.well_inflow == "as_given" and limits:
            raise UserError(f"{source}: well_inflow 'as_given' has no wellbore, so no bottomhole pressure: "
                            f"remove {', '.join(sorted(limits))} or declare well_inflow 'wellbore'")
        if desc.lateral_boundary in ("fixed_pressure", "pore_volume") and "BoundaryMultiplier" not in desc.quantities:
            raise UserError(f"{source}: lateral_boundary {desc.lateral_boundary!r} needs quantities.BoundaryMultiplier")
        return desc


def with_cell_size(desc: Description, cell_size) -> Description:
    """``desc`` with ``prep --cell_size DX DY DZ`` (m) as its declared cell sizes."""
    if cell_size is None:
        return desc
    quantities = dict(desc.quantities)
    for name, value in zip(CELL_SIZE_QUANTITIES, cell_size):
        quantities[name] = {"value": float(value), "unit": "m"}
    return dataclasses.replace(desc, quantities=quantities, source=desc.source + " + --cell_size")


def declared_compressibility(values: dict) -> float | None:
    """Total compressibility (1/Pa) from resolved quantities: TotalCompressibility, else Rock +
    Fluid (either may be absent); None if none is given."""
    if "TotalCompressibility" in values:
        return values["TotalCompressibility"]
    if "RockCompressibility" in values or "FluidCompressibility" in values:
        return values.get("RockCompressibility", 0.0) + values.get("FluidCompressibility", 0.0)
    return None


def _calibrated(entries, source) -> dict:
    entries = entries or {}
    if not isinstance(entries, dict) or not all(
            isinstance(v, str) and (k in QUANTITIES or k in CALIBRATED_CHOICES) for k, v in entries.items()):
        raise UserError(f"{source}: calibrated: expected {{quantity name: note}}, got {entries!r}")
    return dict(entries)


def _check_choice(source, key, value, choices):
    if value is not None and value not in choices:
        raise UserError(f"{source}: {key}: {value!r} is not one of {', '.join(choices)}")


def _quantity_spec(name: str, spec, source: str) -> dict:
    """A declared quantity -> {"value": SI number} or {"param": index, "scale": s, "offset": o}."""
    if name not in QUANTITIES:
        raise UserError(f"{source}: quantities.{name}: unknown quantity (known: {', '.join(QUANTITIES)})")
    si_unit, units, _ = QUANTITIES[name]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"value": spec, "unit": si_unit}
    if isinstance(spec, dict) and "over_initial" in spec and name in BOTTOMHOLE_LIMITS:
        return _limit_over_initial(name, spec, source)
    if not isinstance(spec, dict) or ("value" in spec) == ("param" in spec):
        raise UserError(f"{source}: quantities.{name}: give a number, {{\"value\": v, \"unit\": u}} "
                        "or {\"param\": index, \"unit\": u}"
                        + (" or {\"over_initial\": v, \"unit\": u, \"at\": \"well\" or \"base\"}"
                           if name in BOTTOMHOLE_LIMITS else ""))
    unknown = sorted(set(spec) - {"value", "param", "unit"})
    if unknown:  # a misspelled "unit" would otherwise leave the value in the default unit
        raise UserError(f"{source}: quantities.{name}: unknown key {unknown[0]!r} (known: value, param, unit)")
    unit = spec.get("unit", si_unit)
    if unit not in units:
        raise UserError(f"{source}: quantities.{name}: unit {unit!r} is not one of {', '.join(units)}")
    scale, offset = units[unit]
    if "param" in spec:
        index = spec["param"]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 26:
            raise UserError(f"{source}: quantities.{name}: param must be an index 0..25, got {index!r}")
        return {"param": index, "unit": unit, "scale": scale, "offset": offset}
    value = spec["value"]
    try:
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        raise UserError(f"{source}: quantities.{name}: value must be a finite number, got {str(value)[:40]}")
    return {"value": value * scale + offset, "unit": si_unit}


def _limit_over_initial(name: str, spec: dict, source: str) -> dict:
    """{"over_initial": v, "unit": u, "at": reference} -> {"over_initial": Pa, "at": reference, "unit": "Pa"}."""
    unknown = sorted(set(spec) - {"over_initial", "unit", "at"})
    if unknown:
        raise UserError(f"{source}: quantities.{name}: unknown key {unknown[0]!r} (known: over_initial, unit, at)")
    unit = spec.get("unit", "Pa")
    if unit not in _PRESSURE:
        raise UserError(f"{source}: quantities.{name}: unit {unit!r} is not one of {', '.join(_PRESSURE)}")
    at = spec.get("at")
    if at not in LIMIT_REFERENCES:
        raise UserError(f"{source}: quantities.{name}: at {at!r} is not one of {', '.join(LIMIT_REFERENCES)} "
                        "(the initial pressure over which the limit is given: the well's own, or the reservoir base's)")
    value = spec["over_initial"]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
            and abs(value * _PRESSURE[unit][0]) <= 1e9):
        raise UserError(f"{source}: quantities.{name}: over_initial must be a finite pressure, got {str(value)[:40]}")
    return {"over_initial": value * _PRESSURE[unit][0], "at": at, "unit": "Pa"}


def bottomhole_limit(physics: "Physics", name: str, pressure0, active):
    """A resolved limit (Pa) as the priors take it: None (not declared), a number, or a grid where
    it is over each well's own initial pressure (physics/priors.Reservoir.producer_min_bhp)."""
    value, at = physics.values.get(name), physics.limits_at.get(name)
    if value is None or at is None:
        return value
    if at == "well":
        return np.asarray(pressure0, np.float64) + value
    base = base_pressure(pressure0, active)
    return None if base is None else base + value


def base_pressure(pressure0, active) -> float | None:
    """Pa, the mean initial pressure of the deepest active layer (a limit "at": "base" is over it)."""
    act = np.asarray(active, bool)
    layers = np.flatnonzero(act.any(axis=(1, 2)))
    if not layers.size:
        return None
    deepest = int(layers.max())  # Z grows with depth (schema)
    return float(np.mean(np.asarray(pressure0, np.float64)[deepest][act[deepest]]))


def load(path) -> Description:
    path = files.regular_file(path, "dataset description")
    try:
        d = json.loads(path.read_text())
    except RecursionError:
        raise UserError(f"{path}: dataset description: nested too deeply to be a description") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: dataset description: not readable JSON ({str(err).splitlines()[0]})") from None
    return Description.from_dict(d, str(path))


def find(input_root, explicit=None) -> Description:
    """``explicit`` if given, else ``input_root/description.json`` if present, else an empty one."""
    if explicit:
        return load(explicit)
    candidate = Path(input_root) / FILE_NAME if input_root and Path(input_root).is_dir() else None
    if candidate is not None and candidate.is_file():
        return load(candidate)
    return Description()


def write(path, desc: Description) -> None:
    Path(path).write_text(json.dumps({"format": "voxel-ode dataset description 1", **desc.to_dict()}, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Resolution per file: declared values, inferences, what is unknown
# ---------------------------------------------------------------------------
@dataclass
class Physics:
    """One run's physical inputs in SI units, and how each was obtained."""

    permeability_factor: float  # raw permeability x this = m^2
    first_report: str  # "initial" or "year1"
    lateral_boundary: str | None
    values: dict  # quantity name -> SI value (declared ones only)
    notes: dict  # item -> "declared" / "inferred: why" / "unknown: consequence"
    outside_heat_exchange: bool = True
    wellbore: bool = True  # well_inflow "wellbore"
    limits_at: dict = field(default_factory=dict)  # bottomhole limit -> LIMIT_REFERENCES, if over_initial

    @property
    def cell_size(self) -> tuple[float, float, float] | None:
        if all(q in self.values for q in CELL_SIZE_QUANTITIES):
            return tuple(self.values[q] for q in CELL_SIZE_QUANTITIES)
        return None


def resolve(desc: Description, params, perm_active, pressure0_active, first_pressure_active, where: str) -> Physics:
    """Declared values from ``desc`` (params: the run's ParamsScalar) and inferences from the data.

    perm_active: PermX values of active cells as stored; pressure0_active / first_pressure_active:
    Input/Pressure0 and Output/Pressure[0] at active cells. Raises UserError (naming ``where``) for
    physically impossible declared values."""
    notes, values = {}, {}
    for name, spec in desc.quantities.items():
        if "over_initial" in spec:
            values[name] = spec["over_initial"]
            how = desc.calibrated.get(name, "declared")
            notes[name] = f"{how}: {spec['over_initial'] / 1e5:+.4g} bar over the initial pressure at the {spec['at']}"
            continue
        value = spec["value"] if "value" in spec else float(params[spec["param"]]) * spec["scale"] + spec["offset"]
        _check_range(name, value, where, spec)
        values[name] = value
        notes[name] = "declared" + (f" (ParamsScalar[{spec['param']}], {spec['unit']})" if "param" in spec else "")
        if name in desc.calibrated:
            notes[name] = f"{desc.calibrated[name]}: {value:.4g} {QUANTITIES[name][0]}"
    _check_against_data(desc, values, perm_active, pressure0_active, first_pressure_active, where)
    unit = desc.permeability_unit
    if unit is None:
        unit = infer_permeability_unit(perm_active)
        notes["permeability_unit"] = f"inferred: {unit} (median active PermX {np.median(perm_active):.3g})"
    else:
        notes["permeability_unit"] = f"declared: {unit}"
    first = desc.first_report
    if first is None:
        # without reports (a forecast's inputs-only file) the start is the initial state
        first = "initial" if first_pressure_active is None else infer_first_report(pressure0_active,
                                                                                  first_pressure_active)
        notes["first_report"] = f"inferred: {first} (Output/Pressure[0] {'equals' if first == 'initial' else 'differs from'} Input/Pressure0)"
    else:
        notes["first_report"] = f"declared: {first}"
    boundary = desc.lateral_boundary
    notes["lateral_boundary"] = f"declared: {boundary}" if boundary else "unknown: fitted by prep on training runs, else no physics priors"
    if "lateral_boundary" in desc.calibrated:
        notes["lateral_boundary"] = f"{desc.calibrated['lateral_boundary']}: {boundary}"
    for name in CELL_SIZE_QUANTITIES:
        if name not in values:
            notes[name] = "unknown: " + QUANTITIES[name][2]
    # the assumptions the priors make without them (pack.reservoir), said once
    covered = {"TotalCompressibility": [{"TotalCompressibility"}, {"RockCompressibility"}, {"FluidCompressibility"}],
               "RockHeatCapacityVolumetric": [{"RockHeatCapacityVolumetric"}, {"RockHeatCapacity", "RockDensity"}],
               "RockThermalConductivity": [{"RockThermalConductivity"}], "InjectionTemperature": [{"InjectionTemperature"}]}
    for name, ways in covered.items():
        if not any(way <= set(values) for way in ways):
            notes[name] = "not declared: " + QUANTITIES[name][2]
    heat = desc.outside_heat_exchange
    notes["outside_heat_exchange"] = f"declared: {heat}" if heat is not None else "not declared: true"
    if "outside_heat_exchange" in desc.calibrated:
        notes["outside_heat_exchange"] = f"{desc.calibrated['outside_heat_exchange']}: {heat}"
    notes["well_inflow"] = f"declared: {desc.well_inflow}" if desc.well_inflow else "not declared: wellbore"
    return Physics(PERMEABILITY_UNITS[unit], first, boundary, values, notes, heat is not False,
                   desc.well_inflow != "as_given",
                   {name: spec["at"] for name, spec in desc.quantities.items() if "over_initial" in spec})


def _check_against_data(desc: Description, values: dict, perm_active, pressure0_active, first_pressure_active,
                        where: str) -> None:
    """A declared entry the data contradicts is refused, naming the entry to fix: a permeability
    unit off by the factor between m^2 and mD, a first report at the end of year 1 that is the
    initial state itself (t = 0 would be there twice), a compressibility that adds up to 0."""
    unit = desc.permeability_unit
    median = float(np.median(perm_active)) if np.size(perm_active) else 0.0
    plausible = 0.0 < median <= 1e7  # else no unit makes sense: the range check says so
    if unit is not None and plausible and infer_permeability_unit(perm_active) != unit:
        raise UserError(f"{where}: (description): permeability_unit is declared {unit}, but the median active "
                        f"PermX is {median:.3g}, a value of rock in {infer_permeability_unit(perm_active)} "
                        "(m^2: below 1e-9, mD: above 1e-4): fix permeability_unit in the dataset description")
    if desc.first_report == "year1" and first_pressure_active is not None and np.size(pressure0_active) \
            and infer_first_report(pressure0_active, first_pressure_active) == "initial":
        raise UserError(f"{where}: (description): first_report is declared year1, but Output/Pressure[0] equals "
                        "Input/Pressure0: the first report is the initial state (t = 0 would be there twice); "
                        "declare first_report initial")
    total = declared_compressibility(values)
    if total is not None and total <= 0:
        raise UserError(f"{where}: (description): the declared compressibility adds up to {total:g} /Pa; water "
                        "alone is ~4.5e-10 /Pa: fix TotalCompressibility / RockCompressibility / FluidCompressibility")


def declared_cell_size(desc: Description, params) -> tuple[float, float, float] | None:
    """(dx, dy, dz) in m where the description declares all three (params: the run's ParamsScalar)."""
    out = []
    for name in CELL_SIZE_QUANTITIES:
        spec = desc.quantities.get(name)
        if spec is None or ("param" in spec and params is None):
            return None
        value = spec["value"] if "value" in spec else float(params[spec["param"]]) * spec["scale"] + spec["offset"]
        if not (math.isfinite(value) and value > 0):
            return None
        out.append(value)
    return tuple(out)


def infer_permeability_unit(perm_active) -> str:
    """m^2 values of rock are < 1e-9; millidarcy values of the same rock are > 1e-4."""
    median = float(np.median(perm_active)) if np.size(perm_active) else 0.0
    return "m2" if median < 1e-6 else "mD"


def infer_first_report(pressure0_active, first_pressure_active) -> str:
    """Output[0] equal to Input/Pressure0 (within float32 rounding) -> the initial state."""
    p0 = np.asarray(pressure0_active, np.float64)
    p1 = np.asarray(first_pressure_active, np.float64)
    if p0.size == 0:
        return "initial"
    return "initial" if np.max(np.abs(p1 - p0)) <= 1e-6 * max(np.max(np.abs(p0)), 1.0) else "year1"


# physically possible ranges (SI) of declared quantities
_RANGES = {
    "CellSizeX": (1e-2, 1e5), "CellSizeY": (1e-2, 1e5), "CellSizeZ": (1e-2, 1e5),
    "TotalCompressibility": (0.0, 1e-6), "RockCompressibility": (0.0, 1e-6), "FluidCompressibility": (0.0, 1e-6),
    "InjectionTemperature": (200.0, 700.0), "InjectionTemperatureOffset": (-100.0, 100.0), "RockHeatCapacityVolumetric": (1e5, 1e7),
    "RockHeatCapacity": (100.0, 1e4), "RockDensity": (500.0, 6000.0), "RockThermalConductivity": (0.05, 20.0),
    "BoundaryMultiplier": (0.0, 1e9),
    "ProducerMinBottomholePressure": (0.0, 1e9), "InjectorMaxBottomholePressure": (0.0, 1e9), "WellRadius": (1e-3, 10.0),
}


def _check_range(name, value, where, spec):
    lo, hi = _RANGES[name]
    if not (math.isfinite(value) and lo <= value <= hi):
        src = f"ParamsScalar[{spec['param']}] " if "param" in spec else ""
        raise UserError(f"{where}: (description): {name} = {value:.4g} {QUANTITIES[name][0]} ({src}as declared) is outside "
                        f"[{lo:g}, {hi:g}]: fix its entry in the dataset description")
