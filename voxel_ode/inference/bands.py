"""Uncertainty bands: split conformal prediction on held-out calibration runs, and the bands file
(``<checkpoint stem>.bands.json``, this module its only reader and writer).

Method (``voxel-ode bands``). The model rolls out the ``calibration/`` runs (prep
--n_calibration: never trained on, not in the statistics). For P and T, every active cell and
step t gets a scale

    sigma = w_change |yhat - y0| + w_prior |yhat - y_prior| + w_front |grad yhat| + w_floor rms_t + eps

with y0 the state at t = 0, y_prior the state the physics priors imply (P0 + the pressure prior's
change; T0 + theta x the injection gap), |grad yhat| the largest difference of the prediction to
an active neighbour and rms_t the run's RMS predicted change over active cells at t. The first
term: cells that change more are less sure; the second: where the model departs from the physics
it was built on (or the priors themselves are off, as on data unlike the training runs) the band
widens; the third: a front (the cold plume's edge, a well's cone) misplaced by a fraction of a
cell errs by that fraction of the jump across it; the floor keeps cells the model leaves still
from getting a band of zero. The nonconformity score is |y - yhat| / sigma.

Cells of one run share its errors (a pressure error is nearly one offset of the whole field), so
a quantile pooled over the calibration runs' cells promises a fresh cell of those runs, not of a
new run. The band is therefore sized for a new run: per step, the pooled quantile q_t of the
calibration cells' scores, times one factor k per variable, the one at which the calibration runs
left out one at a time hold the coverage c (--coverage) of their cells over the steps. The weights
come from a small grid, the one whose pooled band is narrowest; a left-out run is scored at the
weights chosen without it, so the factor pays for the choice too (a choice fitted to the runs it
is then scored on came out ~0.03 short of c on new runs). Field scalars: one relative score per
scalar, |y - yhat| / (|yhat| (t / (T - 1))^p), pooled over the steps (5 runs alone are too few per
step), p from {0, 0.5, 1} as above.

Cost: no extra rollout; a few array operations per step, next to a single model's rollout.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode import metrics as M
from voxel_ode.data import prepped
from voxel_ode.data.stats import Stats
from voxel_ode.inference.rollout import ModelStepper, run_stepper
from voxel_ode.model import checkpoint, precision
from voxel_ode.utils import UserError

FORMAT = 2  # 2: the front term and the factor for new runs
SUFFIX = ".bands.json"
DEFAULT_COVERAGE = 0.9
# the weights' grid (w_change, w_prior, w_front, w_floor); sigma's overall size does not matter (the
# quantile rescales it), so w_change is 0 or 1
WEIGHT_GRID = [w for w in itertools.product((0.0, 1.0), (0.0, 0.5, 1.0, 2.0, 4.0), (0.0, 0.25, 1.0, 4.0),
                                            (0.02, 0.1, 0.3, 1.0))
               if not (w[:3] == (0.0, 0.0, 0.0) and w[3] != 1.0)]  # a floor alone: one choice is enough
TERMS = ("change", "prior", "front")  # sigma's cell terms, in the weights' order (the floor last)
EPS = {"Pressure": 1.0, "Temperature": 1e-3}  # Pa, K: far below any error worth a band
SCALAR_POWERS = (0.0, 0.5, 1.0)
# a scalar's band is at most this many times the largest error the calibration runs made (a new run
# may err more than any of a few; far more only where the factor learnt against exact runs explodes)
SCALAR_WIDTH_CAP = 2.0
# cells per run the weights' choice looks at (a fixed random subset of larger runs): the choice
# compares mean widths, which a few thousand cells already tell apart, and on the seed's grid
# (~10^6 active cells per run) all of them would take hours; quantiles and factor use every cell
CHOICE_CELLS = 5_000
HOW_TO = ("no uncertainty bands: `voxel-ode bands --prepped_root P --ckpt_path C` makes them from the "
          "calibration runs of `prep --n_calibration K`")


# ---------------------------------------------------------------------------
# The bands file
# ---------------------------------------------------------------------------
def default_path(ckpt_path) -> Path:
    return Path(ckpt_path).with_suffix(SUFFIX)


def checkpoint_digest(ckpt_path) -> str:
    """sha256 of the checkpoint file: bands are calibrated for these weights only."""
    h = hashlib.sha256()
    with open(files.regular_file(ckpt_path, "--ckpt_path"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(path, bands: dict) -> Path:
    files.write_json_atomic(path, M.to_jsonable(bands))  # an infinite quantile (too few runs) -> null
    return Path(path)


def load(path, ckpt_path) -> dict:
    """A bands file, checked to belong to ``ckpt_path``."""
    path = Path(path)
    try:
        bands = json.loads(files.regular_file(path, "--bands").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read as a bands file ({err})") from None
    if not isinstance(bands, dict) or bands.get("format") != FORMAT or "grid" not in bands:
        raise UserError(f"{path}: not a bands file of format {FORMAT} (make it again with voxel-ode bands)")
    if bands.get("checkpoint_sha256") != checkpoint_digest(ckpt_path):
        raise UserError(f"{path}: bands calibrated for another checkpoint ({bands.get('checkpoint')}), not "
                        f"{ckpt_path}: run voxel-ode bands for this one")
    return bands


def find(ckpt_path, bands_path=None) -> dict | None:
    """The bands for ``ckpt_path``: ``bands_path`` (must exist), else the default file next to the
    checkpoint if there is one, else None (after one line saying how to get them)."""
    if bands_path is not None:
        return load(bands_path, ckpt_path)
    path = default_path(ckpt_path)
    if path.exists():
        return load(path, ckpt_path)
    print(HOW_TO)
    return None


# ---------------------------------------------------------------------------
# Scales and quantiles
# ---------------------------------------------------------------------------
def prior_state(sim: dict, n_steps: int) -> np.ndarray:
    """(T, 2, Z, Y, X) float32: the state the physics priors imply (the initial state where prep
    computed none): P0 + the pressure prior's change, T0 + theta x InjectionTemperatureGap."""
    static = sim["static"]
    p0, t0 = (static[schema.STATIC_NAMES.index(n)].astype(np.float32) for n in ("Pressure0", "Temperature0"))
    gap = static[schema.STATIC_NAMES.index(schema.INJECTION_GAP)].astype(np.float32)
    priors = sim.get("priors")
    out = np.empty((n_steps, 2) + p0.shape, np.float32)
    for t in range(n_steps):
        theta = priors[t, schema.PRIOR_NAMES.index("ThermalPrior")].astype(np.float32) if priors is not None else 0
        pp = priors[t, schema.PRIOR_NAMES.index("PressurePrior")].astype(np.float32) if priors is not None else 0
        out[t, 0] = p0 + schema.PRESSURE_PRIOR_SCALE_PA * np.sinh(pp)
        out[t, 1] = t0 + theta * gap
    return out


