"""Training: `voxel-ode train` == `python scripts/train_ddp.py` == `torchrun ... scripts/train_ddp.py`.

Read top to bottom: arguments -> distributed setup -> RNG state -> logging ->
training state and checkpoints (``start_from`` and ``restore``: all that --resume
reads) -> the loss -> evaluation -> data order -> the run: ``train()`` =
``build_run`` (model, data, optimizer) -> ``train_loop`` (train step, log, eval,
checkpoint, time budget) -> ``finish`` (final eval, last.pt, summary).

* One process when not under torchrun; DDP when torchrun sets WORLD_SIZE > 1
  (NCCL on CUDA, gloo on CPU). Only rank 0 logs and writes files.
* Data order is a deterministic function of (seed, epoch): every epoch uses
  ``DistributedSampler(seed=seed).set_epoch(epoch)`` and a resumed run skips
  the batches already seen, so a resumed loss curve equals the uninterrupted one.
* The loss is the seed's "MSE for grids + MSE for scalars, weighted equally":
  masked MSE over active cells of the normalized change of (P, T) plus MSE of
  the normalized field scalars. The scalars are only trained where they are
  well-posed: when the model has a whole-field path, or on full-grid samples.
* ``--rollout_steps K`` (full-grid samples) feeds the model its own
  predictions for K steps. ``--rollout_grad pushforward`` detaches each
  step's input (gradients never flow through earlier steps, the pushforward
  trick); ``full`` backpropagates through the whole unroll.
* Checkpoints hold only tensors and plain Python types, so they load with
  ``torch.load(weights_only=True)``. Besides design.md's keys they carry
  ``delta_mode`` (the change normalization, "asinh" or "zscore") and ``best_path``.
* Multi-GPU: NCCL peer-to-peer is left on (the seed disabled it, which slows
  NVLink machines). On a PCIe box where NCCL hangs, opt in with
  ``export NCCL_P2P_DISABLE=1`` before torchrun.
* Library use: ``train(prepped_root=..., max_steps=..., ...)`` (CLI option
  names) returns a summary dict; the demo calls it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from voxel_ode import schema
from voxel_ode.data import checks
from voxel_ode.inference import metrics
from voxel_ode.model.precision import add_amp_arg
from voxel_ode.training.schedule import warmup_cosine
from voxel_ode.utils import UserError, atomic_path

# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--prepped_root", default=None, help="folder written by `voxel-ode prep` (stats.json, index_*.jsonl, train/, test/)")
    g.add_argument("--sample_mode", choices=("patch", "full"), default="patch",
                   help="patch: patches from the index (the seed); full: whole-grid samples, needed for the "
                        "whole-field path to learn and for --rollout_steps > 1")
    g.add_argument("--batch_size", type=int, default=16, help="samples per process per step")
    g.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes (each opens its own HDF5 handles, so >0 works). "
                        "0 is the default: on the 2-core CPU machine workers compete with the training "
                        "threads and were not faster (benchmarks/bench_train.py)")
    g.add_argument("--aug_xy_rot", action="store_true", help="random 90 degree turns in the XY plane (never Z); PermX/PermY swap with the turn")
    g.add_argument("--aug_flip", action="store_true", help="random X and Y flips")
    g.add_argument("--noise_std", type=float, default=0.01, help="Gaussian noise (normalized units) on the dynamic inputs")

    g = p.add_argument_group("model")
    g.add_argument("--receptive_field_radius", type=int, default=3, help="stem kernel = 2r+1 (residual blocks use 3^3)")
    g.add_argument("--base_channels", type=int, default=128, help="feature width")
    g.add_argument("--depth", type=int, default=12, help="number of residual blocks")
    g.add_argument("--norm", choices=("channel", "spatial"), default="channel",
                   help="channel: per-voxel LayerNorm over channels (patch and full-grid outputs agree); "
                        "spatial: the seed's norm over the patch")
    g.add_argument("--no_global_context", action="store_true", help="the seed's purely local model (no whole-field path)")
    g.add_argument("--no_priors", action="store_true",
                   help="the grid head alone predicts each step's change (the seed's model). Default: the pressure "
                        "head sets the change since t = 0 from the pressure prior plus a residual, the temperature "
                        "head the thermal prior's step plus a residual (zero priors where prep computed none)")
    g.add_argument("--delta_norm", choices=("asinh", "zscore"), default="asinh",
                   help="normalization of the change targets: asinh(delta/s) with a robust per-simulation "
                        "scale (dataset.Normalizer), or the seed's pooled z-score")

    g = p.add_argument_group("optimization")
    g.add_argument("--max_steps", type=int, default=200_000, help="optimizer steps; also the cosine horizon")
    g.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    g.add_argument("--min_lr_ratio", type=float, default=0.1, help="cosine decays to lr * this at max_steps")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (weights of convolutions/linears only)")
    g.add_argument("--warmup_steps", type=int, default=1000, help="linear LR warmup steps (may exceed max_steps)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    g.add_argument("--rollout_steps", type=int, default=1,
                   help="train through K autoregressive steps on the model's own predictions (K > 1 needs --sample_mode full)")
    g.add_argument("--rollout_grad", choices=("pushforward", "full"), default="pushforward",
                   help="pushforward: each step's input is detached (cheap, stable); full: backprop through all K steps")
    g.add_argument("--rollout_curriculum_steps", type=int, default=0,
                   help="grow K linearly from 1 to --rollout_steps over this many steps (0 = use K from the start)")
    add_amp_arg(g)
    g.add_argument("--use_amp", action="store_true",
                   help="the seed's flag: GPU mixed precision (bf16 where supported, else fp16 + GradScaler); "
                        "the same as --amp auto, which is the default")
    g.add_argument("--time_budget_min", type=float, default=0.0,
                   help="stop cleanly (final eval + checkpoint) after this many minutes of wall time (0 = no limit); "
                        "the LR cosine then ends with the budget (re-estimated at every log line)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    g.add_argument("--num_threads", type=int, default=0,
                   help="CPU threads per process (0 = torch's default). On a CPU shared with other jobs, "
                        "fewer threads than cores avoids OpenMP spin contention (10x slowdowns seen)")

    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log_every", type=int, default=100, help="steps between training log lines")
    g.add_argument("--eval_every", type=int, default=1000,
                   help="steps between evaluations on the test split; 0 = only once, after the last step")
    g.add_argument("--eval_max_batches", type=int, default=50, help="batches per evaluation (0 = the whole test split)")
    g.add_argument("--ckpt_every", type=int, default=10_000, help="steps between periodic checkpoints step{N}.pt")
    g.add_argument("--save_dir", default="./checkpoints", help="checkpoints and metrics.jsonl go here")
    g.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to continue (same LR position, same next batches)")
    g.add_argument("--use_wandb", action="store_true", help="also log to Weights & Biases (WANDB_PROJECT, WANDB_MODE=offline work)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    train(args)
    return 0


def default_args(**overrides) -> argparse.Namespace:
    """The CLI defaults, with ``overrides`` applied (for in-process callers such as the demo)."""
    p = argparse.ArgumentParser()
    add_train_args(p)
    args = p.parse_args([])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown training option: {key}")
        setattr(args, key, value)
    return args


def _check_args(a: argparse.Namespace) -> None:
    if not a.prepped_root:
        raise UserError("--prepped_root: missing: give the folder written by `voxel-ode prep`")
    for name in ("batch_size", "max_steps", "log_every", "ckpt_every", "rollout_steps"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name}: must be >= 1, got {getattr(a, name)}")
    if a.eval_every < 0:
        raise UserError(f"--eval_every: must be >= 0 (0 = only after the last step), got {a.eval_every}")
    if a.rollout_steps > 1 and a.sample_mode != "full":
        raise UserError("--rollout_steps: training through K > 1 steps needs whole grids: add --sample_mode full")
    if a.num_workers < 0 or a.warmup_steps < 0:
        raise UserError("--num_workers/--warmup_steps: must be >= 0")


# ---------------------------------------------------------------------------
# Distributed setup, device and precision
# ---------------------------------------------------------------------------


class Dist:
    """Rank/world of this process; single process when not launched by torchrun."""

    def __init__(self, device_flag: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_flag == "auto" else device_flag == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible to torch")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        # launched by torchrun (even with one process): run the process-group code path, so a
        # one-GPU torchrun job exercises NCCL, DDP and the RNG gather exactly as N GPUs do
        self.enabled = self.world > 1 or all(k in os.environ for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE"))
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            # NCCL for GPUs, gloo for CPU. NCCL_P2P_DISABLE is NOT forced (it slows
            # NVLink machines); set NCCL_P2P_DISABLE=1 yourself on PCIe boxes that hang.
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.owns_group = True
        self.is_main = self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when any rank says True (used to stop all ranks together)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce_sum(t).item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():  # leave a caller's process group alone
            dist.destroy_process_group()


def amp_policy(amp: str | None, device: torch.device, log=print, use_amp: bool = False) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler) for --amp (precision.resolve: the same choice as
    rollouts make); --use_amp, the seed's GPU AMP, is --amp auto."""
    from voxel_ode.model import precision

    if use_amp and amp == "none":
        raise UserError("--use_amp asks for mixed precision, --amp none for fp32: give one of them")
    chosen = precision.resolve(amp, device, log)
    log(f"precision: {chosen.name} ({chosen.reason})")
    return chosen.dtype, chosen.scaler


