"""stats.json: the normalization statistics of a prepped dataset, and the one place that
computes, writes, reads and checks them.

Prep streams each run's partial statistics (count / mean / M2 per channel, merged with Chan's
parallel formula, which stays exact in float64 even for Pressure ~1e7 Pa where plain sums of
squares lose digits) and combines the training split's into the stats.json dict
(``compute_stats``). Everything downstream reads it through ``Stats`` (``Stats.load``): checked
once, with its dataset description, whether prep computed physics priors, and the digest of
the parts that change a model's result (what a checkpoint records and compares).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from voxel_ode import schema
from voxel_ode.data import description, envelope, prepped, start_scalars
from voxel_ode import files
from voxel_ode.utils import UserError, signed_log1p

STATS_FORMAT = 1


# |delta| quantiles come from a random subsample of active cells, at most this many per sim and channel.
DELTA_SAMPLES_PER_SIM = 100_000


QUANTILES = (0.5, 0.9, 0.99)


# Static channels that may get a log10 transform (strictly positive, > 3 decades over active cells).
# Pressure0/Temperature0 stay linear like the dynamic Pressure/Temperature they start.
LOG_CANDIDATES = tuple(
    f.name for f in schema.RAW_STATIC_FIELDS
    if f.kind == "continuous" and f.name not in ("Pressure0", "Temperature0")
)


LOG_DECADES = 3.0


# Params that are >= 0 with positive values over more than a factor 100 are scale-like
# (support strengths, compressibilities): equal ratios should be equal steps. Linear
# z-scoring put a log-uniform boundary-support strength of 0.001-0.013 all within 0.05
# standard deviations, so the network could not tell closed from weakly supported runs.
PARAM_LOG_DECADES = 2.0


MIN_STD = 1e-12


# ---------------------------------------------------------------------------
# Streaming statistics
# ---------------------------------------------------------------------------
@dataclass
class Moments:
    """Count, mean, M2 (sum of squared deviations), min, max of one channel; mergeable."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = np.asarray(x, np.float64)
        mean = float(x.mean())
        self.merge(Moments(x.size, mean, float(np.square(x - mean).sum()), float(x.min()), float(x.max())))

    def merge(self, other: "Moments") -> None:
        if other.count == 0:
            return
        n = self.count + other.count
        d = other.mean - self.mean
        self.mean += d * other.count / n
        self.m2 += other.m2 + d * d * self.count * other.count / n
        self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


def merged(parts: Iterable[Moments]) -> Moments:
    total = Moments()
    for m in parts:
        total.merge(m)
    return total


def _safe_std(std: float) -> float:
    return std if std >= MIN_STD else 1.0  # a constant channel: never divide by zero


class DynamicStats:
    """Streaming Pressure/Temperature and per-step change statistics over one mask."""

    def __init__(self, mask: np.ndarray, n_steps: int, seed: int):
        self.mask = mask
        self.flat_idx = np.flatnonzero(mask)
        self.state = [Moments() for _ in schema.DYNAMIC_NAMES]
        self.delta = [Moments() for _ in schema.DYNAMIC_NAMES]
        self.samples = [[] for _ in schema.DYNAMIC_NAMES]
        self.per_step = math.ceil(DELTA_SAMPLES_PER_SIM / max(n_steps - 1, 1))
        self.rng = np.random.default_rng(seed)
        self.prev = None

    def add(self, step: np.ndarray) -> None:
        """step: (2, Z, Y, X) cleaned values at one time."""
        values = step.reshape(step.shape[0], -1)[:, self.flat_idx]  # (2, n_active)
        for c in range(values.shape[0]):
            self.state[c].add(values[c])
        if self.prev is not None:
            delta = values - self.prev  # float32 difference of close values is exact
            n = delta.shape[1]
            pick = slice(None) if n <= self.per_step else self.rng.integers(0, n, self.per_step)
            for c in range(delta.shape[0]):
                self.delta[c].add(delta[c])
                self.samples[c].append(np.abs(delta[c][pick]).astype(np.float32))
        self.prev = values

    def result(self) -> dict:
        return {
            "state": self.state,
            "delta": self.delta,
            "delta_abs_samples": [np.concatenate(s) if s else np.zeros(0, np.float32) for s in self.samples],
        }


def static_moments(static_stack, mask):
    static_raw, static_log = [], []
    for c in range(schema.N_STATIC):
        values = static_stack[c][mask].astype(np.float64)
        m = Moments()
        m.add(values)
        static_raw.append(m)
        lm = Moments()
        positive = values[values > 0]
        if positive.size == values.size:  # log only meaningful when every active value is > 0
            lm.add(np.log10(positive))
        static_log.append(lm)
    return static_raw, static_log