def front(grid: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(T, 2, n_active): each active cell's largest |difference| to an active face neighbour."""
    grid = grid.astype(np.float32)
    out = np.zeros_like(grid)
    for axis in range(3):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        jump = np.abs(grid[(..., *hi)] - grid[(..., *lo)]) * (active[lo] & active[hi])
        np.maximum(out[(..., *lo)], jump, out=out[(..., *lo)])
        np.maximum(out[(..., *hi)], jump, out=out[(..., *hi)])
    return out[:, :, active]


def grid_terms(sim: dict, grid: np.ndarray) -> dict:
    """The parts of sigma at active cells: {"change", "prior", "front": (T, 2, n_active), "rms": (T, 2)}."""
    active = sim["static"][schema.STATIC_ACTIVE] > 0.5
    pred = grid[:, :, active].astype(np.float32)
    change = np.abs(pred - pred[:1])
    prior = np.abs(pred - prior_state(sim, len(grid))[:, :, active])
    rms = np.sqrt(np.mean(np.square(change, dtype=np.float64), axis=2)) if change.shape[2] else \
        np.zeros(change.shape[:2])
    return {"change": change, "prior": prior, "front": front(grid, active), "rms": rms.astype(np.float32)}


def sigma(terms: dict, c: int, t: int, weights) -> np.ndarray:
    """sigma at variable ``c``, step ``t`` of one run's terms; ``weights`` (w_change, w_prior, w_front,
    w_floor)."""
    out = np.full(terms["change"].shape[2], weights[-1] * terms["rms"][t, c] + EPS[schema.DYNAMIC_NAMES[c]],
                  np.float32)
    for w, name in zip(weights, TERMS):
        if w:
            out = out + w * terms[name][t, c]
    return out


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) coverage)-th smallest of n scores: a fresh exchangeable score is at most
    this with probability >= coverage. inf when n is too small for that coverage."""
    scores = np.asarray(scores, np.float64).ravel()
    n = scores.size
    rank = math.ceil((n + 1) * coverage)  # 1-based
    if n == 0 or rank > n:
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


def scalar_scale(pred: np.ndarray, t: np.ndarray, n_steps: int, power: float) -> np.ndarray:
    """|yhat| (t / (T - 1))^power for scalar predictions ``pred`` at steps ``t``."""
    return np.abs(pred) * (t / max(n_steps - 1, 1)) ** power + 1e-30


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------
def _pooled(runs: list[dict], c: int, weights, coverage: float) -> tuple[list[float], float]:
    """One choice of weights on ``runs``: the pooled quantiles q_t of the cells' scores (q_0 = 0) and
    the band they give, without a run factor: its mean width over the RMS error, mean over steps."""
    quantiles, widths = [0.0], []
    for t in range(1, runs[0]["error"].shape[0]):
        sig = [sigma(r["terms"], c, t, weights) for r in runs]
        quantiles.append(conformal_quantile(np.concatenate([r["error"][t, c] / s for r, s in zip(runs, sig)]),
                                            coverage))
        rms = math.sqrt(np.mean(np.square(np.concatenate([r["error"][t, c] for r in runs]), dtype=np.float64)))
        if rms > 0:
            widths.append(2 * quantiles[-1] * float(np.mean(np.concatenate(sig))) / rms)
    return quantiles, float(np.mean(widths)) if widths else 0.0


def _thinned(run: dict, cells: int) -> dict:
    """``run`` at a fixed random subset of ``cells`` of its cells (itself when it has no more)."""
    n = run["error"].shape[2]
    if n <= cells:
        return run
    keep = np.sort(np.random.default_rng(n).choice(n, cells, replace=False))
    return {"error": run["error"][:, :, keep], "terms": {**{k: v[:, :, keep] for k, v in run["terms"].items()
                                                             if k in TERMS}, "rms": run["terms"]["rms"]}}


def choose_weights(runs: list[dict], c: int, coverage: float, choices=None) -> tuple:
    """The weights (from ``choices``, default WEIGHT_GRID) whose pooled band on ``runs`` (at most
    CHOICE_CELLS cells of each) is narrowest."""
    runs = [_thinned(r, CHOICE_CELLS) for r in runs]
    return min(WEIGHT_GRID if choices is None else choices, key=lambda w: _pooled(runs, c, w, coverage)[1])


def left_out_ratios(runs: list[dict], c: int, coverage: float, choices=None) -> list[np.ndarray]:
    """Per run, (T - 1, n): its cells' scores over the quantiles of the other runs, at the weights
    chosen on the other runs alone. A left-out run's cell is covered by k x that band where its
    ratio <= k. The choice is left out too: a choice made on all the runs fits them better than a
    new run, and a factor learnt after it came out too small (~0.03 of coverage on the sets measured)."""
    out = []
    for r, run in enumerate(runs):
        rest = runs[:r] + runs[r + 1:]
        weights = choose_weights(rest, c, coverage, choices)
        quantiles, _ = _pooled(rest, c, weights, coverage)
        ratios = []
        for t in range(1, len(quantiles)):
            ratios.append(_ratio(run["error"][t, c] / sigma(run["terms"], c, t, weights), quantiles[t]))
        out.append(np.stack(ratios))
    return out


def run_factor(ratios: list[np.ndarray], coverage: float) -> float:
    """k: the factor on the pooled quantiles at which the left-out runs hold ``coverage`` of their
    cells over the steps (1 where fewer than 2 runs leave nothing to learn it from)."""
    ratios = np.concatenate([np.ravel(r) for r in ratios]) if ratios else np.zeros(0)
    if ratios.size == 0:
        return 1.0
    return float(np.quantile(ratios, coverage, method="higher"))


def _ratio(score: np.ndarray, q: float) -> np.ndarray:
    """A left-out run's scores over the others' quantile ``q`` (0 where q is infinite: too few scores
    to promise anything; inf where a positive score meets q = 0)."""
    if math.isinf(q):
        return np.zeros_like(score)
    return np.divide(score, q, out=np.where(score > 0, np.inf, 0.0), where=q > 0)


def _left_out_covered(ratios: list[np.ndarray], coverage: float) -> list[np.ndarray]:
    """Per run: which of its ratios the factor learnt from the other runs' ratios covers."""
    return [x <= run_factor(ratios[:r] + ratios[r + 1:], coverage) for r, x in enumerate(ratios)]


