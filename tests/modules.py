"""Loading a Python file that is not an importable module (a script, an example) for a test to call."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def from_file(path: Path) -> ModuleType:
    """The module of ``path`` (executed once per call: each caller gets a fresh module)."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