def _transform_for(name: str, raw: Moments, log: Moments) -> str:
    if name in LOG_CANDIDATES and raw.count and raw.min > 0 and log.count == raw.count \
            and math.log10(raw.max / raw.min) > LOG_DECADES:
        return "log10"
    return "none"


def _vector_stats(values: np.ndarray, names: Sequence[str], allow_log: bool) -> dict:
    """mean/std per column of a (n, C) array; log10 for scale-like columns (see PARAM_LOG_DECADES).

    A log column's "floor" (half its smallest positive value) stands in for zeros, so a
    run with e.g. closed boundaries (strength 0) sits just below the weakest positive one.
    """
    transforms, floors, means, stds = [], [], [], []
    for c in range(values.shape[1]):
        col = values[:, c].astype(np.float64)
        positive = col[col > 0]
        use_log = (allow_log and col.min() >= 0 and positive.size >= 2
                   and math.log10(positive.max() / positive.min()) > PARAM_LOG_DECADES)
        floor = float(positive.min()) / 2 if use_log else None
        x = np.log10(np.maximum(col, floor)) if use_log else col
        transforms.append("log10" if use_log else "none")
        floors.append(floor)
        means.append(float(x.mean()))
        stds.append(_safe_std(float(x.std())))
    return {"names": list(names), "transform": transforms, "floor": floors, "mean": means, "std": stds}


def _signed_log1p_stats(values: np.ndarray, names: Sequence[str]) -> dict:
    x = signed_log1p(values.astype(np.float64))
    return {"names": list(names), "transform": ["signed_log1p"] * len(names),
            "mean": [float(v) for v in x.mean(axis=0)], "std": [_safe_std(float(v)) for v in x.std(axis=0)]}


def compute_stats(train: list[dict], rel_train: list[str], rel_test: list[str], fill_value, patches: dict,
                  rel_calibration: Sequence[str] = ()) -> dict:
    """Combine the per-simulation partial statistics of the training split into the stats.json dict
    (``rel_calibration``, the bands' held-out runs, only listed: not part of the digest)."""
    grid, n_t = train[0]["grid"], train[0]["n_timesteps"]
    if sum(s["n_active"] for s in train) == 0:
        raise UserError("stats: training split has no active cells")
    static = {"names": list(schema.STATIC_NAMES), "transform": [], "mean": [], "std": []}
    for c, name in enumerate(schema.STATIC_NAMES):
        if name == schema.INJECTION_GAP:
            # Signed and heavy-tailed (0-150 K): the Normalizer scales it like the temperature target.
            static["transform"].append("asinh")
            static["mean"].append(0.0)
            static["std"].append(1.0)
            continue
        raw = merged(s["static_raw"][c] for s in train)
        log = merged(s["static_log"][c] for s in train)
        tr = _transform_for(name, raw, log)
        m = log if tr == "log10" else raw
        static["transform"].append(tr)
        static["mean"].append(m.mean)
        static["std"].append(_safe_std(m.std))
    state = [merged(s["state"][c] for s in train) for c in range(schema.N_DYNAMIC)]
    delta = [merged(s["delta"][c] for s in train) for c in range(schema.N_DYNAMIC)]
    samples = [np.concatenate([s["delta_abs_samples"][c] for s in train]) for c in range(schema.N_DYNAMIC)]
    quantiles = {str(q): [float(np.quantile(samples[c], q)) if samples[c].size else 0.0
                          for c in range(schema.N_DYNAMIC)] for q in QUANTILES}
    scalars = np.concatenate([s["scalars"] for s in train])  # (n_train * T, 5)
    cumulative = [schema.SCALAR_NAMES.index(n) for n in schema.CUMULATIVE_SCALARS]
    increments = np.concatenate([np.diff(s["scalars"][:, cumulative], axis=0) for s in train])
    return {
        "format": STATS_FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "grid_shape": list(grid),
        "n_timesteps": n_t,
        "fill_value": fill_value,
        "train_sims": rel_train,
        "test_sims": rel_test,
        "calibration_sims": list(rel_calibration),
        "static": static,
        "dynamic": {"names": list(schema.DYNAMIC_NAMES), "mean": [m.mean for m in state],
                    "std": [_safe_std(m.std) for m in state]},
        "delta": {"names": list(schema.DYNAMIC_NAMES), "mean": [m.mean for m in delta],
                  "std": [_safe_std(m.std) for m in delta], "abs_quantiles": quantiles,
                  "per_sim_rms": [[math.sqrt(s["delta"][c].m2 / s["delta"][c].count + s["delta"][c].mean ** 2)
                                   if s["delta"][c].count else 0.0 for c in range(schema.N_DYNAMIC)] for s in train]},
        "params": _vector_stats(np.stack([s["params"] for s in train]), schema.PARAM_NAMES, allow_log=True),
        "scalars": _signed_log1p_stats(scalars, schema.SCALAR_NAMES),
        "scalar_increments": _signed_log1p_stats(increments, schema.CUMULATIVE_SCALARS),
        "patches": patches,
        "priors": _all_or_none([s["priors"] for s in train], "physics priors"),
        envelope.RANGES_KEY: envelope.ranges([s["inputs"] for s in train]),
        start_scalars.KEY: start_scalars.fit([s["start"] for s in train]),
    }