def fit_variable(runs: list[dict], c: int, coverage: float, choices=None) -> dict:
    """{"weights", "quantiles" (T,), "run_factor", "width_over_rms", "held_out": {"last", "mean"}} of
    variable ``c``: the weights chosen and the quantiles pooled on all the runs, the factor learnt
    on the runs left out one at a time; held_out: a left-out run's coverage at its factor learnt
    from the other runs' ratios, mean over the runs (width_over_rms on the calibration runs)."""
    weights = choose_weights(runs, c, coverage, choices)
    quantiles, width = _pooled(runs, c, weights, coverage)
    ratios = left_out_ratios(runs, c, coverage, choices) if len(runs) > 1 else []
    k = run_factor(ratios, coverage)
    covered = [np.mean(x, axis=1) for x in _left_out_covered(ratios, coverage)]
    held_out = {"last": float(np.mean([x[-1] for x in covered])), "mean": float(np.mean(covered))} if covered \
        else {"last": math.nan, "mean": math.nan}
    return {"weights": list(weights), "quantiles": quantiles, "run_factor": k, "width_over_rms": k * width,
            "held_out": held_out}


def fit_grid(runs: list[dict], coverage: float) -> dict:
    """{variable: fit_variable} from runs of {"terms": grid_terms, "error": |y - yhat| at active cells
    (T, 2, n)}. The band at step t is run_factor x quantiles[t] x sigma."""
    return {name: fit_variable(runs, c, coverage) for c, name in enumerate(schema.DYNAMIC_NAMES)}