# ---------------------------------------------------------------------------
# RNG state (as tensors / lists, so checkpoints load with weights_only=True)
# ---------------------------------------------------------------------------


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------
# Logging: tqdm on rank 0, metrics.jsonl always, wandb on request
# ---------------------------------------------------------------------------


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
        with atomic_path(self.path) as tmp:
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


# ---------------------------------------------------------------------------
# Training state and checkpoints: what a run starts from, saves and resumes.
# Everything --resume reads from a checkpoint is in start_from and restore.
# ---------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint beside weights, optimizer, schedule and scaler."""

    step: int = 0
    best_metric: float = float("inf")  # the lowest eval loss so far
    best_path: str | Path | None = None  # its checkpoint (a str when read back from a checkpoint)


def _plain(value):
    """argparse values -> plain types that weights_only loading accepts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def start_from(args, stats: dict, root: Path):
    """(checkpoint or None, model config, delta_mode) to build the run from. A resumed run takes
    the architecture and change normalization from its checkpoint (its weights fit only those),
    a fresh run from the flags."""
    from voxel_ode.model.network import ModelConfig, checkpoint_config, load_checkpoint

    if args.resume:
        ckpt = load_checkpoint(args.resume)
        checks.check_resume_checkpoint(ckpt, args.resume, stats, root / schema.STATS_FILE)
        return ckpt, checkpoint_config(ckpt, args.resume), ckpt.get("delta_mode", args.delta_norm)
    if not args.no_priors and args.delta_norm != "asinh":
        raise UserError("train: the prior heads need --delta_norm asinh (add --no_priors for zscore)")
    config = ModelConfig(base_channels=args.base_channels, depth=args.depth,
                         receptive_field_radius=args.receptive_field_radius, norm=args.norm,
                         global_context=not args.no_global_context, priors=not args.no_priors,
                         temperature_residual=needs_temperature_residual(stats))
    return None, config, args.delta_norm


def needs_temperature_residual(stats: dict) -> bool:
    """Whether the temperature head needs a residual beside the thermal prior: where prep computed
    no priors, or computed them with calibrated constants (calibration.py fits pressure only)."""
    return not stats.get("priors", False) or bool((stats.get("description") or {}).get("calibrated"))


def restore(ckpt: dict, args, model, opt: Optim, ddp: Dist, log) -> TrainState:
    """Load a --resume checkpoint into the built run: weights, optimizer, schedule, scaler, this
    rank's RNG state; returns its step and best so far."""
    from voxel_ode.training.schedule import WarmupCosine

    try:
        model.load_state_dict(ckpt["model"])
        opt.optimizer.load_state_dict(ckpt["optimizer"])
        opt.scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{args.resume}: checkpoint: its state does not fit this model "
                        f"({(str(err).splitlines() or [''])[0][:200]})") from None
    # keep the schedule of THIS invocation's flags (e.g. a longer --max_steps)
    opt.scheduler.lr_lambdas[0] = WarmupCosine(args.warmup_steps, args.max_steps, args.min_lr_ratio)
    if ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(step=int(ckpt["step"]), best_metric=float(ckpt.get("best_metric", float("inf"))),
                       best_path=ckpt.get("best_path"))
    rng = ckpt.get("rng") or []
    if rng:
        set_rng_state(rng[ddp.rank] if ddp.rank < len(rng) else rng[0])
    log(f"resumed from {args.resume} at step {state.step}")
    return state


