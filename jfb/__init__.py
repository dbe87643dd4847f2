"""torch-jfb: implicit (fixed-point) layers trained with Jacobian-free backpropagation."""

from __future__ import annotations

from . import backward, contraction, solvers
from .backward import IFT, BackwardMode, BackwardStats, Neumann, get_backward, register_backward
from .contraction import GammaScaled, lipschitz_estimate, spectral_normalize
from .errors import ConvergenceWarning, FixedPointError, JfbError, StorageError
from .frozen import frozen_running_stats
from .layer import ImplicitLayer, ImplicitStats
from .solvers import SolveOptions, Solver, SolverState, register_solver, solve
from .status import Status

__version__ = "0.1.0"

__all__ = [
    "IFT",
    "BackwardMode",
    "BackwardStats",
    "ConvergenceWarning",
    "FixedPointError",
    "GammaScaled",
    "ImplicitLayer",
    "ImplicitStats",
    "JfbError",
    "Neumann",
    "SolveOptions",
    "Solver",
    "SolverState",
    "Status",
    "StorageError",
    "backward",
    "contraction",
    "frozen_running_stats",
    "get_backward",
    "lipschitz_estimate",
    "register_backward",
    "register_solver",
    "solve",
    "solvers",
    "spectral_normalize",
]
