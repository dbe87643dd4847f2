"""Checkpoints: written atomically, read with ``weights_only=True`` and clear errors."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ..errors import JfbError

FORMAT = "torch-jfb/1"


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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one of our checkpoints; never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise JfbError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or containing non-tensor objects
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JfbError(f"{path}: cannot load checkpoint safely ({first_line})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise JfbError(f"{path}: not a torch-jfb checkpoint (for the paper authors' files use `jfb import-reference`)")
    return payload
