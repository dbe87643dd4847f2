"""How the gradient flows: backward modes, by name or as objects, and their registry.

Names: ``jfb``, ``neumann:K``, ``phantom:K[:tau=T]``, ``ift`` (fixed-point iteration), ``ift:cg`` (the paper's
CG on the normal equations), ``ift:fixed_point``, ``ift:gmres``, ``unroll``, ``auto`` (JFB with checks and
escalation). Options follow as ``key=value`` parts: ``ift:cg:tol=1e-8:max_iter=100``.
Add a mode with :func:`register_backward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import JfbError, check_new_name, unknown_name
from .auto import Autopilot, GradientCheck
from .base import BackwardMode, BackwardStats, FixedPointMap
from .ift import DEFAULT_LINEAR_SOLVER, IFT
from .jfb import JFB
from .linear import LINEAR_SOLVERS
from .neumann import Neumann
from .phantom import Phantom
from .unroll import Unroll

BackwardFactory = Callable[..., BackwardMode]
_REGISTRY: dict[str, tuple[BackwardFactory, str]] = {}


def register_backward(name: str, factory: BackwardFactory, usage: str = "", *, replace: bool = False) -> None:
    """Make ``factory(*args, **options) -> BackwardMode`` available as ``"name[:arg...][:key=value...]"``.

    ``usage`` is how the name is written in error messages (default: the bare name).
    """
    check_new_name("backward mode", name, _REGISTRY, replace)
    _REGISTRY[name] = (factory, usage or name)


def backward_names() -> tuple[str, ...]:
    """How each registered mode is written, e.g. ``neumann:K``."""
    return tuple(usage for _, usage in _REGISTRY.values())


def get_backward(spec: str | BackwardMode) -> BackwardMode:
    """A BackwardMode from its name (or the instance itself); bad names or options raise JfbError."""
    if isinstance(spec, BackwardMode):
        return spec
    if not isinstance(spec, str):
        raise JfbError(f"backward must be a name or a jfb.backward.BackwardMode, got {spec!r}")
    name, *parts = spec.split(":")
    if name not in _REGISTRY:
        raise unknown_name("backward mode", spec, backward_names())
    factory, usage = _REGISTRY[name]
    args = [_value(p) for p in parts if "=" not in p]
    options = {key: _value(value) for key, _, value in (p.partition("=") for p in parts if "=" in p)}
    try:
        return factory(*args, **options)
    except TypeError as error:
        raise JfbError(f"bad backward mode {spec!r} ({error}); write it as {usage}") from None
    except JfbError as error:
        raise JfbError(f"bad backward mode {spec!r}: {error}") from None


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


register_backward("jfb", JFB)
register_backward("neumann", Neumann, "neumann:K")
register_backward("ift", IFT, f"ift[:{'|'.join(LINEAR_SOLVERS)}][:tol=T][:max_iter=N]")
register_backward("phantom", Phantom, "phantom:K[:tau=T]")
register_backward("unroll", Unroll)
register_backward("auto", Autopilot, "auto[:every=N][:threshold=C][:recover=C][:patience=M][:k=K]")

__all__ = [
    "DEFAULT_LINEAR_SOLVER",
    "IFT",
    "JFB",
    "LINEAR_SOLVERS",
    "Autopilot",
    "BackwardMode",
    "BackwardStats",
    "FixedPointMap",
    "GradientCheck",
    "Neumann",
    "Phantom",
    "Unroll",
    "backward_names",
    "get_backward",
    "register_backward",
]