def save_training_checkpoint(run: Run, state: TrainState, name: str) -> Path:
    """Gather every rank's RNG state, then rank 0 writes ``name`` atomically."""
    from voxel_ode.model.network import config_dict

    rng = [get_rng_state()]
    if run.ddp.enabled:
        rng = [None] * run.ddp.world
        dist.all_gather_object(rng, get_rng_state())
    path = run.save_dir / name
    if run.ddp.is_main:
        save_checkpoint(path, {
            "model": run.model.state_dict(), "model_config": config_dict(run.model),
            "optimizer": run.opt.optimizer.state_dict(), "scheduler": run.opt.scheduler.state_dict(),
            "scaler": run.opt.scaler.state_dict(), "step": state.step, "best_metric": state.best_metric,
            "best_path": str(state.best_path) if state.best_path else None, "rng": rng, "stats": run.stats,
            "train_args": run.train_args, "delta_mode": run.delta_mode,
            "stats_digest": checks.stats_result_digest(run.stats),  # rollout compares a stats.json with it
        })
    return path


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 over all parameters (name order), to compare weights across DDP ranks."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Loss: one module whose forward runs the whole K-step unroll, so DDP sees one
# forward per backward even when the model is applied K times.
# ---------------------------------------------------------------------------


def masked_channel_mse(pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-channel MSE over active cells of [B,C,D,H,W] tensors -> [C]."""
    m = (active > 0.5).to(pred.dtype)
    se = ((pred - target) ** 2 * m).sum(dim=(0, 2, 3, 4))
    return se / m.sum().clamp_min(1.0)


PRESSURE_OUT = schema.OUTPUT_CHANNELS.index("Pressure")
TEMPERATURE_OUT = schema.OUTPUT_CHANNELS.index("Temperature")
PRESSURE_CHANGE_IN = schema.channel_index("PressureChange")


def pressure_since_start(delta, target, x, true_so_far):
    """Swap the pressure channel of (prediction, target) [B,2,...] for asinh(change since t = 0 / s_P).

    x: the step's input (its PressureChange channel is the change so far, the model's own after
    the first unrolled step); true_so_far: the true (P - P0) / s_P at the input step.
    Returns (prediction, target, true change / s_P at the next step).
    """
    p, c = PRESSURE_OUT, PRESSURE_CHANGE_IN
    true_next = true_so_far + torch.sinh(target[:, p:p + 1])
    pred_next = torch.sinh(x[:, c:c + 1].float()) + torch.sinh(delta[:, p:p + 1])
    delta = torch.cat([delta[:, :p], torch.asinh(pred_next), delta[:, p + 1:]], dim=1)
    target = torch.cat([target[:, :p], torch.asinh(true_next), target[:, p + 1:]], dim=1)
    return delta, target, true_next


class Unroll(torch.nn.Module):
    """Applies the model for K steps and returns the training loss and its parts."""

    def __init__(self, model: torch.nn.Module, normalizer, train_scalars: bool, amp_dtype):
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.train_scalars = train_scalars
        self.amp_dtype = amp_dtype
        # With the priors each step sets the pressure change since t = 0, so the pressure loss
        # compares that (asinh-scaled) instead of the step's increment: an error of the prior's
        # gain then weighs what it does in a rollout, and the small yearly increments after the
        # first year no longer make the pressure term dwarf the temperature term.
        self.pressure_since_start = sets_change_since_start(model.config)

    def forward(self, batch: dict, k_steps: int, detach_between: bool):
        x, active, params = batch["x"], batch["active"], batch["params"]
        t = batch["t"]
        extra = {}
        if "context_x" in batch:  # patch mode: whole-field context from the dataset, computed in forward
            extra = dict(origin=batch["origin"], context_x=batch["context_x"], context_active=batch["context_active"])
        grid_losses, scalar_losses = [], []
        true_so_far = torch.sinh(x[:, PRESSURE_CHANGE_IN:PRESSURE_CHANGE_IN + 1].float())  # true (P - P0) / s_P
        for k in range(k_steps):
            with _autocast(x.device, self.amp_dtype):
                delta, scalars = self.model(x, params, active, **extra)
            delta, scalars = delta.float(), scalars.float()
            pred, target = delta, batch["target_delta"][:, k]
            if self.pressure_since_start:
                pred, target, true_so_far = pressure_since_start(pred, target, x, true_so_far)
            grid_losses.append(masked_channel_mse(pred, target, active))
            scalar_losses.append(((scalars - batch["target_scalars"][:, k]) ** 2).mean(dim=0))
            if k + 1 < k_steps:  # feed the model its own prediction, one step later
                prior = batch["priors"][:, k + 1:k + 3].flatten(1, 2)  # the pair of step k + 1
                x = self.normalizer.update_input(x, delta.detach() if detach_between else delta, active, prior)
                params = self.normalizer.conditioning(params[:, :-1], t + k + 1)
        grid = torch.stack(grid_losses).mean(dim=0)  # [2]
        scalar = torch.stack(scalar_losses).mean(dim=0)  # [5]
        # the seed: MSE for grids + MSE for scalars, weighted equally. Without a trained
        # scalar path the term is multiplied by 0 (keeps every parameter in the graph for DDP).
        loss = grid.mean() + (scalar.mean() if self.train_scalars else 0.0 * scalar.sum())
        return loss, grid.detach(), scalar.detach()


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def fit_schedule_to_budget(scheduler, step: int, start_step: int, t_start: float, args, ddp: Dist,
                           t_loop: float | None = None) -> int | None:
    """With --time_budget_min, end the cosine where the budget ends, not at --max_steps.
    Returns that horizon (the progress bar shows it too), None while too few steps tell.

    The horizon is re-estimated at every log line from the steps per second since the loop
    began at ``t_loop`` (evaluations included; setup before it is not a step), averaged
    over ranks so every rank keeps the same LR. Otherwise a time-limited run with a large
    --max_steps never decays its LR. The budget itself counts from ``t_start``.
    """
    now = time.time()
    elapsed, in_loop = now - t_start, now - (t_start if t_loop is None else t_loop)
    if step - start_step < 10 or in_loop <= 0:
        return None
    rate = (step - start_step) / in_loop
    estimate = torch.tensor([step + rate * max(args.time_budget_min * 60 - elapsed, 0.0)], dtype=torch.float64,
                            device=ddp.device)
    estimate = ddp.all_reduce_sum(estimate).item() / ddp.world
    horizon = int(min(args.max_steps, max(step + 1, estimate)))
    scheduler.lr_lambdas[0].max_steps = horizon
    return horizon


def rollout_k(step: int, args) -> int:
    """Number of unrolled steps at ``step`` (curriculum grows it linearly from 1)."""
    if args.rollout_curriculum_steps <= 0 or args.rollout_steps <= 1:
        return args.rollout_steps
    frac = min(1.0, step / args.rollout_curriculum_steps)
    return 1 + int(frac * (args.rollout_steps - 1))


# ---------------------------------------------------------------------------
# Evaluation on the test split: one-step errors per output variable
# ---------------------------------------------------------------------------


def sets_change_since_start(config) -> bool:
    """Whether the model's pressure step sets the change since t = 0 (the priors)."""
    return bool(config.priors)


