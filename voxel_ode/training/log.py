"""What a training run reports: tqdm on rank 0, ``metrics.jsonl`` always (one JSON record per log
line or evaluation), Weights & Biases on request (optional dependency, works offline)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from voxel_ode import files, schema
from voxel_ode.utils import UserError

class Logger:
    def __init__(self, save_dir: Path, is_main: bool, use_wandb: bool, config: dict, resume: bool,
                 resume_step: int | None = None):
        self.is_main = is_main
        self.path = save_dir / "metrics.jsonl"
        self.wandb = None
        if not is_main:
            return
        save_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh metrics file
        elif resume and resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        if use_wandb:
            try:
                import wandb
            except ImportError:
                raise UserError("--use_wandb: wandb is not importable: `pip install wandb` or drop --use_wandb") from None
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "voxel-ode"), config=config,
                                    dir=str(save_dir))

    def _truncate_after(self, step: int) -> None:
        """Drop the records of the stretch a killed run did after the checkpoint we resume from
        (and a half-written last line), so the resumed run's steps are not there twice."""
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        with files.atomic_path(self.path) as tmp:
            tmp.write_text("".join(keep))

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        # appended line by line: a crash loses at most the last record, never the file
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


class LogWindow:
    """Sums over the steps since the last log line; a "train" record averages them."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t, self.samples, self.voxels, self.loss, self.n = time.time(), 0, 0, 0.0, 0
        self.grid, self.scalar = torch.zeros(schema.N_DYNAMIC), torch.zeros(schema.N_SCALARS)

    def add(self, batch: dict, k_steps: int, world: int, loss, grid_parts, scalar_parts) -> None:
        self.samples += batch["x"].shape[0] * world
        self.voxels += batch["x"][:, 0].numel() * world * k_steps
        self.loss += loss.item()
        self.grid += grid_parts.cpu()
        self.scalar += scalar_parts.cpu()
        self.n += 1

    def record(self, step: int, epoch: int, lr: float, grad_norm, k_steps: int, t_start: float) -> dict:
        """The metrics.jsonl "train" record (its keys and their order are the file's format)."""
        dt = max(time.time() - self.t, 1e-9)
        n = self.n
        return {"event": "train", "step": step, "epoch": epoch, "lr": lr, "loss": self.loss / n,
                "grad_norm": float(grad_norm), "rollout_steps": k_steps,
                **{f"loss_{name}": float(self.grid[c] / n) for c, name in enumerate(schema.DYNAMIC_NAMES)},
                **{f"loss_{name}": float(self.scalar[j] / n) for j, name in enumerate(schema.SCALAR_NAMES)},
                "patches_per_s": self.samples / dt, "voxels_per_s": self.voxels / dt,
                "elapsed_s": time.time() - t_start}