def _all_or_none(flags, what) -> bool:
    if any(flags) and not all(flags):
        raise UserError(f"prep: {what} could be computed for some training runs only: declare the same "
                        "quantities for every run (voxel-ode inspect FILE --description D shows what each run gives)")
    return bool(flags and flags[0])


class Stats:
    """A checked stats.json: sections read as ``stats["dynamic"]``; ``data`` is the plain dict
    (what a checkpoint stores). Built only through here, so every stage reads a valid one."""

    def __init__(self, data: dict, source):
        validate_stats(data, source)  # an edited file: NaN, zero scales, unknown transforms, shapes
        self.data, self.source = data, str(source)

    @classmethod
    def load(cls, path) -> "Stats":
        """stats.json (a file, or the prepped root holding it), with its format checked."""
        path = Path(path)
        if path.is_dir():
            path = path / schema.STATS_FILE
        if not path.exists():  # a prep killed while swapping its output in: the previous one is put back
            files.restore_interrupted(path.parent, schema.STATS_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path}: stats: file not found (did prep finish?)") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: stats: not valid JSON ({err})") from None
        except RecursionError:
            raise UserError(f"{path}: stats: nested too deeply to be a stats.json") from None
        if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
            raise UserError(f"{path}: format: expected format {STATS_FORMAT}, got "
                            f"{data.get('format') if isinstance(data, dict) else None!r}")
        for key in ("static", "dynamic", "delta", "params", "scalars", "scalar_increments", "patches"):
            if key not in data:
                raise UserError(f"{path}: {key}: missing section")
        if data["static"]["names"] != list(schema.STATIC_NAMES):
            raise UserError(f"{path}: static: channel names {data['static']['names']} differ from schema.STATIC_NAMES")
        return cls(data, path)

    def __getitem__(self, key):
        return self.data[key]

    def __contains__(self, key) -> bool:
        return key in self.data

    def get(self, key, default=None):
        return self.data.get(key, default)

    @property
    def description(self) -> description.Description:
        """The dataset description prep used (declared and calibrated entries)."""
        return description.Description.from_dict(self.data.get("description") or {}, f"{self.source}: description")

    @property
    def priors(self) -> bool:
        """Whether prep computed the physics priors (else their channels are zeros)."""
        return bool(self.data.get("priors", False))

    @property
    def preparation(self) -> dict:
        """The dataset's preparation record (prepped.preparation_record): what a checkpoint's data
        must share with the data it is applied to."""
        return prepped.preparation_record(self.data.get("description") or {}, self.priors)

    @property
    def calibration_warnings(self) -> list[str]:
        """What prep's calibration found doubtful (stats.json "calibration"), one line each: every
        stage that uses these stats repeats them, since the priors' constants come from that fit."""
        report = self.data.get("calibration")
        warnings = report.get("warnings", []) if isinstance(report, dict) else []
        return [str(w) for w in warnings] if isinstance(warnings, list) else []

    def outside_training(self, inputs: dict) -> list[str] | None:
        """envelope.outside for a run's inputs (envelope.run_inputs) against the training runs'
        ranges; None where prep recorded none (stats from an earlier version)."""
        training = self.data.get(envelope.RANGES_KEY)
        return None if training is None else envelope.outside(training, inputs, envelope.param_labels(self.description))

    @property
    def digest(self) -> str:
        """sha256 of the parts that change a model's result (RESULT_KEYS)."""
        return result_digest(self.data)


def write(out_root, data: dict) -> None:
    """stats.json, written last by prep (a folder without it is visibly unfinished)."""
    files.write_json_atomic(Path(out_root) / schema.STATS_FILE, data)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------
# The parts of stats.json that change a rollout's result (normalization, transforms, the
# change scale from per_sim_rms and the quantiles, the description the derived channels used).
RESULT_KEYS = ("static", "dynamic", "delta", "params", "scalars", "scalar_increments", "description", "priors")


_TRANSFORMS = {"static": {"none", "log10", "asinh"}, "params": {"none", "log10"},
               "scalars": {"none", "signed_log1p"}, "scalar_increments": {"none", "signed_log1p"}}