@torch.no_grad()
def evaluate(model, loader, normalizer, device, amp_dtype, ddp: Dist, eval_scalars: bool) -> dict:
    """Masked MSE in normalized space, the seed's +/-5% accuracy and +/-5 bar / 5 K accuracy (physical).

    The MSE compares what the training loss compares: with the priors, the pressure
    change since t = 0 (asinh-scaled); the "no change" baseline is then the change so far.
    """
    since_start = sets_change_since_start(getattr(model, "module", model).config)
    model.eval()
    nd, ns = schema.N_DYNAMIC, schema.N_SCALARS
    sums = torch.zeros(4 * nd + 1 + 2 * ns + 1, dtype=torch.float64, device=device)
    tol = torch.tensor([schema.DEFAULT_PRESSURE_TOL_PA, schema.DEFAULT_TEMPERATURE_TOL_K], dtype=torch.float64,
                       device=device).reshape(1, nd, 1, 1, 1)
    for batch in loader:
        batch = _to_device(batch, device)
        extra = {}
        if "context_x" in batch:
            extra = dict(origin=batch["origin"], context_x=batch["context_x"], context_active=batch["context_active"])
        with _autocast(device, amp_dtype):
            delta, scalars = model(batch["x"], batch["params"], batch["active"], **extra)
        delta, scalars = delta.float(), scalars.float()
        target, active = batch["target_delta"][:, 0], batch["active"]
        m = (active > 0.5).double()
        n_active = m.sum()
        pred_cmp, target_cmp, no_change = delta, target, torch.zeros_like(delta)
        if since_start:
            so_far = torch.sinh(batch["x"][:, PRESSURE_CHANGE_IN:PRESSURE_CHANGE_IN + 1].float())
            pred_cmp, target_cmp, _ = pressure_since_start(delta, target, batch["x"], so_far)
            no_change, _, _ = pressure_since_start(no_change, target, batch["x"], so_far)
        err2 = ((pred_cmp - target_cmp).double() ** 2 * m).sum(dim=(0, 2, 3, 4))
        persist2 = ((no_change - target_cmp).double() ** 2 * m).sum(dim=(0, 2, 3, 4))  # "no change" baseline
        # physical next state: state(t) + change, at active cells
        state = normalizer.denormalize_state(batch["x"][:, schema.STATE_CHANNELS])
        true_next = state + normalizer.denormalize_delta(target)
        pred_next = state + normalizer.denormalize_delta(delta)
        acc_pct = (metrics.within_pct(pred_next, true_next).double() * m).sum(dim=(0, 2, 3, 4))
        acc_abs = (metrics.within_abs(pred_next, true_next, tol).double() * m).sum(dim=(0, 2, 3, 4))
        s_err2 = ((scalars - batch["target_scalars"][:, 0]).double() ** 2).sum(dim=0)
        prev = batch["scalars_prev"].double()
        ratio = batch["production_ratio"][:, 0]
        s_true = normalizer.denormalize_scalars(batch["target_scalars"][:, 0], prev, ratio)
        s_pred = normalizer.denormalize_scalars(scalars, prev, ratio)
        s_acc = metrics.within_pct(s_pred, s_true).double().sum(dim=0)
        n_samples = torch.tensor([float(len(scalars))], dtype=torch.float64, device=device)
        sums += torch.cat([err2, persist2, acc_pct, acc_abs, n_active.reshape(1), s_err2, s_acc, n_samples])
    ddp.all_reduce_sum(sums)
    parts = sums.split([nd, nd, nd, nd, 1, ns, ns, 1])
    n_act, n_smp = max(parts[4].item(), 1.0), max(parts[7].item(), 1.0)
    out = {}
    for c, name in enumerate(schema.DYNAMIC_NAMES):
        out[f"mse_{name}"] = parts[0][c].item() / n_act
        out[f"persist_mse_{name}"] = parts[1][c].item() / n_act
        out[f"acc5pct_{name}"] = parts[2][c].item() / n_act
        out[f"acc_abs_{name}"] = parts[3][c].item() / n_act
    for j, name in enumerate(schema.SCALAR_NAMES):
        out[f"mse_{name}"] = parts[5][j].item() / n_smp
        out[f"acc5pct_{name}"] = parts[6][j].item() / n_smp
    grid = np.mean([out[f"mse_{n}"] for n in schema.DYNAMIC_NAMES])
    scal = np.mean([out[f"mse_{n}"] for n in schema.SCALAR_NAMES])
    # same weighting as the training loss: the scalar term only where it is trained
    out["loss"] = float(grid + (scal if eval_scalars else 0.0))
    out["samples"] = int(n_smp)
    model.train()
    return out


