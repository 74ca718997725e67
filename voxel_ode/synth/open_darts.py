"""`voxel-ode synth --engine darts`: v2.4 training data from open-darts 2.0.0 (TU Delft).

The same recipe as the darts-dev development set (shared/darts-dev/README.md), drawn per
(seed, run index) (``synth.darts_draw``), simulated by a real simulator (``synth.darts_model``)
instead of ``synth.voxel``'s own, written in the dev set's conventions or others
(``synth.darts_conventions.Conventions``: cell sizes, injection rates, lateral boundary,
permeability unit, time of the first report, ParamsScalar order), with ``description.json``.

open-darts bundles a newer libstdc++ than the system's and must be imported before numpy, so every
simulation runs in its own ``python -c`` process that imports ``darts.engines`` first. Nothing else
in voxel-ode imports darts: this module (the parent side) only starts those processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from voxel_ode.data import description as desc
from voxel_ode.data import plan, raw
from voxel_ode.synth import darts_plan
from voxel_ode.synth.darts_conventions import Conventions, check_grid, description
from voxel_ode.utils import UserError

MISSING_MESSAGE = "open-darts is not installed: pip install 'voxel-ode[darts]'"
MIN_GRID = (4, 3, 3)
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_WORKER_CODE = "import darts.engines, sys; from voxel_ode.synth.darts_model import worker_main; sys.exit(worker_main())"


def darts_available() -> bool:
    """True when open-darts (and DARTS-flash) can be found, without importing them (see module doc)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("darts", "dartsflash"))
    except (ImportError, ValueError, AttributeError):
        return False


def require_darts() -> None:
    if not darts_available():
        raise UserError(MISSING_MESSAGE)


def run_one(path, grid, seed: int, index: int, n_steps: int, conventions: Conventions = Conventions()
            ) -> tuple[Path, float]:
    """Simulate one run in a fresh process; return (path, seconds). Raises UserError with the log tail."""
    return _run_job(path, {"grid": list(grid), "seed": int(seed), "index": int(index), "n_steps": int(n_steps)},
                    conventions, f"open-darts run {index} (seed {seed})")


def _run_job(path, job: dict, conventions: Conventions, label: str) -> tuple[Path, float]:
    """One worker process on ``job`` (darts_model.worker_main) writing ``path``; (path, seconds)."""
    require_darts()
    path = Path(path).resolve()  # the worker runs in a folder of its own: a relative path would point elsewhere
    job = dict(job, path=str(path), tmp=str(path.parent), conventions=conventions.to_dict())
    env = dict(os.environ, **{var: "1" for var in _THREAD_VARS})
    with tempfile.TemporaryDirectory(prefix=".darts-", dir=path.parent) as cwd:  # DARTS writes logs to the cwd
        proc = subprocess.run([sys.executable, "-c", _WORKER_CODE, json.dumps(job)], cwd=cwd, env=env,
                              capture_output=True, text=True)
    done = [line for line in proc.stdout.splitlines() if line.startswith("VOXEL_ODE_DONE ")]
    if proc.returncode != 0 or not done:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"{label} failed (exit {proc.returncode}):\n{tail}")
    return path, float(done[-1].split()[-1])


def generate_dataset(out_dir, n: int, grid, seed: int = 0, workers: int = 1, n_steps: int = 30,
                     progress: bool = True, conventions: Conventions = Conventions()) -> list[Path]:
    """Write ``out_dir/v2.4_0001.h5 .. v2.4_<n>.h5`` (run i = draw (seed, i), ``n_steps`` years) in
    ``conventions`` and the description.json that declares them."""
    require_darts()
    check_grid(grid, conventions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir / raw.run_file_name(i), i) for i in range(1, n + 1)]
    bar = tqdm(total=n, desc="synth (open-darts)", unit="sim", disable=not progress)
    paths = []
    with ThreadPoolExecutor(max(1, min(workers, n))) as pool:
        futures = [pool.submit(run_one, path, grid, seed, i, n_steps, conventions) for path, i in jobs]
        for fut in futures:
            path, _ = fut.result()
            paths.append(path)
            bar.update(1)
    bar.close()
    desc.write(out_dir / desc.FILE_NAME, description(conventions))
    return paths


def simulate_plan(out_dir, base: dict, plan_path, n_steps: int = 30, grid=None, workers: int = 1,
                  progress: bool = True, conventions: Conventions = Conventions(), overwrite: bool = False
                  ) -> dict:
    """Simulate every scenario of a plan on a base run (synth.darts_plan: {"file": path} or
    {"seed": s, "index": i} on ``grid``) into ``out_dir/<name>.h5``; {name: (path, seconds)}.
    Every row is checked before any run (PlanError, one line per bad row)."""
    require_darts()
    run, grid = darts_plan.base_run(base, grid, conventions)
    check_grid(grid, conventions)
    scenarios = darts_plan.load_scenarios(plan_path, run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = [sc.name for sc in scenarios if (out_dir / f"{sc.name}.h5").exists()]
    if taken and not overwrite:
        raise UserError(f"{out_dir}: --out: already holds {taken[0]}.h5 (and {len(taken) - 1} more of the plan's); "
                        "use --overwrite or an empty directory")
    rows = {sc.name: dict(plan.read_rows(plan_path)[sc.row - 1]) for sc in scenarios}
    base = {k: (str(Path(v).resolve()) if k == "file" else int(v)) for k, v in base.items()}
    bar = tqdm(total=len(scenarios), desc="synth --plan (open-darts)", unit="sim", disable=not progress)
    done = {}
    with ThreadPoolExecutor(max(1, min(workers, len(scenarios)))) as pool:
        futures = {sc.name: pool.submit(_run_job, out_dir / f"{sc.name}.h5",
                                        {"grid": list(grid), "base": base, "row": rows[sc.name], "n_steps": int(n_steps)},
                                        conventions, f"open-darts scenario {sc.name}") for sc in scenarios}
        for name, fut in futures.items():
            done[name] = fut.result()
            bar.update(1)
    bar.close()
    desc.write(out_dir / desc.FILE_NAME, description(conventions))
    return done
