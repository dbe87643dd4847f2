"""How u* is found: a step protocol (:class:`Solver`), one driver (:func:`solve`), a registry.

Built in: ``picard``, ``anderson``, ``broyden``, ``reversible`` (the coupled iteration ``backward="reversible"``
inverts); add one with :func:`register_solver`.
"""

from __future__ import annotations

from typing import Any

from ..deprecation import deprecated_attribute
from .anderson import Anderson
from .base import History, Solver, SolveStats, make_solver, register_solver, require_integer, solver_names
from .broyden import Broyden
from .driver import solve, solve_flat
from .options import STOP_MODES, SolveOptions
from .picard import Picard
from .reversible import Reversible

for _solver in (Picard, Anderson, Broyden, Reversible):
    register_solver(_solver.name, _solver)

__all__ = [
    "STOP_MODES",
    "Anderson",
    "Broyden",
    "History",
    "Picard",
    "Reversible",
    "SolveOptions",
    "SolveStats",
    "Solver",
    "make_solver",
    "register_solver",
    "require_integer",
    "solve",
    "solve_flat",
    "solver_names",
]


def __getattr__(name: str) -> Any:  # spellings renamed in 0.2, kept for one release
    return deprecated_attribute(__name__, name, {"SolverState": ("jfb.solvers.SolveStats", SolveStats)})
