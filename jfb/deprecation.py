"""Old spellings kept working for one release, each with a DeprecationWarning naming the new one."""

from __future__ import annotations

import warnings
from typing import Any

REMOVED_IN = "0.3"


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old} is deprecated since torch-jfb 0.2 and will be removed in {REMOVED_IN}; use {new} (see CHANGELOG.md)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_attribute(module: str, name: str, renamed: dict[str, tuple[str, Any]]) -> Any:
    """A module ``__getattr__`` body: ``renamed[name] = (new spelling, object)``."""
    if name not in renamed:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new, value = renamed[name]
    warn_deprecated(f"{module}.{name}", new)
    return value
