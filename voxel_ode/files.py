"""Files and folders: what may be opened, atomic writes, and what killed runs left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

from voxel_ode.utils import UserError


def regular_file(path, what: str = "file") -> Path:
    """``path`` if it is a regular file (links to one included); a pipe, a device or a folder is a
    UserError before anything opens it: opening a named pipe waits for a writer forever."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: {what}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: {what}: cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise UserError(f"{path}: {what}: {kind}, not a file (refused before opening it)")
    return path


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


# ---------------------------------------------------------------------------
# Leftovers of killed runs
# ---------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else: leave its files alone
    return True


def _pid_suffix(name: str, marker: str) -> int | None:
    tail = name.rsplit(marker, 1)[-1] if marker in name else ""
    return int(tail) if tail.isdigit() else None


def clean_leftovers(folder, log=print) -> list[Path]:
    """Remove what killed runs left in ``folder`` (not below it): temporary files
    ``.NAME.tmp-PID`` (utils.atomic_path) and prep folders ``.partial-PID``, when process PID
    is gone. Those of a live process are named and kept. Returns the removed paths.

    PIDs are checked on this machine only: do not share one output folder between machines.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(".*")):
        if path.is_dir() and path.name.startswith(".partial-"):
            pid = _pid_suffix(path.name, ".partial-")
        elif path.is_file() and ".tmp-" in path.name:
            pid = _pid_suffix(path.name, ".tmp-")
        else:
            continue
        if pid is None:
            continue
        if pid_alive(pid):
            log(f"note: {path} belongs to a running process {pid}: left alone")
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        log(f"note: removed {path}, left by a stopped run (process {pid})")
    return removed
