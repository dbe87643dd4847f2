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


class LastCallAttributes:
    """What torch-jfb 0.1 left on the layer after each call, read from its last result (``_last``), with a warning:
    a call's outcome is now the value ``layer.solve(x)`` returns."""

    _last: Any

    @property
    def jacobian_penalty(self) -> Any:
        warn_deprecated("layer.jacobian_penalty", "layer.solve(x).jacobian_penalty")
        return None if self._last is None else self._last.jacobian_penalty

    @property
    def correction_states(self) -> list:
        warn_deprecated("layer.correction_states", "layer.solve(x).correction_states")
        return [] if self._last is None else self._last.correction_states or []

    @property
    def last_fixed_point(self) -> Any:
        warn_deprecated("layer.last_fixed_point", "layer.solve(x).fixed_point")
        return None if self._last is None else self._last.fixed_point
