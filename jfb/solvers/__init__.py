"""Fixed-point solvers, all with one interface: ``solve(f, u0, *, tol, max_iter, ...)``.

``f(u, index)`` evaluates T on the batch rows ``index`` (all rows when ``index`` is None).
Each returns ``(u_star, SolverState)``; see :mod:`jfb.solvers.base`.
"""
from __future__ import annotations

from typing import Callable

from .anderson import anderson
from .base import STATUSES, STOP_MODES, SolverState, per_sample_norm
from .broyden import broyden
from .picard import picard

SOLVERS: dict[str, Callable] = {"picard": picard, "anderson": anderson, "broyden": broyden}


def get_solver(name: str) -> Callable:
    """Look up a solver by name; unknown names raise ValueError listing the choices."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


__all__ = ["SOLVERS", "STATUSES", "STOP_MODES", "SolverState", "get_solver", "per_sample_norm", "anderson", "broyden", "picard"]
