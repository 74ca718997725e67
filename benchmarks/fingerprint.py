"""Fingerprint of the whole pipeline's outputs, for refactors that must not change behaviour.

Runs synth -> prep (declared and calibrated) -> train (patch, full with a 2-step unroll, the
seed's model, a resume) -> evaluate (+ linear baseline) -> rollout (raw, tiled, bf16) on a tiny
grid through the `voxel-ode` command only, and open-darts files from ../shared/darts-dev through
prep when they are there. Prints one SHA-256 per output array / record, timings and paths left
out, as JSON. Run it before and after a change and diff the two files:

    python benchmarks/fingerprint.py --out bench_out/fp_before > before.json
    (change the code)
    python benchmarks/fingerprint.py --out bench_out/fp_after > after.json && diff before.json after.json

Single-threaded and with VOXEL_ODE_CPU_BF16=0 (bf16 only where asked), so the digests do not
depend on the machine's load. ~2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

# values that change from run to run (wall time, absolute paths)
VOLATILE = {"elapsed_s", "patches_per_s", "voxels_per_s", "eval_s", "seconds", "mb_per_s", "source", "checkpoint",
            "stats", "model_seconds_per_step", "metrics_path", "best_checkpoint", "last_checkpoint", "best_path",
            "save_dir", "prepped_root", "resume", "out_root", "description_source", "train_args"}
DARTS_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "darts-dev"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def scrub(obj):
    """JSON-like value without the volatile entries."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return sha(obj.detach().cpu().contiguous().numpy().tobytes())
    return obj


def json_digest(obj) -> str:
    return sha(json.dumps(scrub(obj), sort_keys=True, default=str).encode())


def h5_digests(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = sha(np.ascontiguousarray(obj[()]).tobytes())
        f.visititems(visit)
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items() if k not in VOLATILE}
        out["@attrs"] = json_digest(attrs)
    return out