_SECTIONS = {"static": schema.STATIC_NAMES, "dynamic": schema.DYNAMIC_NAMES, "delta": schema.DYNAMIC_NAMES,
             "params": schema.PARAM_NAMES, "scalars": schema.SCALAR_NAMES,
             "scalar_increments": schema.CUMULATIVE_SCALARS}


def _numbers(value, n: int | None, where: str, positive=False, nonneg=False) -> np.ndarray:
    try:
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise ValueError
        x = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: not a list of numbers ({str(value)[:60]})") from None
    if n is not None and x.shape != (n,):
        raise UserError(f"{where}: shape {x.shape}, expected ({n},)")
    if not np.isfinite(x).all():
        raise UserError(f"{where}: non-finite value {x[~np.isfinite(x)].ravel()[0]}")
    if positive and not (x > 0).all():
        raise UserError(f"{where}: value {x[~(x > 0)].ravel()[0]} is not > 0 (a scale must be positive)")
    if nonneg and not (x >= 0).all():
        raise UserError(f"{where}: negative value {x[x < 0].ravel()[0]}")
    return x


def validate_stats(stats, source) -> None:
    """Every field a Normalizer reads: names, known transforms, shapes, finite means,
    positive scales. Raises UserError "source: section/field: what"."""
    if not isinstance(stats, dict):
        raise UserError(f"{source}: stats: not a JSON object")
    if envelope.RANGES_KEY in stats:
        envelope.check_ranges(stats[envelope.RANGES_KEY], source)
    start_scalars.check(stats.get(start_scalars.KEY), source)
    for section, names in _SECTIONS.items():
        sec = stats.get(section)
        where = f"{source}: {section}"
        if not isinstance(sec, dict):
            raise UserError(f"{where}: missing section")
        if "names" in sec and list(sec["names"]) != list(names):
            raise UserError(f"{where}/names: {sec['names']} differ from this version's {list(names)}")
        _numbers(sec.get("mean"), len(names), f"{where}/mean")
        _numbers(sec.get("std"), len(names), f"{where}/std", positive=True)
        transforms = sec.get("transform", ["none"] * len(names))
        if section in _TRANSFORMS:
            if not isinstance(transforms, list) or len(transforms) != len(names):
                raise UserError(f"{where}/transform: expected a list of {len(names)} names")
            unknown = [t for t in transforms if t not in _TRANSFORMS[section]]
            if unknown:
                raise UserError(f"{where}/transform: unknown transform {unknown[0]!r} "
                                f"(known: {sorted(_TRANSFORMS[section])})")
    params = stats["params"]
    floors = params.get("floor") or [None] * len(schema.PARAM_NAMES)
    if len(floors) != len(schema.PARAM_NAMES):
        raise UserError(f"{source}: params/floor: {len(floors)} entries, expected {len(schema.PARAM_NAMES)}")
    for name, tr, floor in zip(schema.PARAM_NAMES, params.get("transform", []), floors):
        if tr == "log10" and not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
            raise UserError(f"{source}: params/floor: {name} is log10-scaled but its floor {floor!r} is not > 0")
    delta = stats["delta"]
    for q, values in (delta.get("abs_quantiles") or {}).items():
        _numbers(values, schema.N_DYNAMIC, f"{source}: delta/abs_quantiles/{q}", nonneg=True)
    rms = delta.get("per_sim_rms")
    if rms is not None:
        x = _numbers(rms, None, f"{source}: delta/per_sim_rms", nonneg=True)
        if x.ndim != 2 or x.shape[1] != schema.N_DYNAMIC:
            raise UserError(f"{source}: delta/per_sim_rms: shape {x.shape}, expected (runs, {schema.N_DYNAMIC})")
    if stats.get("description") is not None:
        description.Description.from_dict(stats["description"], f"{source}: description")


def result_part(stats: dict) -> dict:
    return {k: stats.get(k) for k in RESULT_KEYS}


def result_digest(stats: dict) -> str:
    """sha256 of the result-relevant part of stats (RESULT_KEYS), canonical JSON."""
    text = json.dumps(result_part(stats), sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def first_difference(a, b, path: str = "") -> tuple[str, str] | None:
    """(path, "a vs b") of the first place where two JSON-like values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = first_difference(a.get(key), b.get(key), f"{path}/{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return path, f"{len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return None if same else (path, f"{str(a)[:40]} vs {str(b)[:40]}")


def check_same_stats(given: dict, given_src, reference: dict, reference_src, reference_digest: str | None = None) -> None:
    """A stats dict given next to a checkpoint must equal the checkpoint's in every result field."""
    if reference_digest is not None and result_digest(given) == reference_digest:
        return
    diff = first_difference(result_part(given), result_part(reference))
    if diff:
        raise UserError(f"{given_src}: {diff[0]}: values differ from the stats the checkpoint was trained with "
                        f"({reference_src}): {diff[1]} (given vs checkpoint)")
