"""How a failed solve reaches the user: :class:`FailureReport` hands it to ``on_failure`` (warn, raise or ignore),
with the warning pointing at the user's line that called the layer or ran the backward pass."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .backward import BackwardStats
from .errors import ConvergenceWarning, FixedPointError, JfbError, unknown_name
from .solvers import SolveOptions, SolveStats
from .status import Status

_PACKAGE = str(Path(__file__).resolve().parent)
ON_FAILURE = ("warn", "raise", "ignore")


@dataclass(frozen=True)
class FailureReport:
    """Hands a failed forward solve, a backward linear solve that missed its tolerance, or a backward pass with
    non-finite gradients (``reversible``), to ``on_failure``.

    A tolerance not reached is warned once per call site in ``warned`` (the layer's, or :func:`fixed_point`'s),
    so a training loop hears of it once; divergence and non-finite values are warned every time."""

    on_failure: str
    warned: set[tuple[str, int]] = field(default_factory=set)

    def forward(self, stats: SolveStats, options: SolveOptions) -> None:
        """Nothing is computed for a message that will not be shown (``"ignore"``, a call site already warned):
        counting the samples not converged reads the device."""
        if not stats.status.failed or self.on_failure == "ignore":
            return
        if stats.status != Status.MAX_ITER:
            self._fail(
                f"fixed-point solve {stats.status} after {stats.t_evals} T evaluations "
                f"({int((~stats.converged).sum())} of {stats.converged.numel()} samples not converged)"
            )
            return
        level, site = _caller()
        if self.on_failure == "warn" and site in self.warned:
            return
        self.warned.add(site)
        pending = int((~stats.converged).sum())
        once = "; warned once per layer and call site" if self.on_failure == "warn" else ""
        self._fail(
            f"fixed-point solve stopped at max_iter={options.max_iter} without meeting tol={options.tol:g} "
            f"({options.stop_mode}): {pending} of {stats.converged.numel()} samples "
            f"({pending / stats.converged.numel():.0%}) not converged, largest residual "
            f"{float(stats.abs_residual.max()):.3g} abs, {float(stats.rel_residual.max()):.3g} rel; raise max_iter, "
            f"loosen tol, or check that T contracts (jfb.lipschitz_estimate){once}",
            level + 1,  # counted from here; _fail, which warns, is one frame deeper
        )

    def backward(self, subject: str, stats: BackwardStats, detail: str = "") -> None:
        """``subject`` names what failed (``backward linear solve (ift:gmres)``); ``detail`` ends the message."""
        if stats.status != Status.CONVERGED:
            self._fail(f"{subject} {stats.status} after {stats.iterations} iterations{detail}")

    def _fail(self, message: str, stacklevel: int | None = None) -> None:
        if self.on_failure == "raise":
            raise FixedPointError(message)
        if self.on_failure == "warn":
            warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel or _caller()[0])


#: :func:`fixed_point`'s call sites already warned about a tolerance not reached (it has no layer to keep them)
FUNCTION_CALL_SITES_WARNED: set[tuple[str, int]] = set()


def _caller() -> tuple[int, tuple[str, int]]:
    """The stack level and ``(file, line)`` of the first frame outside this package (and outside torch's
    autograd), counted from the caller of this function: the warning points at the user's line that called
    the layer or ran the backward pass."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or "/torch/" in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1
    return level, ("", 0) if frame is None else (frame.f_code.co_filename, frame.f_lineno)


@dataclass(frozen=True)
class SolvePolicy:
    """How a call treats failures, other processes and the regularisers (see :func:`fixed_point`)."""

    on_failure: str = "warn"
    lockstep: bool | None = None
    jacobian_probes: int = 0
    correction: int = 0
    #: the call sites already warned about a tolerance not reached (a layer's policy lives as long as the layer)
    warned: set[tuple[str, int]] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.on_failure not in ON_FAILURE:
            raise unknown_name("on_failure", self.on_failure, ON_FAILURE)
        if self.lockstep not in (None, True, False):
            raise JfbError(f"lockstep must be True, False or None (decide per call), got {self.lockstep!r}")
        for name in ("jacobian_probes", "correction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise JfbError(f"{name} must be an integer >= 0 (probes / iterates; 0 = off), got {value!r}")