def _scalar_scores(runs: list[dict], i: int, power: float) -> list[np.ndarray]:
    """Per run, (T - 1,): scalar ``i``'s relative scores at steps t >= 1."""
    n_steps = runs[0]["pred"].shape[0]
    t = np.arange(1, n_steps, dtype=np.float64)
    return [np.abs(r["true"][1:, i] - r["pred"][1:, i]) / scalar_scale(r["pred"][1:, i], t, n_steps, power)
            for r in runs]


def _scalar_choice(runs: list[dict], i: int, coverage: float) -> dict:
    """{"power", "quantile", "relative_width"} of scalar ``i`` on ``runs``: the power whose pooled
    band is narrowest relative to the prediction."""
    n_steps = runs[0]["pred"].shape[0]
    t = np.tile(np.arange(1, n_steps, dtype=np.float64), len(runs))
    pred = np.concatenate([r["pred"][1:, i] for r in runs])
    best = None
    for power in SCALAR_POWERS:
        q = conformal_quantile(np.concatenate(_scalar_scores(runs, i, power)), coverage)
        width = float(np.mean(2 * q * scalar_scale(pred, t, n_steps, power) / (np.abs(pred) + 1e-30)))
        if best is None or width < best["relative_width"]:
            best = {"power": power, "quantile": q, "relative_width": width}
    return best


