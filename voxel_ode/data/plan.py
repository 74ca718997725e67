"""A plan's rows, torch-free: the well naming of a base run, the plan file's rows parsed into
``Scenario`` s, and how a row changes a list of wells. Shared by ``voxel-ode sweep``
(inference/scenarios.py, which documents the plan's columns) and ``voxel-ode synth --engine darts
--plan`` (synth/darts_plan.py), so that both read a row the same way."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from voxel_ode import files
from voxel_ode.utils import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
PARAM_PREFIX = "param:"
RATE_PREFIX = "rate_"
FIXED_COLUMNS = ("name", "scale_rates", "shut", "add_well", "move_well")


class PlanError(UserError):
    """Bad plan rows: one line each (``lines``), all found before any work."""

    def __init__(self, lines):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass
class Well:
    name: str
    y: int
    x: int
    zs: np.ndarray  # perforated layers (active cells)
    rates: np.ndarray  # kg/s per perforated cell, signed like InjRate

    @property
    def total(self) -> float:
        return float(self.rates.sum())

    def describe(self) -> str:
        return (f"{self.name} (x={self.x}, y={self.y}, z {int(self.zs.min())}..{int(self.zs.max())}, "
                f"{self.total:+.4g} kg/s)")


@dataclass
class WellSpec:
    name: str
    x: int
    y: int
    z0: int
    z1: int
    rate: float | None


@dataclass
class Scenario:
    name: str
    row: int  # 1-based row number in the plan (the header is not counted)
    rates: dict = field(default_factory=dict)
    scale: float | None = None
    shut: list = field(default_factory=list)
    add: list = field(default_factory=list)
    move: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)  # the row as given (non-empty cells), for the record


def find_wells(inj_rate: np.ndarray, active: np.ndarray) -> list[Well]:
    """The wells of an InjRate grid: injectors I1.., producers P1.., in C order of their first cell."""
    rate = np.where(active & np.isfinite(inj_rate), inj_rate, 0.0)
    found = []
    for sign in (1, -1):
        cells = np.argwhere(rate * sign > 0)  # (z, y, x) in C order
        columns = {}
        for z, y, x in cells:
            columns.setdefault((int(y), int(x)), []).append(int(z))
        for (y, x), zs in columns.items():
            zs = np.asarray(zs)
            first = np.ravel_multi_index((zs[0], y, x), rate.shape)
            found.append((first, sign, y, x, zs))
    found.sort(key=lambda item: item[0])
    wells, counts = [], {1: 0, -1: 0}
    for _, sign, y, x, zs in found:
        counts[sign] += 1
        wells.append(Well(f"{'I' if sign > 0 else 'P'}{counts[sign]}", y, x, zs, rate[zs, y, x].astype(np.float64)))
    return wells


def read_rows(path) -> list[dict]:
    """The plan's rows as {column: text or value}, empty cells left out."""
    path = files.regular_file(path, "--plan")
    text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's CSV may start with a byte-order mark
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{path}: a JSON plan is a list of objects, one per scenario")
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = [dict(r) for r in reader]
        if reader.fieldnames is None or any(None in r for r in rows):
            raise UserError(f"{path}: a CSV plan needs a header row and no row longer than it")
    else:
        raise UserError(f"{path}: a plan is a .csv (header row) or a .json (list of objects) file")
    rows = [{str(k).strip(): v for k, v in r.items() if v is not None and str(v).strip() != ""} for r in rows]
    if not rows:
        raise UserError(f"{path}: the plan has no scenario")
    return rows


def _number(value, what: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}: {str(value)[:40]!r} is not a finite number")
    return number


def _items(value) -> list[str]:
    """A ``;``-separated text, or a JSON list, as a list of non-empty texts."""
    parts = value if isinstance(value, list) else str(value).split(";")
    return [str(p).strip() for p in parts if str(p).strip()]


def _well_spec(text: str, column: str, rate_needed: bool) -> WellSpec:
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in ((6,) if rate_needed else (5, 6)):
        form = "name:x:y:z0:z1:rate" if rate_needed else "name:x:y:z0:z1[:rate]"
        raise ValueError(f"{column}: {text!r} is not {form}")
    try:
        x, y, z0, z1 = (int(p) for p in parts[1:5])
    except ValueError:
        raise ValueError(f"{column}: {text!r}: x, y, z0, z1 must be whole numbers") from None
    rate = _number(parts[5], f"{column} {parts[0]} rate") if len(parts) == 6 else None
    return WellSpec(parts[0], x, y, z0, z1, rate)


def parse_row(row: dict, number: int) -> Scenario:
    """One plan row -> a Scenario (its values parsed, not yet checked against the base).
    Raises ValueError naming the column."""
    sc = Scenario(str(row.get("name", "")).strip(), number, changes={k: v for k, v in row.items() if k != "name"})
    for column, value in row.items():
        if column == "name":
            continue
        if column.startswith(RATE_PREFIX):
            sc.rates[column[len(RATE_PREFIX):]] = _number(value, column)
        elif column.startswith(PARAM_PREFIX):
            sc.params[column[len(PARAM_PREFIX):]] = _number(value, column)
        elif column == "scale_rates":
            sc.scale = _number(value, column)
        elif column == "shut":
            sc.shut = _items(value)
        elif column in ("add_well", "move_well"):
            specs = [_well_spec(t, column, column == "add_well") for t in _items(value)]
            (sc.add if column == "add_well" else sc.move).extend(specs)
        else:
            raise ValueError(f"unknown column {column!r} (known: {', '.join(FIXED_COLUMNS)}, "
                             f"{RATE_PREFIX}<well>, {PARAM_PREFIX}<quantity>)")
    return sc


def load_checked(path, check) -> list[Scenario]:
    """Every row of the plan at ``path`` parsed and given to ``check`` (raises ValueError), names
    unique; all bad rows at once (PlanError, one line per row naming it)."""
    scenarios, problems, seen = [], [], set()
    for number, row in enumerate(read_rows(path), 1):
        try:
            sc = parse_row(row, number)
            check(sc)
            if sc.name in seen:
                raise ValueError("name: used by an earlier row")
        except ValueError as err:
            problems.append(f"{path}: row {number} ({str(row.get('name', '?'))[:40]!r}): {err}")
            continue
        seen.add(sc.name)
        scenarios.append(sc)
    if problems:
        raise PlanError(problems)
    return scenarios


def changed_wells(wells: list[Well], sc: Scenario, perforate=None) -> list[Well]:
    """The scenario's wells (shut ones with zero rates), in the order move, add, rate_, shut, scale.
    ``perforate(spec, total)`` -> Well makes a moved or added well (needed only for those)."""
    wells = {w.name: Well(w.name, w.y, w.x, w.zs.copy(), w.rates.copy()) for w in wells}
    for spec in sc.move:
        old = wells[spec.name]
        wells[spec.name] = perforate(spec, old.total if spec.rate is None else spec.rate)
    for spec in sc.add:
        wells[spec.name] = perforate(spec, spec.rate)
    for name, total in sc.rates.items():
        well = wells[name]
        share = well.rates / well.total if well.total != 0 else np.full(len(well.zs), 1.0 / len(well.zs))
        well.rates = total * share
    for name in sc.shut:
        wells[name].rates = np.zeros_like(wells[name].rates)
    if sc.scale is not None:
        for well in wells.values():
            well.rates = well.rates * sc.scale
    return list(wells.values())
