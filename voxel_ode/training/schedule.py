"""Schedules: the learning rate (linear warmup, then cosine decay: the seed's choice; fitted to a
wall-time budget) and the number of unrolled steps (a curriculum).

``WarmupCosine`` is a plain callable object, so ``torch.optim.lr_scheduler.LambdaLR``
stores its settings in ``state_dict()`` as plain numbers: a checkpoint holding
the scheduler still loads with ``torch.load(weights_only=True)`` and a resumed
run continues at the same position of the same schedule.
"""

from __future__ import annotations

import math
import time

import torch

from voxel_ode.training.distributed import Dist


class WarmupCosine:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based).

    * steps ``0 .. warmup_steps-1``: linear ramp ``(step+1) / warmup_steps`` (the
      first step already moves the weights; a ramp starting at exactly 0 wastes it);
    * then cosine from 1 down to ``min_ratio`` at ``max_steps``, flat afterwards.

    A warmup longer than ``max_steps`` is allowed: the run then simply ends
    inside the ramp (no division by zero, no negative progress).
    """

    def __init__(self, warmup_steps: int, max_steps: int, min_ratio: float = 0.0):
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps}, {max_steps}")
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_len = self.max_steps - self.warmup_steps
        if decay_len <= 0:  # warmup covers the whole run
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / decay_len)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with linear warmup + cosine decay; call ``.step()`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, max_steps, min_ratio))


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
