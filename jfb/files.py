"""Output folders that are checked before long work, and atomic writes: a crash or a full disk mid-write
leaves the previous file intact."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import JfbError, StorageError


def atomic_write(
    path: Path,
    write: Callable[[IO[Any]], None],
    binary: bool = False,
    before_replace: Callable[[], None] | None = None,
    after_replace: Callable[[], None] | None = None,
) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    ``before_replace`` runs once the new file is complete, just before the rename, ``after_replace`` just
    after it (together: keep the previous file under another name). An operating-system error (ENOSPC,
    EDQUOT, ...) becomes a :class:`~jfb.errors.StorageError`; the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        if after_replace is not None:
            after_replace()
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def prepare_run_dir(path: Path) -> Path:
    """Create ``path`` and check that files can be written there (JfbError otherwise)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # one per process: ranks of a torchrun job probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise JfbError(f"run dir {path} is not writable ({exc.strerror or exc})") from None
    return path
