"""Small shared helpers: user-facing errors, the signed log, plain JSON values."""

from __future__ import annotations

import numpy as np


class UserError(Exception):
    """An error caused by the user's input (bad file, bad flag); the CLI prints it as one line."""


def signed_log1p(x):
    """sign(x) log(1 + |x|), of a numpy array or a torch tensor."""
    if hasattr(x, "log1p"):  # torch
        return x.sign() * x.abs().log1p()
    return np.sign(x) * np.log1p(np.abs(x))




def plain_json(value):
    """JSON types: numbers as float (4 significant digits, non-finite -> None), bools kept."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        return value if not isinstance(value, np.bool_) else bool(value)
    value = float(value)
    return float(f"{value:.4g}") if np.isfinite(value) else None
