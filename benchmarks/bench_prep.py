"""Prep throughput, peak memory and random 32^3 patch read rate on one full-size simulation.

    python benchmarks/bench_prep.py [--workdir /tmp/bench_prep] [--variants 16:none 16:lzf 16:gzip 32:none]

Generates one 326x70x76x30 raw v2.4 file (written one time step at a time, so the
generator itself stays small), runs `voxel-ode prep` on it in a child process for
each chunk/compression variant (peak RSS of that child from os.wait4), then reads
random 32^3 patches (all the statics + the state at t and t+1, as a training
sample needs) from the packed file. Deletes its files at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from voxel_ode import schema


def write_full_size_raw(path: Path, grid=schema.FULL_GRID_SHAPE, n_t=schema.N_TIMESTEPS, seed=0) -> None:
    """A realistic-looking raw file: ~40% active reservoir layer, log-normal perms, smooth plumes."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = grid
    z = np.arange(nz, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    # a dipping reservoir layer between two surfaces: most of the box is inactive like real models
    top = 80 + 0.5 * x + 0.2 * y
    active = ((z >= top) & (z < top + 140)).astype(np.float32)
    p0 = np.broadcast_to(1e5 + 1e4 * 10 * z, grid).astype(np.float32)  # 10 m cells, hydrostatic
    t0 = np.broadcast_to(288.0 + 0.03 * 10 * z, grid).astype(np.float32)
    statics = {
        "FaultId": np.broadcast_to((x > nx // 2).astype(np.float32) * 2, grid).astype(np.float32),
        "IsActive": np.broadcast_to(active, grid).astype(np.float32),
        "IsWell": np.zeros(grid, np.float32),
        "InjRate": np.zeros(grid, np.float32),
        "PermX": (10 ** rng.normal(-13, 0.7, grid)).astype(np.float32),
        "PermY": (10 ** rng.normal(-13, 0.7, grid)).astype(np.float32),
        "PermZ": (10 ** rng.normal(-14, 0.7, grid)).astype(np.float32),
        "Porosity": rng.uniform(0.05, 0.3, grid).astype(np.float32),
        "Pressure0": p0,
        "Temperature0": t0,
    }
    statics["IsWell"][:, 20, 20] = statics["IsWell"][:, 50, 56] = 1
    statics["InjRate"][:, 20, 20], statics["InjRate"][:, 50, 56] = 2.0, -2.0
    r_inj = np.sqrt((y - 20) ** 2 + (x - 20) ** 2)
    r_prod = np.sqrt((y - 50) ** 2 + (x - 56) ** 2)
    # the priors need cell sizes and the lateral boundary: declared next to the file
    (Path(path).parent / "description.json").write_text(json.dumps(
        {"lateral_boundary": "closed", "quantities": {"CellSizeX": 100.0, "CellSizeY": 100.0, "CellSizeZ": 10.0}}))
    with h5py.File(path, "w") as f:
        for name, value in statics.items():
            f.create_dataset(schema.raw_path(name), data=value)
        params = rng.normal(0, 1, schema.N_PARAMS).astype(np.float32)  # meaningless: nothing is declared of them
        f.create_dataset(schema.raw_path(schema.PARAMS_SCALAR), data=params)
        dyn = {n: f.create_dataset(schema.raw_path(n), (n_t,) + tuple(grid), np.float32) for n in schema.DYNAMIC_NAMES}
        for t in tqdm(range(n_t), desc="generate", unit="step"):
            plume = np.exp(-r_inj / (5 + 2 * t)) - np.exp(-r_prod / (5 + 2 * t))
            noise = rng.normal(0, 1, grid).astype(np.float32)
            dyn["Pressure"][t] = p0 + (1e5 * t * plume + 100 * t * noise) * active
            dyn["Temperature"][t] = t0 - (5.0 * np.sqrt(t) * np.clip(plume, 0, None) + 0.01 * t * noise) * active
        for i, name in enumerate(schema.SCALAR_NAMES):
            f.create_dataset(schema.raw_path(name), data=10.0 ** (i + 5) * (1 + 0.01 * np.arange(n_t)))


def run_prep(raw_dir: Path, out: Path, chunk: int, compression: str) -> dict:
    cmd = [sys.executable, "-m", "voxel_ode.cli", "prep", "--input_root", str(raw_dir), "--out_root", str(out),
           "--n_test", "0", "--chunk_edge", str(chunk), "--compression", compression]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
    seconds = time.perf_counter() - start
    text = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"prep failed:\n{text}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": text}


def patch_read_rate(prepped: Path, index: Path, n: int, repeats: int = 3) -> float:
    """Median over ``repeats`` runs of n random index lines (the machine is shared: timings are noisy)."""
    rows = index.read_text().splitlines()
    rates = []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        picks = [json.loads(rows[i]) for i in rng.integers(0, len(rows), n)]
        with h5py.File(prepped, "r") as f:  # one handle, like one DataLoader worker
            static, grid = f[schema.PREPPED_STATIC], f[schema.PREPPED_OUTPUTS_GRID]
            start = time.perf_counter()
            for r in picks:
                zs, ys, xs = slice(r["z0"], r["z1"]), slice(r["y0"], r["y1"]), slice(r["x0"], r["x1"])
                static[:, zs, ys, xs]
                grid[r["t"]:r["t"] + 2, :, zs, ys, xs]
            rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench_prep")
    parser.add_argument("--variants", nargs="+", default=["16:none", "16:lzf", "16:gzip", "32:none"])
    parser.add_argument("--n_patches", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = Path(args.workdir)
    raw_dir = work / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_dir / "v2.4_0001.h5"
    try:
        if not raw.exists():
            write_full_size_raw(raw)
        raw_mb = raw.stat().st_size / 1e6
        print(f"raw file: {raw_mb:.0f} MB, grid {schema.FULL_GRID_SHAPE}, T={schema.N_TIMESTEPS}")
        print("| chunk edge | compression | prep s | MB/s raw | peak RSS MB | packed MB | 32^3 patches/s |")
        print("|---|---|---|---|---|---|---|")
        for variant in args.variants:
            chunk, compression = variant.split(":")
            out = work / f"out_{chunk}_{compression}"
            shutil.rmtree(out, ignore_errors=True)
            r = run_prep(raw_dir, out, int(chunk), compression)
            packed = out / "train" / "v2.4_0001.prepped.h5"
            rate = patch_read_rate(packed, out / "index_train.jsonl", args.n_patches)
            print(f"| {chunk} | {compression} | {r['seconds']:.1f} | {raw_mb / r['seconds']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {packed.stat().st_size / 1e6:.0f} | {rate:.0f} |", flush=True)
            if variant == args.variants[0]:
                print("\n".join("    " + line for line in r["stdout"].splitlines()), flush=True)
            shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
