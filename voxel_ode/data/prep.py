"""Prep: raw v2.4 HDF5 -> packed ``*.prepped.h5``, ``stats.json`` and patch indices.

How it works
------------
Phase 1 (parallel over simulations, ``--workers``): each simulation is checked
(structure first, from metadata only; then its values while streaming one time
step at a time), packed into a temporary file under ``out_root/.partial-*`` and
summarised into small partial statistics (pack.py, stats.py).

Phase 2 (main process): the good simulations are split by sorted name (first
``n_test`` -> test, the next ``n_calibration`` -> calibration, the runs the uncertainty
bands are calibrated on: no training, statistics or calibrated constants read them);
``train/``, ``test/``, ``calibration/``, the indices and ``stats.json`` are built in
``.partial-*`` and swapped into ``out_root`` when complete (files.swap_in): a failure
or a kill at any moment leaves the earlier finished output, or one that the next prep
or reader of stats.json puts back (files.restore_interrupted).

See docs/design.md for the file layouts.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data import description, index, pack, prepped, raw, stats
from voxel_ode.data.calibrate import calibrate_description
from voxel_ode.utils import UserError

DEFAULT_N_TEST = 5
PR_SET_PDEATHSIG = 1  # prctl(2)
# what prep writes into its output folder; stats.json, written last, says it is complete
OUTPUT_NAMES = schema.SPLITS + tuple(schema.INDEX_FILE.format(split=s) for s in schema.SPLITS) + (schema.STATS_FILE,)


def _valid_cell_size(values) -> bool:
    return len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)


def _refuse_or_skip(problems: list[str], skip_bad: bool, skipped: list[str]) -> None:
    """Without --skip_bad a bad file stops the run with one line; with it, warn and go on."""
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    if not skip_bad:
        raise UserError(problems[0] + more)
    tqdm.write(f"warning: skipping {problems[0]}{more}", file=sys.stderr)
    skipped.append(problems[0] + more)


def prep(input_root, out_root, **options) -> dict:
    """Raw v2.4 files in ``input_root`` -> packed files, stats.json and indices in ``out_root``
    (options: _prep's). One prep per output folder at a time; the folder is checked writable first.

    Returns a summary dict (sims per split, skipped files, patch counts, throughput).
    """
    files.writable_folder(out_root, "out_root")
    with files.folder_lock(out_root, "prep"):
        return _prep(input_root, out_root, **options)


def _prep(input_root, out_root, patch_size=index.DEFAULT_PATCH, stride=index.DEFAULT_STRIDE, n_test=DEFAULT_N_TEST,
          n_calibration=0, min_active_frac=index.DEFAULT_MIN_ACTIVE_FRAC, fill_value=None, skip_bad=False, workers=1,
          n_timesteps=None, chunk_edge=prepped.DEFAULT_CHUNK_EDGE, compression=None, progress=True, cell_size=None,
          description_path=None, calibrate=True) -> dict:
    """prep(); ``calibrate``: fit the constants the priors need and the description lacks on training runs;
    ``n_calibration``: runs after the test runs kept aside for the bands (inference/bands.py)."""
    start = time.perf_counter()
    input_root, out_root = Path(input_root), Path(out_root)
    patch_size, stride = tuple(int(v) for v in patch_size), tuple(int(v) for v in stride)
    compression = None if compression in (None, "none") else compression
    cell_size = None if cell_size is None else tuple(float(v) for v in cell_size)
    _check_prep_args(input_root, out_root, patch_size, stride, n_test, min_active_frac, workers, chunk_edge,
                     compression, cell_size)
    if n_calibration < 0:
        raise UserError(f"prep: --n_calibration must be >= 0, got {n_calibration}")
    desc = description.with_cell_size(description.find(input_root, description_path), cell_size)
    raw_files = sorted(input_root.glob(schema.RAW_FILE_GLOB), key=lambda p: p.name)
    if not raw_files:
        raise UserError(f"{input_root}: no raw files matching {schema.RAW_FILE_GLOB}")
    skipped = []
    candidates, n_timesteps = _same_layout(raw_files, n_timesteps, skip_bad, skipped)
    calibration = None  # stats.json "calibration": None when nothing was calibrated
    if calibrate:  # the training split: every file after the first n_test + n_calibration, by name
        desc, calibration = calibrate_description(desc, [str(p) for p in candidates[n_test + n_calibration:]],
                                                  fill_value, progress)

    # what a killed prep left: an interrupted swap undone, its .partial-PID folder, temporary files
    files.restore_interrupted(out_root, schema.STATS_FILE, log=lambda msg: tqdm.write(msg, file=sys.stderr))
    files.clean_leftovers(out_root, log=lambda msg: tqdm.write(msg, file=sys.stderr))
    partial = out_root / f".partial-{os.getpid()}"
    out_paths = {str(p): str(partial / (prepped.run_name(p) + schema.PREPPED_SUFFIX)) for p in candidates}
    jobs = [{"path": str(p), "out_path": out_paths[str(p)], "fill_value": fill_value, "n_timesteps": n_timesteps,
             "patch": patch_size, "stride": stride, "chunk_edge": chunk_edge, "compression": compression,
             "desc": desc}
            for p in candidates]
    _check_room(out_root, candidates, n_timesteps)
    try:
        partial.mkdir(parents=True, exist_ok=True)
        good = _scan_all(jobs, workers, progress, skip_bad, skipped)
        if not good:
            raise UserError(f"{input_root}: no valid simulations ({len(skipped)} skipped)")
        names = sorted(good, key=lambda p: Path(p).name)
        splits = _split(names, n_test, n_calibration, input_root)
        duplicates = _duplicates(splits, good)
        rel = _place_packed(partial, splits, out_paths)  # the new output is built aside, in partial
        patches = _write_indices(partial, splits, rel, good, patch_size, stride, min_active_frac)
        summary = stats.compute_stats([good[p] for p in splits["train"]], [rel[p] for p in splits["train"]],
                                      [rel[p] for p in splits["test"]], fill_value, patches,
                                      [rel[p] for p in splits["calibration"]])
        summary.update(skipped=skipped, duplicates=duplicates, description=desc.to_dict(),
                       description_source=desc.source, physics={rel[p]: good[p]["physics"] for p in names},
                       calibration=calibration)
        stats.write(partial, summary)
        files.swap_in(partial, out_root, OUTPUT_NAMES, schema.STATS_FILE)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

    seconds = time.perf_counter() - start
    raw_bytes = sum(s["raw_bytes"] for s in good.values())
    return {
        "out_root": str(out_root), "train": [rel[p] for p in splits["train"]], "test": [rel[p] for p in splits["test"]],
        "calibration": [rel[p] for p in splits["calibration"]], "skipped": skipped, "patches": patches, "raw_bytes": raw_bytes, "seconds": seconds,
        "mb_per_s": raw_bytes / 1e6 / seconds if seconds > 0 else float("inf"),
        "description_source": desc.source, "priors": summary["priors"], "physics": good[names[0]]["physics"],
    }


def _split(names: list, n_test: int, n_calibration: int, input_root) -> dict:
    """{split: raw paths} by sorted name: the first n_test test, the next n_calibration calibration,
    the rest train (at least one)."""
    n_test = min(n_test, len(names))
    n_cal = min(n_calibration, len(names) - n_test)
    if len(names) - n_test - n_cal < 1:
        raise UserError(f"{input_root}: {len(names)} valid simulations leave none for training with --n_test "
                        f"{n_test} and --n_calibration {n_calibration}")
    return {"test": names[:n_test], "calibration": names[n_test:n_test + n_cal], "train": names[n_test + n_cal:]}


def _check_room(out_root: Path, candidates: list, n_timesteps) -> None:
    """The packed files' size, checked against the disk and the file-size limit before writing."""
    if not candidates:
        return
    grid, _ = raw.grid_and_steps(candidates[0])
    n_out = (n_timesteps or 1) + 1  # a first report at the end of year 1 gets t = 0 in front
    per_file = float(np.prod(grid)) * (n_out * schema.N_DYNAMIC * 4 + schema.N_STATIC * 4 + n_out * schema.N_PRIORS * 2)
    # the new output is built beside the old one, which goes only once the new one is complete
    files.check_room(out_root, per_file * len(candidates) * 1.1 + 1e6, per_file * 1.1 + 65536, "prep")


def _check_prep_args(input_root, out_root, patch_size, stride, n_test, min_active_frac, workers, chunk_edge,
                     compression, cell_size) -> None:
    if len(patch_size) != 3 or len(stride) != 3 or min(patch_size) < 1 or min(stride) < 1:
        raise UserError(f"prep: --patch_size and --stride need 3 positive integers, got {patch_size} and {stride}")
    if not 0.0 <= min_active_frac <= 1.0:
        raise UserError(f"prep: --min_active_frac must be in [0, 1], got {min_active_frac}")
    if n_test < 0 or workers < 1 or chunk_edge < 1:
        raise UserError("prep: --n_test must be >= 0, --workers and --chunk_edge >= 1")
    if cell_size is not None and not _valid_cell_size(cell_size):
        raise UserError(f"prep: --cell_size needs 3 positive numbers (m), got {cell_size}")
    if compression is not None and compression not in prepped.COMPRESSIONS:
        raise UserError(f"prep: --compression must be one of {prepped.COMPRESSIONS}, got {compression!r}")
    if not input_root.is_dir():
        raise UserError(f"{input_root}: input_root is not a directory")
    if out_root.resolve() == input_root.resolve():
        raise UserError(f"{out_root}: out_root must differ from input_root")


def _same_layout(raw_files, n_timesteps, skip_bad, skipped) -> tuple[list, int | None]:
    """(files that pass the cheap metadata check, T). All must share the grid and T of the first
    good one (by sorted name), so a bad shape stops the run before any heavy work."""
    reference, candidates = None, []
    for p in raw_files:
        problems = raw.structure_problems(p, n_timesteps)
        if not problems:
            grid, n_t = raw.grid_and_steps(p)
            if reference is None:
                reference = (grid, n_t)
                n_timesteps = n_t
            elif grid != reference[0]:
                problems = [f"{p}: {schema.raw_path('Pressure')}: grid {grid} differs from {reference[0]} "
                            f"of {candidates[0].name}"]
        if problems:
            _refuse_or_skip(problems, skip_bad, skipped)
        else:
            candidates.append(p)
    return candidates, n_timesteps


def _scan_all(jobs, workers, progress, skip_bad, skipped) -> dict:
    """Scan and pack every job's file (in ``workers`` processes); {path: summary} of the good ones."""
    good = {}

    def handle(path, problems, summary):
        if problems:
            _refuse_or_skip(problems, skip_bad, skipped)
        else:
            for warning in summary["warnings"]:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            good[path] = summary

    # closed on error too: an error message then starts its own line, not the bar's
    with tqdm(total=len(jobs), desc="prep", unit="sim", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                handle(*pack.process_sim(job))
                bar.update()
            return good
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=die_with_parent) as pool:
            futures = [pool.submit(pack.process_sim, job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    handle(*fut.result())
                    bar.update()
            except BrokenProcessPool:
                raise UserError("prep: a worker process died while packing (killed, or out of memory?); the "
                                "output folder keeps what it held before") from None
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return good


def _duplicates(splits: dict, good: dict) -> list[str]:
    """Runs whose content (ParamsScalar, field scalars, every report of P and T) is the same, named
    in one line each: a test run copied into the training split would flatter every test score."""
    seen, lines = {}, []
    for split in ("test", "calibration", "train"):
        for path in splits[split]:
            key = good[path]["content_sha256"]
            if key in seen:
                other, other_split = seen[key]
                lines.append(f"{path} ({split}) holds the same run as {other} ({other_split})"
                             + (": a test run among the training runs flatters every test score"
                                if "train" in {split, other_split} and {split, other_split} != {"train"} else ""))
            else:
                seen[key] = (path, split)
    for line in lines:
        tqdm.write(f"warning: duplicate run: {line}", file=sys.stderr)
    return lines


def die_with_parent() -> None:
    """A prep worker ends with the process that started it (Linux): a killed prep leaves no
    orphaned workers behind, waiting forever."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # elsewhere the pool's own shutdown has to do
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def _place_packed(staged: Path, splits: dict, out_paths: dict) -> dict:
    """Move the packed files into staged/{train,test,calibration}/; {raw path: relative packed path}."""
    rel = {}
    for split, paths in splits.items():
        (staged / split).mkdir(parents=True, exist_ok=True)
        for p in paths:
            fname = prepped.run_name(Path(p)) + schema.PREPPED_SUFFIX
            os.replace(out_paths[p], staged / split / fname)
            rel[p] = f"{split}/{fname}"
    return rel


def _write_indices(out_root, splits, rel, good, patch_size, stride, min_active_frac) -> dict:
    """Patch indices of every split; the stats' "patches" section."""
    ref = good[splits["train"][0]]
    n_origins = len(ref["origins"])
    kept, total = {}, {}
    for split in schema.SPLITS:
        sims = [(rel[p], good[p]) for p in splits[split]]
        kept[split] = index.write_index(out_root / schema.INDEX_FILE.format(split=split), sims, min_active_frac, patch_size)
        total[split] = n_origins * (ref["n_timesteps"] - 1) * len(sims)
    return {"patch_size": list(index.effective_patch(ref["grid"], patch_size)), "stride": list(stride),
            "min_active_frac": min_active_frac, "origins_per_sim": n_origins, "kept": kept, "total": total}