def fit_scalars(runs: list[dict], coverage: float) -> dict | None:
    """{scalar: {"power", "quantile", "run_factor", "relative_width", "held_out": (T - 1,) per-step
    coverage of a left-out run}} from runs of {"pred", "true"} (T, 5); None when the model predicts
    no scalars. As the grid's: a run's scalars err by one offset over its steps, so the band gets
    the factor at which runs left out one at a time (power and quantile chosen without them) hold
    ``coverage`` of their steps."""
    if any(np.isnan(r["pred"][1:]).all() for r in runs):
        return None
    out = {}
    for i, name in enumerate(schema.SCALAR_NAMES):
        ratios = []
        for r in range(len(runs) if len(runs) > 1 else 0):
            rest = _scalar_choice(runs[:r] + runs[r + 1:], i, coverage)
            ratios.append(_ratio(_scalar_scores([runs[r]], i, rest["power"])[0], rest["quantile"]))
        k = run_factor(ratios, coverage)
        held_out = _left_out_covered(ratios, coverage)
        best = _scalar_choice(runs, i, coverage)
        # at most SCALAR_WIDTH_CAP x the largest score of the calibration runs: where one run carries
        # all the error (the only one held at a limit, the others' water rates exact), the others'
        # quantile is float rounding and the factor learnt against it ran to ~1e6 (a band 1e4x the rate)
        largest = max(float(np.max(s, initial=0.0)) for s in _scalar_scores(runs, i, best["power"]))
        if math.isfinite(best["quantile"]) and best["quantile"] > 0:
            k = min(k, max(SCALAR_WIDTH_CAP * largest / best["quantile"], 1.0))
        out[name] = {**best, "run_factor": k, "relative_width": k * best["relative_width"],
                     "held_out": np.mean(held_out, axis=0).tolist() if held_out else None}
    return out


def held_out_coverage(fitted: dict, scalars: dict | None) -> dict:
    """Leave one calibration run out: {variable or "scalars": {"last", "mean"} over steps t >= 1} of
    the left-out run's coverage, averaged over the runs (and the scalars), as fit_variable and
    fit_scalars learnt it. Said before any test run is looked at: how well the band holds on a
    new run."""
    out = {name: fitted[name]["held_out"] for name in schema.DYNAMIC_NAMES}
    per_step = [e["held_out"] for e in (scalars or {}).values() if e["held_out"] is not None]
    if per_step:
        out["scalars"] = {"last": float(np.mean([s[-1] for s in per_step])), "mean": float(np.mean(per_step))}
    return out


def rolled_out(sim: dict, grid: np.ndarray, scalar: np.ndarray) -> tuple[dict, dict]:
    """What the fit keeps of one calibration run's rollout: ({"terms", "error"} at active cells,
    {"pred", "true"} of the scalars)."""
    active = sim["static"][schema.STATIC_ACTIVE] > 0.5
    error = np.abs(sim["outputs_grid"][:, :, active].astype(np.float32) - grid[:, :, active])
    return ({"terms": grid_terms(sim, grid), "error": error},
            {"pred": scalar, "true": np.asarray(sim["outputs_scalar"], np.float64)})


def fit(grid_runs: list[dict], scalar_runs: list[dict], coverage: float) -> dict:
    """The bands of rolled-out calibration runs: {"n_steps", "grid", "scalars", "held_out_coverage"}
    (``apply`` takes it with "coverage" added)."""
    out = {"n_steps": int(grid_runs[0]["error"].shape[0]), "grid": fit_grid(grid_runs, coverage),
           "scalars": fit_scalars(scalar_runs, coverage)}
    out["held_out_coverage"] = held_out_coverage(out["grid"], out["scalars"])
    return out


