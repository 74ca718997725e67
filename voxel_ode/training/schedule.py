"""Learning-rate schedules: linear warmup, then cosine decay (the seed's choice).

``WarmupCosine`` is a plain callable object, so ``torch.optim.lr_scheduler.LambdaLR``
stores its settings in ``state_dict()`` as plain numbers: a checkpoint holding
the scheduler still loads with ``torch.load(weights_only=True)`` and a resumed
run continues at the same position of the same schedule.
"""

from __future__ import annotations

import math

import torch


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
