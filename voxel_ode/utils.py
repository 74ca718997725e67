"""Small shared helpers: user-facing errors, atomic writes, seeding."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import numpy as np


class UserError(Exception):
    """An error caused by the user's input (bad file, bad flag); the CLI prints it as one line."""


def signed_log1p(x):
    """sign(x) log(1 + |x|), of a numpy array or a torch tensor."""
    if hasattr(x, "log1p"):  # torch
        return x.sign() * x.abs().log1p()
    return np.sign(x) * np.log1p(np.abs(x))


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike):
    """Yield a temporary path next to ``final_path``; rename it into place only on success.

    A crash or an exception leaves no file under the final name, so no later
    stage can mistake a half-written output for a finished one.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.with_name(f".{final_path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is a dependency, but keep light tools importable without it
        pass


def coarsen(x, active, factor: int = 4):
    """Masked average pooling of a field onto a grid ``factor`` times coarser.

    ``x`` [..., C, D, H, W] (torch), ``active`` [..., 1, D, H, W] (1 = active cell).
    The grid is zero-padded at the far end to a multiple of ``factor`` (padding
    counts as inactive), so coarse cell c always covers fine cells
    [c*factor, (c+1)*factor) along each axis. Returns ``(x_coarse, active_frac)``:
    the mean of ``x`` over the active cells of each block (0 where a block has
    none) and the fraction of active cells in the block. Used by the dataset and
    by the model, so both see exactly the same whole-field context.
    """
    import torch
    import torch.nn.functional as F

    lead = x.shape[:-4]
    c, d, h, w = x.shape[-4:]
    x = x.reshape(-1, c, d, h, w)
    active = active.reshape(-1, 1, d, h, w).to(x.dtype)
    pad = [(-n) % factor for n in (w, h, d)]  # F.pad order: last axis first
    if any(pad):
        x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))
        active = F.pad(active, (0, pad[0], 0, pad[1], 0, pad[2]))
    weighted = F.avg_pool3d(x * active, factor)
    frac = F.avg_pool3d(active, factor)
    mean = torch.where(frac > 0, weighted / frac.clamp_min(1e-12), torch.zeros_like(weighted))
    return mean.reshape(*lead, c, *mean.shape[-3:]), frac.reshape(*lead, 1, *frac.shape[-3:])
