"""Checkpoints: written atomically, read with ``weights_only=True`` and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import JfbError
from ..files import atomic_write

FORMAT = "torch-jfb/1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (a crash mid-write leaves the previous checkpoint intact)."""
    atomic_write(Path(path), lambda f: torch.save({"format": FORMAT, **payload}, f), binary=True)


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
