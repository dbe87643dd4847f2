"""torch-jfb: implicit (fixed-point) layers trained with Jacobian-free backpropagation."""

from __future__ import annotations

from typing import Any

from . import backward, contraction, looped, nn, solvers
from .backward import (
    IFT,
    BackwardMode,
    BackwardStats,
    LinearSolver,
    Neumann,
    get_backward,
    register_backward,
    register_linear_solver,
)
from .contraction import GammaScaled, lipschitz_estimate, spectral_normalize
from .deprecation import deprecated_attribute
from .equilibrium import Equilibrium, ImplicitStats, fixed_point
from .errors import ConvergenceWarning, FixedPointError, JfbError, StorageError
from .frozen import frozen_running_stats
from .functional import linear_solve, root_find
from .layer import ImplicitLayer
from .solvers import SolveOptions, Solver, SolveStats, register_solver, solve
from .state import Shared
from .status import Status

__version__ = "0.2.0"

__all__ = [
    "IFT",
    "BackwardMode",
    "BackwardStats",
    "ConvergenceWarning",
    "Equilibrium",
    "FixedPointError",
    "GammaScaled",
    "ImplicitLayer",
    "ImplicitStats",
    "JfbError",
    "LinearSolver",
    "Neumann",
    "Shared",
    "SolveOptions",
    "SolveStats",
    "Solver",
    "Status",
    "StorageError",
    "backward",
    "contraction",
    "fixed_point",
    "frozen_running_stats",
    "get_backward",
    "linear_solve",
    "lipschitz_estimate",
    "looped",
    "nn",
    "register_backward",
    "register_linear_solver",
    "register_solver",
    "root_find",
    "solve",
    "solvers",
    "spectral_normalize",
]


def __getattr__(name: str) -> Any:  # spellings renamed in 0.2, kept for one release
    return deprecated_attribute(__name__, name, {"SolverState": ("jfb.SolveStats", SolveStats)})
