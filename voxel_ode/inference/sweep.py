"""``voxel-ode sweep``: forecasts of many variants of one run (a plan's scenarios) with one model,
their numbers in a table, a ranking and a comparison picture.

The plan (inference/scenarios.py) is checked whole against the base run and the checkpoint's
description before any work. Each scenario is then an inputs-only raw file (the base's Input/
with its changes) forecast like ``voxel-ode rollout`` forecasts one (pack.prepare_forecast,
rollout.rollout), with the model loaded once. The out folder::

    sweep.json              what the folder holds: digests of the checkpoint, base and plan
    scenarios/<name>.json   one finished scenario's series and the wall and CPU seconds of its phases
                            (written atomically: a killed sweep resumes from them, a rerun skips them)
    scenarios.csv / .json   the table, best first; the JSON with every per-year series
    sweep.png               energy produced per year of every scenario, the objective per scenario
    predictions/<name>.h5   with save_predictions (+ XDMF)
    inputs/<name>.h5        a scenario's raw file while it runs (kept with keep_inputs)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import multiprocessing as mp
import torch
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data.prep import die_with_parent
from voxel_ode.data import envelope, plan, start_scalars
from voxel_ode.inference import scenarios as plans
from voxel_ode.inference import sweep_table as table
from voxel_ode.inference.plots import cell_size_of
from voxel_ode.inference.predict import out_of_range_notes, prediction_attrs
from voxel_ode.inference import bands as bands_module
from voxel_ode.inference.predictions import write_predictions
from voxel_ode.inference.rollout import rollout
from voxel_ode.model import checkpoint, precision
from voxel_ode.utils import UserError

RECORD = "sweep.json"
COMPILE_CHOICES = ("auto", "yes", "no")
# torch.compile: 5-25 s wall once (less with a warm compile cache), then the darts-dev grid's rollout 1.9 -> 1.3 CPU s
# (bf16, one thread, Xeon; docs/benchmarks.md "Sweep vs simulator"): it pays after 10-40 scenarios on
# one geology (the scenarios share the grid and active cells, so it compiles once); auto from this many
COMPILE_MIN_SCENARIOS = 20


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_record(out: Path, record: dict) -> None:
    """The folder's sweep.json must name the same checkpoint, base and plan (else its finished
    scenarios belong to another sweep); written when absent."""
    path = out / RECORD
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: unreadable; remove {out} or give another --out") from None
        for key in ("checkpoint", "base", "plan"):
            if held.get("digests", {}).get(key) != record["digests"][key]:
                raise UserError(f"{out}: holds a sweep of another {key} ({held.get(key)}): give another --out "
                                "or remove the folder to start over")
        return
    files.write_json_atomic(path, record)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _lap(start) -> tuple[float, float]:
    """(wall, CPU) seconds since ``start`` (a _clock()); CPU: this process's, all its threads."""
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def timed_forecast_start(path, desc, n_reports) -> tuple[dict, tuple]:
    """plans.forecast_start and its (wall, CPU) seconds (reading the scenario's Input/, deriving its priors)."""
    start = _clock()
    sim = plans.forecast_start(path, desc, n_reports)
    return sim, _lap(start)


def _timed_make(make):
    start = _clock()
    path, wells = make()
    return path, wells, _lap(start)


def _starts(jobs, desc, n_reports, workers):
    """Yield (scenario, wells, input path, sim, seconds) in plan order. ``jobs``: (scenario, make)
    where make() writes the scenario's file and returns (path, wells); seconds: {"inputs": writing
    that file, "priors": reading it and deriving its priors}, each (wall, CPU). With workers > 1 the next
    scenarios' priors are derived in worker processes while the model rolls out this one."""
    if workers <= 1:
        for sc, make in jobs:
            path, wells, t_in = _timed_make(make)
            sim, t_priors = timed_forecast_start(path, desc, n_reports)
            yield sc, wells, path, sim, {"inputs": t_in, "priors": t_priors}
        return
    # spawn: the workers need no torch, and a fork of a process running torch threads may hang
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        pending, todo = deque(), iter(jobs)

        def ready():
            sc0, wells0, path0, t_in, fut = pending.popleft()
            sim, t_priors = fut.result()
            return sc0, wells0, path0, sim, {"inputs": t_in, "priors": t_priors}
        try:
            for sc, make in todo:
                path, wells, t_in = _timed_make(make)
                pending.append((sc, wells, path, t_in, pool.submit(timed_forecast_start, path, desc, n_reports)))
                if len(pending) > workers:
                    yield ready()
            while pending:
                yield ready()
        except BrokenProcessPool:
            raise UserError("sweep: a worker process died while deriving priors (killed, or out of memory?); "
                            "finished scenarios are kept: rerun to go on") from None
        finally:  # stopped early (an error, Ctrl-C): the queued priors are not wanted any more
            pool.shutdown(wait=False, cancel_futures=True)


