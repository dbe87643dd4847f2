"""A training's run folder, as trusted training stacks keep one: one run in it at a time (a lock file naming the
holder's PID and host), a folder that holds a run is not started afresh by accident (``--resume`` continues it,
``--overwrite`` replaces it), and the temporary files of a write that was killed are removed at the next start.

Under torchrun process 0 holds the lock (the one that writes); a lock whose holder died on this host (SIGKILL), or
that an earlier attempt of the same torchrun job left (an elastic restart, on any node), is taken over, saying so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import JfbError
from ..files import prepare_run_dir

LOCK = ".jfb-run.lock"
#: the files that say a folder holds a run (a checkpoint or metrics)
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "stopped.pt", "model.pt", "metrics.jsonl", "metrics.csv")


@contextmanager
def claimed_run_folder(
    path: Path, resume: bool, overwrite: bool = False, main: bool = True, log: Callable[[str], None] = print
) -> Iterator[Path]:
    """``path`` created, checked writable and held for the block (on the main process; the others only wait for
    nothing). JfbError in one line when another run holds it, or when it holds a run and neither ``resume`` nor
    ``overwrite`` says what to do with it."""
    if resume and overwrite:
        raise JfbError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    path = prepare_run_dir(Path(path))
    if not main:
        yield path
        return
    _lock(path, log)
    try:
        _remove_temporaries(path, log)
        _check_a_fresh_start(path, resume, overwrite, log)
        yield path
    finally:
        (path / LOCK).unlink(missing_ok=True)


def _lock(path: Path, log: Callable[[str], None]) -> None:
    """Create the lock file, or take over a stale one; JfbError naming the holder of a live one."""
    lock = path / LOCK
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    holder["job"] = os.environ.get("TORCHELASTIC_RUN_ID", "")  # torchrun's job: its restarts take the lock over
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(lock)
            if not _stale(other):
                raise JfbError(
                    f"{path} is in use by another run (PID {other.get('pid')} on {other.get('host')}, since "
                    f"{other.get('since')}); wait for it to end or train into another --out (a run on another host "
                    f"that died leaves {lock}: delete it)"
                ) from None
            pid, host = other.get("pid"), other.get("host")
            log(f"{path}: took over the stale lock of PID {pid} on {host} (no longer running)")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as f:
            json.dump(holder, f)
        return
    raise JfbError(f"{path}: another run took the lock at the same moment; retry")


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):  # half-written by a run killed mid-write: no live holder to name
        return {}


def _stale(holder: dict) -> bool:
    """A lock of a process on this host that no longer runs, of an earlier attempt of this torchrun job (whose
    process 0 may have moved to another node), or one that cannot be read."""
    pid, host, job = holder.get("pid"), holder.get("host"), holder.get("job")
    if not isinstance(pid, int) or host is None:
        return True
    if job and job == os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return pid == os.getpid()  # our own (a lock left by an earlier run in this process)


def _remove_temporaries(path: Path, log: Callable[[str], None]) -> None:
    """The temporary files of atomic writes killed before their rename (SIGKILL, power loss)."""
    leftovers = sorted(p for p in path.glob("*.tmp") if p.is_file())
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    if leftovers:
        names = ", ".join(p.name for p in leftovers)
        log(f"{path}: removed {len(leftovers)} temporary file(s) of an interrupted write: {names}")


def _check_a_fresh_start(path: Path, resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
    present = [name for name in RUN_FILES if (path / name).is_file()]
    if resume or not present:
        return
    if not overwrite:
        raise JfbError(
            f"{path} holds a run already ({', '.join(present)}): --resume continues it, --overwrite starts afresh "
            "(its files are replaced), or train into another --out"
        )
    for name in present:
        (path / name).unlink()
    log(f"{path}: --overwrite removed the earlier run's {', '.join(present)}")
