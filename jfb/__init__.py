"""torch-jfb: implicit (fixed-point) layers trained with Jacobian-free backpropagation."""
from __future__ import annotations

from . import backward, contraction, solvers
from .backward import BackwardMode, BackwardStats, get_backward
from .contraction import GammaScaled, lipschitz_estimate, spectral_normalize
from .frozen import frozen_running_stats
from .layer import ConvergenceWarning, FixedPointError, ImplicitLayer, ImplicitStats
from .solvers import SolverState, get_solver

__version__ = "0.1.0"

__all__ = [
    "BackwardMode",
    "BackwardStats",
    "ConvergenceWarning",
    "FixedPointError",
    "GammaScaled",
    "ImplicitLayer",
    "ImplicitStats",
    "SolverState",
    "backward",
    "contraction",
    "frozen_running_stats",
    "get_backward",
    "get_solver",
    "lipschitz_estimate",
    "solvers",
    "spectral_normalize",
]