class Forecaster:
    """The checkpoint's model, loaded once, applied to scenario after scenario."""

    def __init__(self, ckpt_path, device="cpu", amp="auto", bands_path=None, stats_path=None):
        self.ckpt_path, self.device = ckpt_path, device
        self.bands = bands_module.find(ckpt_path, bands_path)  # None: no bands (one line said how)
        self.model, self.normalizer, self.stats, self.config = checkpoint.load_for_inference(ckpt_path, stats_path,
                                                                                              device)
        self.precision = precision.choose(amp, device)
        self.n_reports = int(self.stats["n_timesteps"])
        self.compiled = None  # the torch.compile'd model (None: the plain one only)

    def compile(self) -> None:
        """Run the model through torch.compile (its first rollout compiles it)."""
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break advice is not the user's
        self.compiled = torch.compile(self.model)

    def __call__(self, sim: dict, source):
        checkpoint.check_data(self.stats, self.ckpt_path, sim["preparation"], source)
        if self.compiled is not None:
            try:
                return rollout(self.compiled, self.normalizer, sim, device=self.device, precision=self.precision,
                               progress=False)
            except UserError:
                raise
            except Exception as err:  # no C compiler, an unsupported op: the eager model forecasts the same
                first = (str(err).splitlines() or [""])[0][:160]
                print(f"torch.compile failed ({type(err).__name__}: {first}); going on without it")
                self.compiled = None
        return rollout(self.model, self.normalizer, sim, device=self.device, precision=self.precision,
                       progress=False)

    def band(self, sim: dict, grid, scalar) -> dict | None:
        if self.bands is None:
            return None
        return {**bands_module.apply(self.bands, sim, grid, scalar), "coverage": self.bands["coverage"]}

    def save(self, path, sim, grid, scalar, source, band=None) -> None:
        attrs = prediction_attrs(self.ckpt_path, None, source, self.config, self.model, None, self.device, sim,
                                 len(grid), self.stats, out_of_range_notes(self.stats, sim))
        write_predictions(path, grid, scalar, sim["static"][schema.STATIC_ACTIVE], attrs,
                          cell_size=cell_size_of(sim, self.stats.description), bands=band)


def _run_one(forecaster, out, sc, wells, path, sim, seconds, save_predictions, keep_inputs) -> None:
    """Forecast one scenario and store its series, with the wall and CPU seconds of each phase:
    "inputs" and "priors" (from _starts), "model" (the rollout) and "outputs" (its series and
    predictions; the scenario's JSON itself not counted)."""
    start = _clock()
    grid, scalar = forecaster(sim, path)
    seconds = dict(seconds, model=_lap(start))
    start = _clock()
    static = sim["static"]
    result = {"name": sc.name, "row": sc.row, "changes": sc.changes,
              "out_of_range": out_of_range_notes(forecaster.stats, sim) or [],
              **table.series(grid, scalar, static[schema.STATIC_INJ_RATE], static[schema.STATIC_ACTIVE] > 0.5, wells)}
    band = forecaster.band(sim, grid, scalar)
    if band is not None and band["scalar_low"] is not None:  # the field scalars' band, (low, high) per year
        result["field_scalars_band"] = {n: [_finite_list(band["scalar_low"][:, i]),
                                            _finite_list(band["scalar_high"][:, i])]
                                        for i, n in enumerate(schema.SCALAR_NAMES)}
        result["band_coverage"] = band["coverage"]
    if save_predictions:
        forecaster.save(out / "predictions" / f"{sc.name}.h5", sim, grid, scalar, path, band)
    if not keep_inputs:
        Path(path).unlink(missing_ok=True)
    seconds["outputs"] = _lap(start)
    result["seconds"] = {phase: wall for phase, (wall, _) in seconds.items()}
    result["cpu_seconds"] = {phase: cpu for phase, (_, cpu) in seconds.items()}
    files.write_json_atomic(out / "scenarios" / f"{sc.name}.json", result)  # last: marks it finished


def _finite_list(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]


def _check_objective(column: str, base, scenarios) -> None:
    wells = {w.name for sc in scenarios for w in plans.scenario_wells(base, sc)}
    known = set(table.FIXED_COLUMNS) | {f"dp_{k}_{w}" for w in wells for k in ("end", "peak")}
    if column not in known:
        raise UserError(f"--objective: {column!r} is not a column of the table (e.g. "
                        f"{', '.join(table.FIXED_COLUMNS[:5])}, dp_end_<well>)")