def checkpoint_digests(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {k: json_digest(v) for k, v in ckpt.items() if k not in VOLATILE}
    out["train_args"] = json_digest({k: v for k, v in ckpt.get("train_args", {}).items() if k not in VOLATILE})
    # numpy's and Python's global generators are never seeded (nothing draws from them): torch's only
    out["rng"] = json_digest([r["torch"] for r in ckpt.get("rng") or []])
    return out


def jsonl_digest(path: Path) -> str:
    return json_digest([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def folder_digests(root: Path) -> dict:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if path.suffix == ".h5":
            out[rel] = h5_digests(path)
        elif path.suffix == ".pt":
            out[rel] = checkpoint_digests(path)
        elif path.suffix == ".json":
            out[rel] = json_digest(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[rel] = jsonl_digest(path)
        elif path.suffix == ".csv":
            out[rel] = sha(path.read_bytes())
        elif path.suffix == ".npz":  # the zip holds file dates: compare the arrays
            with np.load(path, allow_pickle=False) as data:
                out[rel] = {k: sha(np.ascontiguousarray(data[k]).tobytes()) for k in sorted(data.files)}
        else:  # pictures, XDMF: present, not compared byte for byte
            out[rel] = "present"
    return out


def cli(*args, bf16=False) -> None:
    env = dict(os.environ, VOXEL_ODE_CPU_BF16="1" if bf16 else "0", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "voxel_ode.cli", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


TINY_MODEL = ("--base_channels", 8, "--depth", 1, "--receptive_field_radius", 1, "--batch_size", 2,
              "--warmup_steps", 2, "--log_every", 2, "--eval_every", 3, "--eval_max_batches", 2, "--ckpt_every", 3,
              "--num_threads", 1, "--quiet", "--device", "cpu", "--amp", "none")


def run(out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    raw, raw_bare = out / "raw", out / "raw_bare"
    cli("synth", "--out", raw, "--n", 7, "--grid", 12, 8, 8, "--seed", 3, "--n_steps", 6)
    raw_bare.mkdir()
    for p in raw.glob("v2.4_*.h5"):
        shutil.copy(p, raw_bare / p.name)  # no description.json: prep calibrates
    cli("prep", "--input_root", raw, "--out_root", out / "prep", "--patch_size", 8, 8, 8, "--stride", 4, 4, 4,
        "--n_test", 2)
    cli("prep", "--input_root", raw_bare, "--out_root", out / "prep_cal", "--patch_size", 8, 8, 8,
        "--stride", 8, 8, 8, "--n_test", 2)
    cli("train", "--prepped_root", out / "prep", "--save_dir", out / "ck_patch", "--max_steps", 6, "--aug_xy_rot",
        "--aug_flip", *TINY_MODEL)
    cli("train", "--prepped_root", out / "prep", "--save_dir", out / "ck_resume", "--max_steps", 6,
        "--aug_xy_rot", "--aug_flip", "--resume", out / "ck_patch" / "step3.pt", *TINY_MODEL)
    cli("train", "--prepped_root", out / "prep_cal", "--save_dir", out / "ck_full", "--max_steps", 6,
        "--sample_mode", "full", "--rollout_steps", 2, "--rollout_curriculum_steps", 3, *TINY_MODEL)
    cli("train", "--prepped_root", out / "prep", "--save_dir", out / "ck_seed", "--max_steps", 4,
        "--norm", "spatial", "--no_global_context", "--delta_norm", "zscore", "--no_priors", *TINY_MODEL)
    cli("train", "--prepped_root", out / "prep", "--save_dir", out / "ck_k3", "--max_steps", 4,
        "--sample_mode", "full", "--rollout_steps", 3, "--rollout_grad", "full", *TINY_MODEL)
    ckpt = out / "ck_patch" / "last.pt"
    cli("evaluate", "--prepped_root", out / "prep", "--ckpt_path", ckpt, "--out", out / "eval",
        "--linear_baseline", "--plots", "--amp", "none", "--no_progress")
    cli("evaluate", "--prepped_root", out / "prep", "--ckpt_path", out / "ck_seed" / "last.pt", "--out",
        out / "eval_seed", "--amp", "none", "--no_progress", "--tile", 4, 4, 4)
    cli("rollout", "--raw_sim_path", raw / "v2.4_0001.h5", "--ckpt_path", ckpt, "--save_path",
        out / "rollout" / "raw.h5", "--amp", "none", "--no_progress", "--save_truth")
    cli("rollout", "--prepped_sim_path", out / "prep" / "test" / "v2.4_0002.prepped.h5", "--ckpt_path", ckpt,
        "--save_path", out / "rollout" / "tiled.h5", "--amp", "none", "--no_progress", "--tile", 4, 4, 4)
    cli("rollout", "--prepped_sim_path", out / "prep" / "test" / "v2.4_0002.prepped.h5", "--ckpt_path",
        out / "ck_full" / "last.pt", "--save_path", out / "rollout" / "bf16.h5", "--amp", "bf16", "--no_progress",
        bf16=True)
    if (DARTS_DEV / "data").is_dir():
        darts = out / "darts"
        darts.mkdir()
        for i in range(6):
            shutil.copy(DARTS_DEV / "data" / f"v2.4_{i:04d}.h5", darts)
        cli("prep", "--input_root", darts, "--out_root", out / "prep_darts_cal", "--patch_size", 16, 16, 16,
            "--stride", 16, 16, 16, "--n_test", 1)
        desc = Path(__file__).resolve().parent / "descriptions" / "darts-dev.json"
        cli("prep", "--input_root", darts, "--out_root", out / "prep_darts", "--patch_size", 16, 16, 16,
            "--stride", 16, 16, 16, "--n_test", 1, "--description", desc)
        shutil.rmtree(darts)
    shutil.rmtree(raw_bare)
    return folder_digests(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_out/fingerprint", help="work folder (replaced)")
    args = parser.parse_args()
    print(json.dumps(run(Path(args.out)), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
