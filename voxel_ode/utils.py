"""Small shared helpers: user-facing errors, atomic writes, the signed log."""

from __future__ import annotations


import numpy as np


class UserError(Exception):
    """An error caused by the user's input (bad file, bad flag); the CLI prints it as one line."""


def signed_log1p(x):
    """sign(x) log(1 + |x|), of a numpy array or a torch tensor."""
    if hasattr(x, "log1p"):  # torch
        return x.sign() * x.abs().log1p()
    return np.sign(x) * np.log1p(np.abs(x))