def _finish(out: Path, scenarios, column, minimize, breakthrough_k) -> list[dict]:
    """The table, scenarios.json and the picture from every scenario's stored series."""
    results = {sc.name: json.loads((out / "scenarios" / f"{sc.name}.json").read_text()) for sc in scenarios}
    rows = table.rank([table.summary(r, breakthrough_k) for r in results.values()], column, minimize)
    table.write_table(out / "scenarios.csv", rows)
    everything = {"objective": column, "minimize": minimize, "breakthrough_k": breakthrough_k,
                  "scenarios": [row | {"series": results[row["name"]]} for row in rows]}
    files.write_json_atomic(out / "scenarios.json", everything)
    table.plot_sweep(out / "sweep.png", rows, results, column, minimize)
    return rows


def run_sweep(ckpt_path, base_path, plan_path, out, objective=table.DEFAULT_OBJECTIVE, minimize=False,
              save_predictions=False, device="cpu", amp="auto", workers=1,
              breakthrough_k=table.DEFAULT_BREAKTHROUGH_K, keep_inputs=False, progress=True,
              bands_path=None, compile_model="auto", stats_path=None) -> list[dict]:
    """Forecast every scenario of ``plan_path`` on ``base_path`` into ``out``; the ranked table rows.
    Nothing is written outside ``out``. With bands (``bands_path`` or the checkpoint's bands file),
    each scenario's JSON holds its field scalars' bands and its predictions.h5 the grid bands.
    ``compile_model``: COMPILE_CHOICES; auto compiles for COMPILE_MIN_SCENARIOS or more to run.
    ``stats_path``: a stats.json in place of the checkpoint's own (it must agree with them)."""
    if compile_model not in COMPILE_CHOICES:
        raise UserError(f"--compile: {compile_model!r} is not one of {', '.join(COMPILE_CHOICES)}")
    out = files.writable_folder(out, "--out")
    column, minimize = table.parse_objective(objective, minimize)
    if not math.isfinite(breakthrough_k) or breakthrough_k < 0:
        raise UserError(f"--breakthrough_k: {breakthrough_k} is not a temperature drop >= 0 K")
    with files.folder_lock(out, "sweep"):
        for folder in (out, out / "scenarios", out / "inputs", out / "predictions"):
            files.clean_leftovers(folder)
        forecaster = Forecaster(ckpt_path, device, amp, bands_path, stats_path)
        print(start_scalars.describe(forecaster.stats.get(start_scalars.KEY)))
        desc = forecaster.stats.description
        if forecaster.stats.get(envelope.RANGES_KEY) is None:  # the table's out_of_range column stays empty
            print(envelope.NOT_RECORDED)
        base = plans.load_base(base_path, desc)
        print("wells of the base: " + ("; ".join(w.describe() for w in base.wells) or "none"))
        scenarios = plans.load_plan(plan_path, base, desc)  # every row checked before any work
        _check_objective(column, base, scenarios)
        digests = {"checkpoint": file_digest(ckpt_path), "base": file_digest(base.path),
                   "plan": hashlib.sha256(json.dumps(plan.read_rows(plan_path), sort_keys=True).encode()).hexdigest()}
        check_record(out, {"checkpoint": str(ckpt_path), "base": str(base_path), "plan": str(plan_path),
                           "digests": digests})
        # finished: its series stored (and its predictions, when asked for now)
        todo = [sc for sc in scenarios if not (out / "scenarios" / f"{sc.name}.json").exists()
                or (save_predictions and not (out / "predictions" / f"{sc.name}.h5").exists())]
        if len(todo) < len(scenarios):
            print(f"skipping {len(scenarios) - len(todo)} finished scenario(s) of {len(scenarios)} ({out / 'scenarios'})")
        if save_predictions:
            files.writable_folder(out / "predictions", "--out's predictions folder")

        def maker(sc):
            path = out / "inputs" / f"{sc.name}.h5"
            return lambda: (path, plans.write_scenario(base, sc, path))

        if compile_model == "yes" or (compile_model == "auto" and len(todo) >= COMPILE_MIN_SCENARIOS):
            print(f"compiling the model (torch.compile, once for {len(todo)} scenario(s); --compile no to skip)")
            forecaster.compile()
        jobs = [(sc, maker(sc)) for sc in todo]
        starts = _starts(jobs, desc, forecaster.n_reports, workers)
        for sc, wells, path, sim, secs in tqdm(starts, total=len(todo), desc="sweep", unit="scenario",
                                               disable=not progress):
            _run_one(forecaster, out, sc, wells, path, sim, secs, save_predictions, keep_inputs)
        rows = _finish(out, scenarios, column, minimize, breakthrough_k)
    best = rows[0]
    print(f"best by {'-' if minimize else ''}{column}: {best['name']} ({best.get(column)}); "
          f"wrote {out / 'scenarios.csv'}, {out / 'scenarios.json'}, {out / 'sweep.png'}")
    return rows