def evaluate_and_keep_best(run: Run, state: TrainState) -> dict | None:
    """Evaluate, log the "eval" record, and checkpoint a new best (deleting the previous best)."""
    from tqdm import tqdm

    if run.eval_loader is None:
        return None
    t0 = time.time()
    res = evaluate(run.model, run.eval_loader, run.normalizer, run.ddp.device, run.opt.amp_dtype, run.ddp,
                   run.train_scalars)
    res = {"event": "eval", "step": state.step, **res, "eval_s": time.time() - t0}
    run.logger.log(res)
    if run.ddp.is_main:
        tqdm.write(f"eval step {state.step}: loss {res['loss']:.4g} | P mse {res['mse_Pressure']:.3g} "
                   f"(no-change {res['persist_mse_Pressure']:.3g}) | T mse {res['mse_Temperature']:.3g} "
                   f"(no-change {res['persist_mse_Temperature']:.3g}) | +/-5 bar {res['acc_abs_Pressure']:.3f} "
                   f"+/-5 K {res['acc_abs_Temperature']:.3f}")
    if res["loss"] < state.best_metric:
        state.best_metric = res["loss"]
        old = state.best_path  # the new best checkpoint still names the previous one as best_path
        state.best_path = save_training_checkpoint(run, state, f"best_step{state.step}.pt")
        # keep only the best one, and never delete files of another run's folder
        if (run.ddp.is_main and old is not None and Path(old) != state.best_path and Path(old).exists()
                and Path(old).parent.resolve() == run.save_dir.resolve()):
            Path(old).unlink()
    return res


