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
