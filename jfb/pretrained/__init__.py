"""Trained weights shipped with the package, loadable by name: ``jfb eval mnist-default``, ``jfb eval lm``.

``index.json`` lists each file with the metric it reported when it was trained, the command that
trained it, the CPU and the date; ``jfb eval NAME`` evaluates it again, so a claim can be checked in
seconds without training. The files are ordinary torch-jfb checkpoints (checksummed, loaded with
``weights_only=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent


def index() -> dict[str, dict[str, Any]]:
    """Every shipped checkpoint by name: ``file``, ``metric``, ``value``, ``command``, ``cpu``, ``date``."""
    return json.loads((FOLDER / "index.json").read_text())


def pretrained_path(name: str) -> Path | None:
    """The shipped file called ``name``, or None when no shipped checkpoint has that name."""
    entry = index().get(name)
    return FOLDER / entry["file"] if entry else None
