"""The options of a training run: one dataclass, the one source of their defaults and help.

``voxel-ode train`` builds its flags from these fields (cli/train.py: each field is the flag
``--name``; a False boolean is a switch); a Python caller passes them as keywords:
``train(prepped_root=..., max_steps=...)``. ``group`` sorts them in ``--help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from voxel_ode.model.precision import AMP_CHOICES, AMP_HELP
from voxel_ode.utils import UserError


def option(default, help: str, group: str, **extra):
    """A TrainConfig field: its default, its --help text and group (choices=, metavar= as argparse)."""
    return field(default=default, metadata={"help": help, "group": group, **extra})


DATA, MODEL, OPTIMIZATION, LOGGING = "data", "model", "optimization", "logging and checkpoints"


@dataclass
class TrainConfig:
    # data
    prepped_root: str | None = option(None, "folder written by `voxel-ode prep` (stats.json, index_*.jsonl, train/, test/)", DATA)
    sample_mode: str = option("patch", "patch: patches from the index (the seed); full: whole-grid samples, needed for the "
                              "whole-field path to learn and for --rollout_steps > 1", DATA, choices=("patch", "full"))
    batch_size: int = option(16, "samples per process per step", DATA)
    num_workers: int = option(0, "DataLoader worker processes (each opens its own HDF5 handles, so >0 works). 0 is the "
                              "default: on the 2-core CPU machine workers compete with the training threads and were "
                              "not faster (benchmarks/bench_train.py)", DATA)
    aug_xy_rot: bool = option(False, "random 90 degree turns in the XY plane (never Z); PermX/PermY swap with the turn", DATA)
    aug_flip: bool = option(False, "random X and Y flips", DATA)
    noise_std: float = option(0.01, "Gaussian noise (normalized units) on the dynamic inputs", DATA)
    # model
    receptive_field_radius: int = option(3, "stem kernel = 2r+1 (residual blocks use 3^3)", MODEL)
    base_channels: int = option(128, "feature width", MODEL)
    depth: int = option(12, "number of residual blocks", MODEL)
    norm: str = option("channel", "channel: per-voxel LayerNorm over channels (patch and full-grid outputs agree); "
                       "spatial: the seed's norm over the patch", MODEL, choices=("channel", "spatial"))
    no_global_context: bool = option(False, "the seed's purely local model (no whole-field path)", MODEL)
    no_priors: bool = option(False, "the grid head alone predicts each step's change (the seed's model). Default: the "
                             "pressure head sets the change since t = 0 from the pressure prior plus a residual, the "
                             "temperature head the thermal prior's step plus a residual (zero priors where prep "
                             "computed none)", MODEL)
    delta_norm: str = option("asinh", "normalization of the change targets: asinh(delta/s) with a robust per-simulation "
                             "scale (model.features.Normalizer), or the seed's pooled z-score", MODEL,
                             choices=("asinh", "zscore"))
    # optimization
    max_steps: int = option(200_000, "optimizer steps; also the cosine horizon", OPTIMIZATION)
    lr: float = option(3e-4, "peak AdamW learning rate", OPTIMIZATION)
    min_lr_ratio: float = option(0.1, "cosine decays to lr * this at max_steps", OPTIMIZATION)
    weight_decay: float = option(0.01, "AdamW weight decay (weights of convolutions/linears only)", OPTIMIZATION)
    warmup_steps: int = option(1000, "linear LR warmup steps (may exceed max_steps)", OPTIMIZATION)
    grad_clip: float = option(1.0, "clip the global gradient norm (0 = off)", OPTIMIZATION)
    rollout_steps: int = option(1, "train through K autoregressive steps on the model's own predictions (K > 1 needs "
                                "--sample_mode full)", OPTIMIZATION)
    rollout_grad: str = option("pushforward", "pushforward: each step's input is detached (cheap, stable); full: "
                               "backprop through all K steps", OPTIMIZATION, choices=("pushforward", "full"))
    rollout_curriculum_steps: int = option(0, "grow K linearly from 1 to --rollout_steps over this many steps "
                                           "(0 = use K from the start)", OPTIMIZATION)
    amp: str = option("auto", AMP_HELP, OPTIMIZATION, choices=AMP_CHOICES)
    use_amp: bool = option(False, "the seed's flag: GPU mixed precision (bf16 where supported, else fp16 + GradScaler); "
                           "the same as --amp auto, which is the default", OPTIMIZATION)
    time_budget_min: float = option(0.0, "stop cleanly (final eval + checkpoint) after this many minutes of wall time "
                                    "(0 = no limit); the LR cosine then ends with the budget (re-estimated at every "
                                    "log line)", OPTIMIZATION)
    seed: int = option(0, "seed of weights, data order and augmentation", OPTIMIZATION)
    device: str = option("auto", "auto = cuda when available", OPTIMIZATION, choices=("auto", "cpu", "cuda"))
    num_threads: int = option(0, "CPU threads per process (0 = torch's default). On a CPU shared with other jobs, fewer "
                              "threads than cores avoids OpenMP spin contention (10x slowdowns seen)", OPTIMIZATION)
    # logging and checkpoints
    log_every: int = option(100, "steps between training log lines", LOGGING)
    eval_every: int = option(1000, "steps between evaluations on the test split; 0 = only once, after the last step",
                             LOGGING)
    eval_max_batches: int = option(50, "batches per evaluation (0 = the whole test split)", LOGGING)
    ckpt_every: int = option(10_000, "steps between periodic checkpoints step{N}.pt", LOGGING)
    save_dir: str = option("./checkpoints", "checkpoints and metrics.jsonl go here", LOGGING)
    resume: str | None = option(None, "checkpoint to continue (same LR position, same next batches)", LOGGING,
                                metavar="PATH")
    use_wandb: bool = option(False, "also log to Weights & Biases (WANDB_PROJECT, WANDB_MODE=offline work)", LOGGING)
    quiet: bool = option(False, "no progress bar", LOGGING)

    def as_dict(self) -> dict:
        """The options as plain types (what every checkpoint stores as "train_args")."""
        return dataclasses.asdict(self)


def make_config(config=None, **overrides) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict of option names or an argparse namespace, with
    ``overrides`` applied; an unknown name is an error, not a silently ignored option."""
    values = dict(config) if isinstance(config, dict) else dict(vars(config)) if config is not None else {}
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def check(c: TrainConfig) -> None:
    """Options that cannot work together or cannot be right, before any work."""
    if not c.prepped_root:
        raise UserError("--prepped_root: missing: give the folder written by `voxel-ode prep`")
    for name in ("batch_size", "max_steps", "log_every", "ckpt_every", "rollout_steps"):
        if getattr(c, name) < 1:
            raise UserError(f"--{name}: must be >= 1, got {getattr(c, name)}")
    if c.eval_every < 0:
        raise UserError(f"--eval_every: must be >= 0 (0 = only after the last step), got {c.eval_every}")
    if c.rollout_steps > 1 and c.sample_mode != "full":
        raise UserError("--rollout_steps: training through K > 1 steps needs whole grids: add --sample_mode full")
    if c.num_workers < 0 or c.warmup_steps < 0:
        raise UserError("--num_workers/--warmup_steps: must be >= 0")
    if c.use_amp and c.amp == "none":
        raise UserError("--use_amp asks for mixed precision, --amp none for fp32: give one of them")