def calibrate(prepped_root, ckpt_path, out_path=None, coverage=DEFAULT_COVERAGE, device="cpu", amp="auto",
              tile=None, progress=True, stats_path=None) -> dict:
    """Roll out the calibration runs, fit the bands, write them (default: next to the checkpoint);
    ``stats_path``: a stats.json in place of the checkpoint's (they must agree)."""
    if not 0.0 < coverage < 1.0:
        raise UserError(f"bands: --coverage must be in (0, 1), got {coverage}")
    prepped_root = Path(prepped_root)
    out_path = Path(out_path) if out_path else default_path(ckpt_path)
    files.writable_folder(out_path.parent, "the bands file's folder")
    model, normalizer, stats, _ = checkpoint.load_for_inference(ckpt_path, stats_path, device)
    checkpoint.check_data(stats, ckpt_path, Stats.load(prepped_root).preparation, prepped_root / schema.STATS_FILE)
    paths = sorted((prepped_root / "calibration").glob("*" + schema.PREPPED_SUFFIX))
    if not paths:
        raise UserError(f"{prepped_root}: calibration/: no runs: prep with --n_calibration K (K runs the model "
                        "never trains on) and train on that prep")
    trained = set(stats.get("train_sims") or [])
    if any(f"calibration/{p.name}" in trained or f"train/{p.name}" in trained for p in paths):
        raise UserError(f"{prepped_root}: calibration runs among the checkpoint's training runs: bands "
                        "calibrated on them would be too narrow")
    stepper = ModelStepper(model, normalizer, device=device, tile=tile, precision=precision.choose(amp, device))
    grid_runs, scalar_runs = [], []
    for path in tqdm(paths, desc="bands: calibration rollouts", disable=not progress):
        sim = prepped.load_prepped_sim(path)
        grid_run, scalar_run = rolled_out(sim, *run_stepper(stepper, sim, progress=False))
        grid_runs.append(grid_run)
        scalar_runs.append(scalar_run)
    bands = {"format": FORMAT, "checkpoint": str(Path(ckpt_path).name),
             "checkpoint_sha256": checkpoint_digest(ckpt_path), "coverage": coverage,
             "calibration_runs": [p.name for p in paths], **fit(grid_runs, scalar_runs, coverage)}
    if len(paths) * max(1, bands["n_steps"] - 1) < 1 / (1 - coverage):
        print(f"warning: {len(paths)} calibration runs are too few for a {coverage:.0%} scalar band: none")
    write(out_path, bands)
    return {**bands, "path": str(out_path)}


# ---------------------------------------------------------------------------
# Bands of a rollout
# ---------------------------------------------------------------------------
def apply(bands: dict, sim: dict, grid: np.ndarray, scalar: np.ndarray) -> dict:
    """{"low", "high": (T, 2, Z, Y, X) float32, "scalar_low", "scalar_high": (T, 5) or None} of a
    rollout; zero width at t = 0 and at inactive cells. Steps beyond the calibrated ones take the
    last calibrated quantile."""
    active = sim["static"][schema.STATIC_ACTIVE] > 0.5
    terms = grid_terms(sim, grid)
    low, high = grid.astype(np.float32).copy(), grid.astype(np.float32).copy()
    n_steps = len(grid)
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        entry = bands["grid"][name]
        for t in range(1, n_steps):
            q = entry["quantiles"][min(t, len(entry["quantiles"]) - 1)]
            half = (q if q is not None else math.inf) * entry["run_factor"] * sigma(terms, c, t, entry["weights"])
            low[t, c, active] -= half
            high[t, c, active] += half
    out = {"low": low, "high": high, "scalar_low": None, "scalar_high": None}
    if bands.get("scalars") and not np.isnan(scalar[1:]).all():
        t = np.arange(n_steps, dtype=np.float64)
        s_low, s_high = scalar.astype(np.float64).copy(), scalar.astype(np.float64).copy()
        for i, name in enumerate(schema.SCALAR_NAMES):
            entry = bands["scalars"][name]
            q = entry["quantile"] if entry["quantile"] is not None else math.inf
            half = q * entry.get("run_factor", 1.0) * scalar_scale(scalar[:, i], t, bands["n_steps"], entry["power"])
            half[0] = 0.0
            s_low[:, i] -= half
            s_high[:, i] += half
        out.update(scalar_low=s_low, scalar_high=s_high)
    return out
