"""Files and folders: what may be opened, atomic writes, and what killed runs left behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import stat
import time
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


LOCK_NAME = ".voxel-ode.lock"


@contextlib.contextmanager
def folder_lock(folder, command: str):
    """One voxel-ode process per output folder: a second one is refused in one line naming the
    holder. The lock (flock on ``folder/.voxel-ode.lock``) goes with the process, killed or not."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{folder}: in use by {holder}: wait for it to finish or give another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"voxel-ode {command} (process {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        try:
            yield folder
        finally:  # removed while still held, so nothing is left behind
            (folder / LOCK_NAME).unlink(missing_ok=True)
    finally:
        os.close(fd)


def writable_folder(folder, what: str) -> Path:
    """``folder``, created if needed and checked writable now, before hours of work that end in a write."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{folder}: {what}: not a writable folder ({err.strerror})") from None
    return folder


def creatable_folder(folder, what: str) -> Path:
    """``folder`` checked now, without creating it: it is a writable folder, or its nearest existing
    parent is one (so a refusal later leaves no empty folders behind); writable_folder makes it."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == folder:
        return writable_folder(folder, what)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: {what}: cannot be made ({existing} is not a writable folder)")
    return folder


def check_room(folder, total_bytes: float, largest_file_bytes: float, what: str) -> None:
    """Refuse before writing when ``folder``'s disk lacks the room or a file would pass the process's
    file-size limit (ulimit -f): HDF5 fails badly mid-write (crashes seen), a check first is one line."""
    free = shutil.disk_usage(folder).free
    if total_bytes > free:
        raise UserError(f"{folder}: {what} needs about {total_bytes / 1e6:.3g} MB, the disk has "
                        f"{free / 1e6:.3g} MB free")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and largest_file_bytes > limit:
        raise UserError(f"{folder}: {what} writes files of about {largest_file_bytes / 1e6:.3g} MB, above this "
                        f"process's file-size limit of {limit / 1e6:.3g} MB (ulimit -f)")


def move_aside(folder, names) -> Path | None:
    """Move the files ``names`` that ``folder`` holds into ``folder/earlier/<time>/`` (an earlier
    run's output, kept whole instead of mixed with a new one's); returns that folder or None."""
    folder = Path(folder)
    present = [folder / n for n in names if (folder / n).is_file() and not (folder / n).is_symlink()]
    if not present:
        return None
    target = folder / "earlier" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in present:
        os.replace(path, target / path.name)
    return target


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


# ---------------------------------------------------------------------------
# An output folder as a transaction: built aside, swapped in when complete
# ---------------------------------------------------------------------------
def swap_in(staged: Path, folder: Path, names, marker: str) -> None:
    """Replace ``folder``'s ``names`` by those built in ``staged``. ``marker`` (one of ``names``)
    says the output is complete: the old one leaves first and the new one arrives last, and the old
    items wait in ``.previous-PID`` until the new marker is in place, so a kill at any moment
    leaves a complete output or one that restore_interrupted() puts back. Only names inside
    ``folder`` are renamed: a symlink among them is moved as a link, never followed."""
    previous = folder / f".previous-{os.getpid()}"
    previous.mkdir()
    order = [marker] + [n for n in names if n != marker]
    for name in order:
        if os.path.lexists(folder / name):
            os.replace(folder / name, previous / name)
    for name in order[1:] + [marker]:
        if os.path.lexists(staged / name):
            os.replace(staged / name, folder / name)
    shutil.rmtree(previous)


def restore_interrupted(folder, marker: str, log=print) -> bool:
    """Undo a swap_in that a killed process left half done (no ``marker`` in ``folder``, the old
    output in ``.previous-PID`` of a dead process): the old output back in place. True if so."""
    folder = Path(folder)
    restored = False
    for previous in sorted(folder.glob(".previous-*")) if folder.is_dir() else []:
        pid = _pid_suffix(previous.name, ".previous-")
        if pid is None or pid_alive(pid) or not previous.is_dir():
            continue
        if not os.path.lexists(folder / marker) and os.path.lexists(previous / marker):
            for item in previous.iterdir():
                target = folder / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif os.path.lexists(target):
                    target.unlink()
                os.replace(item, target)
            restored = True
            log(f"note: {folder}: put back the output a killed process (process {pid}) was replacing")
        shutil.rmtree(previous, ignore_errors=True)
    return restored


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
