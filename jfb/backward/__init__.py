"""How the gradient flows: backward modes, by name or as objects, and their registry.

Names: ``jfb``, ``neumann:K``, ``phantom:K[:tau=T]``, ``ift`` (fixed-point iteration), ``ift:cg`` (the paper's
CG on the normal equations), ``ift:fixed_point``, ``ift:gmres``, ``unroll``, ``reversible`` (exact, in constant
memory, through ``solver="reversible"``), ``auto`` (JFB with checks and
escalation). Options follow as ``key=value`` parts: ``ift:cg:tol=1e-8:max_iter=100``.
Add a mode with :func:`register_backward`, an IFT linear solver with :func:`register_linear_solver` (both
registries are :class:`jfb.registry.Registry`, as the solvers' is).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .auto import Autopilot
from .base import BACKWARD_MODES, BackwardMode, BackwardStats, FixedPointMap, GradientCheck
from .ift import DEFAULT_LINEAR_SOLVER, IFT
from .jfb import JFB
from .linear import (
    GMRES,
    LINEAR_SOLVERS,
    FixedPointIteration,
    LinearSolveInfo,
    LinearSolver,
    NormalCG,
    register_linear_solver,
)
from .linear_accelerated import ForwardSolverIteration
from .neumann import Neumann
from .phantom import Phantom
from .reversible import Reversible, ReversibleStats
from .shine import Shine, ShineStats
from .unroll import Unroll


def register_backward(
    name: str, factory: Callable[..., BackwardMode], usage: str = "", *, replace: bool = False
) -> None:
    """Make ``factory(*args, **options) -> BackwardMode`` available as ``"name[:arg...][:key=value...]"``.

    ``usage`` is how the name is written in error messages (default: the bare name).
    """
    BACKWARD_MODES.register(name, factory, usage, replace=replace)


def backward_names() -> tuple[str, ...]:
    """How each registered mode is written, e.g. ``neumann:K``."""
    return BACKWARD_MODES.usages()


def get_backward(spec: str | BackwardMode, **options: Any) -> BackwardMode:
    """A BackwardMode from its name and options (or the instance itself); bad names or options raise JfbError."""
    return BACKWARD_MODES.build(spec, **options)


register_backward("jfb", JFB)
register_backward("neumann", Neumann, "neumann:K")
register_backward(
    "ift",
    IFT,
    f"ift[:{'|'.join(LINEAR_SOLVERS.names())}][:tol=T][:max_iter=N][:warm_start=1][:tol_end=T:tol_solves=N]",
)
register_backward("phantom", Phantom, "phantom:K[:tau=T]")
register_backward("unroll", Unroll)
register_backward("reversible", Reversible)
register_backward("shine", Shine, "shine[:refine=K][:linear_solver=NAME][:tol=T]")
register_backward("auto", Autopilot, "auto[:every=N][:threshold=C][:recover=C][:patience=M][:k=K][:linear_solver=NAME]")

__all__ = [
    "BACKWARD_MODES",
    "DEFAULT_LINEAR_SOLVER",
    "GMRES",
    "IFT",
    "JFB",
    "LINEAR_SOLVERS",
    "Autopilot",
    "BackwardMode",
    "BackwardStats",
    "FixedPointIteration",
    "FixedPointMap",
    "ForwardSolverIteration",
    "GradientCheck",
    "LinearSolveInfo",
    "LinearSolver",
    "Neumann",
    "NormalCG",
    "Phantom",
    "Reversible",
    "ReversibleStats",
    "Shine",
    "ShineStats",
    "Unroll",
    "backward_names",
    "get_backward",
    "register_backward",
    "register_linear_solver",
]