# ---------------------------------------------------------------------------
# Data order: a deterministic function of (seed, epoch), so resume can skip ahead
# ---------------------------------------------------------------------------


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, ddp: Dist) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) of ``epoch``; every rank gets the same count."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n_items), num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    n_batches = max(1, len(idx) // batch_size)  # tiny data: one (smaller) batch per epoch
    return [idx[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def _loader(dataset, batch_sampler, args, collate):
    from voxel_ode.training.dataset import worker_init_fn

    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=args.num_workers, collate_fn=collate,
        worker_init_fn=worker_init_fn if args.num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def training_batches(train_ds, args, ddp: Dist, step: int):
    """Endless (epoch, batch) from ``step`` on: a resumed run skips the batches already seen."""
    from voxel_ode.training.dataset import collate

    n_batches = len(epoch_batches(len(train_ds), args.batch_size, args.seed, 0, ddp))
    epoch, offset = divmod(step, n_batches)
    while True:
        train_ds.set_epoch(epoch)  # augmentations are drawn from (seed, epoch, index)
        batches = epoch_batches(len(train_ds), args.batch_size, args.seed, epoch, ddp)[offset:]
        for batch in _loader(train_ds, batches, args, collate):
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def eval_loader(test_ds, args, ddp: Dist):
    """A fixed random subset of the test split (the index is ordered by sim and t), split over
    ranks; None without a test split."""
    from voxel_ode.training.dataset import collate

    if test_ds is None:
        return None
    order = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(1234)).tolist()
    if args.eval_max_batches > 0:
        order = order[: args.eval_max_batches * args.batch_size * ddp.world]
    mine = order[ddp.rank:: ddp.world]
    return _loader(test_ds, [mine[i:i + args.batch_size] for i in range(0, len(mine), args.batch_size)],
                   args, collate)


# ---------------------------------------------------------------------------
# The run: train() = build_run -> train_loop -> finish
# ---------------------------------------------------------------------------


@dataclass
class Optim:
    """AdamW, its LR schedule, and the precision the steps run in."""

    params: list  # the trained parameters (their gradient norm is clipped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32


@dataclass
class Run:
    """The built pieces of one training run; the loop, the evaluation and the checkpoints read them."""

    args: argparse.Namespace
    ddp: Dist
    log: Callable[..., None]  # print on rank 0, silent elsewhere
    save_dir: Path
    stats: dict
    delta_mode: str
    model: torch.nn.Module  # the plain model (what checkpoints hold)
    unroll: torch.nn.Module  # the training loss (Unroll), wrapped in DDP under torchrun
    normalizer: Any
    train_ds: Any
    eval_loader: Any  # None without a test split
    train_scalars: bool  # whether the loss counts the field scalars (build_data says when)
    opt: Optim
    logger: Logger
    train_args: dict  # the flags as plain types (stored in every checkpoint)


def _as_args(args=None, **kwargs) -> argparse.Namespace:
    if args is None:
        return default_args(**kwargs)
    if isinstance(args, dict):
        return default_args(**{**args, **kwargs})
    merged = default_args(**vars(args))
    for key, value in kwargs.items():
        setattr(merged, key, value)
    return merged


def train(args=None, **kwargs) -> dict:
    """Train; returns a summary dict (best/last checkpoint paths, final eval metrics, steps, timing).

    ``args`` is an argparse namespace or a dict of CLI option names; ``kwargs`` override it.
    """
    args = _as_args(args, **kwargs)
    _check_args(args)
    t_start = time.time()
    threads_before = torch.get_num_threads()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    ddp = Dist(args.device)
    try:
        run, state = build_run(args, ddp)
        start_step = state.step
        last_eval, stopped_by_budget = train_loop(run, state, t_start)
        return finish(run, state, start_step, last_eval, stopped_by_budget, t_start)
    finally:
        ddp.close()
        torch.set_num_threads(threads_before)  # an in-process caller keeps its own setting


def build_run(args, ddp: Dist) -> tuple[Run, TrainState]:
    """Model, data, optimizer and logger of a fresh or resumed run, and the state it starts at."""
    from voxel_ode.data.prep import load_stats

    log = print if ddp.is_main else (lambda *a, **k: None)
    root, save_dir = Path(args.prepped_root), Path(args.save_dir)
    stats = load_stats(root)
    ckpt, config, delta_mode = start_from(args, stats, root)
    model = build_model(config, stats, args.seed, ddp, log)
    normalizer, train_ds, test_ds, train_scalars = build_data(args, stats, config, delta_mode, ddp, log)
    opt = build_optimizer(args, model, ddp, log)
    state = restore(ckpt, args, model, opt, ddp, log) if ckpt is not None else TrainState()

    unroll = Unroll(model, normalizer, train_scalars, opt.amp_dtype)
    if ddp.enabled:
        unroll = torch.nn.parallel.DistributedDataParallel(
            unroll, device_ids=[ddp.local_rank] if ddp.device.type == "cuda" else None)
    train_args = {k: _plain(v) for k, v in vars(args).items()}
    if ddp.is_main:  # temporary files of a killed run (whose process is gone)
        checks.clean_leftovers(save_dir, log)
    logger = Logger(save_dir, ddp.is_main, args.use_wandb, train_args, resume=ckpt is not None,
                    resume_step=state.step if ckpt is not None else None)
    run = Run(args=args, ddp=ddp, log=log, save_dir=save_dir, stats=stats, delta_mode=delta_mode, model=model,
              unroll=unroll, normalizer=normalizer, train_ds=train_ds, eval_loader=eval_loader(test_ds, args, ddp),
              train_scalars=train_scalars, opt=opt, logger=logger, train_args=train_args)
    return run, state


def build_model(config, stats: dict, seed: int, ddp: Dist, log) -> torch.nn.Module:
    from voxel_ode.model.network import VoxelAutoRegressor, count_parameters

    torch.manual_seed(seed)  # same initial weights on every rank
    model = VoxelAutoRegressor(config).to(ddp.device)
    yes_no = {True: "yes", False: "no"}
    heads = "no (the grid head alone)"
    if config.priors:
        heads = "yes" if stats.get("priors") else \
            "none computed by prep (zeros: the pressure head predicts the change since t = 0 itself)"
    log(f"model: {count_parameters(model):,} parameters, local receptive field {model.receptive_field} cells, "
        f"norm={config.norm}, whole-field path={yes_no[config.global_context]}, physics priors={heads}")
    return model


def build_data(args, stats: dict, config, delta_mode: str, ddp: Dist, log):
    """(normalizer, train dataset, test dataset or None, whether the scalars are trained)."""
    from voxel_ode.training.dataset import Normalizer, PatchDataset

    if config.priors and delta_mode != "asinh":
        raise UserError("train: the physics priors need --delta_norm asinh")
    root = Path(args.prepped_root)
    normalizer = Normalizer(stats, delta_mode=delta_mode)
    checks.check_prepped_files(sorted(p for split in schema.SPLITS
                                      for p in (root / split).glob(f"*{schema.PREPPED_SUFFIX}")))
    common = dict(stats=stats, mode=args.sample_mode, seed=args.seed,
                  context_factor=config.context_factor, delta_mode=delta_mode)
    train_ds = PatchDataset(root, "train", rollout_steps=args.rollout_steps, aug_xy_rot=args.aug_xy_rot,
                            aug_flip=args.aug_flip, noise_std=args.noise_std, **common)
    try:
        test_ds = PatchDataset(root, "test", **common)
    except UserError as err:
        test_ds = None
        log(f"note: no evaluation ({err})")
    # scalars are field sums: trainable from the whole-field path or from whole grids only
    train_scalars = config.global_context or args.sample_mode == "full"
    n_local = math.ceil(len(train_ds) / ddp.world)
    log(f"data: {len(train_ds):,} train samples ({args.sample_mode}), "
        f"{len(test_ds) if test_ds is not None else 0:,} test; "
        f"{max(1, n_local // args.batch_size)} batches/epoch/process, {ddp.world} process(es) on {ddp.device}"
        + (f" (torch.distributed, {dist.get_backend()})" if ddp.enabled else ""))
    return normalizer, train_ds, test_ds, train_scalars


def build_optimizer(args, model: torch.nn.Module, ddp: Dist, log) -> Optim:
    """AdamW (weight decay on conv/linear weights only), the warmup-cosine schedule, --amp precision."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # conv/linear weights
    no_decay = [p for p in params if p.dim() < 2]  # biases, norm gains
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                                  fused=ddp.device.type == "cuda")
    scheduler = warmup_cosine(optimizer, args.warmup_steps, args.max_steps, args.min_lr_ratio)
    amp_dtype, use_scaler = amp_policy(args.amp, ddp.device, log, use_amp=args.use_amp)
    scaler = torch.amp.GradScaler(ddp.device.type, enabled=use_scaler)
    return Optim(params=params, optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype)


def train_loop(run: Run, state: TrainState, t_start: float) -> tuple[dict | None, bool]:
    """Step until --max_steps or the time budget; log, evaluate and checkpoint on their schedules.
    Returns (the last evaluation or None, whether the time budget stopped the run)."""
    from tqdm import tqdm

    args, ddp = run.args, run.ddp
    start_step, last_eval, stopped_by_budget, t_loop = state.step, None, False, time.time()
    window = LogWindow()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not ddp.is_main or args.quiet,
               desc="train", dynamic_ncols=True)
    batches = training_batches(run.train_ds, args, ddp, state.step)
    run.model.train()
    while state.step < args.max_steps:
        epoch, batch = next(batches)
        batch = _to_device(batch, ddp.device)
        k_steps = rollout_k(state.step, args)
        loss, grid_parts, scalar_parts, grad_norm, lr = train_step(run, batch, k_steps, state.step)
        state.step += 1
        bar.update(1)

        window.add(batch, k_steps, ddp.world, loss, grid_parts, scalar_parts)
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            rec = window.record(state.step, epoch, lr, grad_norm, k_steps, t_start)
            run.logger.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{lr:.2e}", pps=f"{rec['patches_per_s']:.1f}")
            window.reset()
            if args.time_budget_min > 0:
                horizon = fit_schedule_to_budget(run.opt.scheduler, state.step, start_step, t_start, args, ddp,
                                                 t_loop)
                if horizon is not None:  # the bar's end where the budget ends, not at --max_steps
                    bar.total = horizon
                    bar.refresh()
        if args.eval_every and state.step % args.eval_every == 0:
            last_eval = evaluate_and_keep_best(run, state)
        if state.step % args.ckpt_every == 0:
            save_training_checkpoint(run, state, f"step{state.step}.pt")
        if args.time_budget_min > 0:
            over = time.time() - t_start > args.time_budget_min * 60
            if ddp.any_flag(over):  # every rank stops at the same step
                stopped_by_budget = True
                run.log(f"\ntime budget of {args.time_budget_min} min reached at step {state.step}: stopping")
                break
    bar.close()
    return last_eval, stopped_by_budget


def train_step(run: Run, batch: dict, k_steps: int, step: int):
    """One optimizer step on ``batch`` unrolled for ``k_steps``.
    Returns (loss, grid and scalar loss parts, gradient norm, the LR this step used)."""
    opt, args = run.opt, run.args
    loss, grid_parts, scalar_parts = run.unroll(batch, k_steps, args.rollout_grad == "pushforward")
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss is {loss.item()} at step {step}: lower --lr or check the data")
    opt.scaler.scale(loss).backward()
    opt.scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    lr = opt.scheduler.get_last_lr()[0]
    opt.scheduler.step()
    return loss, grid_parts, scalar_parts, grad_norm, lr


def finish(run: Run, state: TrainState, start_step: int, last_eval: dict | None, stopped_by_budget: bool,
           t_start: float) -> dict:
    """A final evaluation (unless the last step had one), last.pt, and the summary."""
    if state.step > start_step and (last_eval is None or last_eval["step"] != state.step):
        last_eval = evaluate_and_keep_best(run, state)
    last_path = save_training_checkpoint(run, state, "last.pt")
    if os.environ.get("VOXEL_ODE_PARAM_CHECKSUM_DIR"):  # tests: compare weights across DDP ranks
        out = Path(os.environ["VOXEL_ODE_PARAM_CHECKSUM_DIR"]) / f"rank{run.ddp.rank}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(param_checksum(run.model) + "\n")
    run.ddp.barrier()
    run.logger.close()
    summary = {
        "best_checkpoint": str(state.best_path) if state.best_path else None,
        "last_checkpoint": str(last_path),
        "best_metric": state.best_metric if math.isfinite(state.best_metric) else None,
        "final_eval": last_eval,
        "steps": state.step, "start_step": start_step,
        "stopped_by_time_budget": stopped_by_budget,
        "elapsed_s": time.time() - t_start,
        "metrics_path": str(run.save_dir / "metrics.jsonl"),
    }
    if run.ddp.is_main:
        run.log(f"done: {state.step} steps in {summary['elapsed_s']:.0f} s; best {summary['best_checkpoint']}, "
                f"last {last_path}; metrics in {summary['metrics_path']}")
    return summary
