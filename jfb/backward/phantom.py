"""Phantom gradients (Geng et al., "On Training Implicit Models", NeurIPS 2021)."""

from __future__ import annotations

from contextlib import nullcontext

from torch import Tensor

from ..errors import JfbError
from ..solvers.base import require_number
from ..status import Status
from ..transforms import TRANSFORMS
from .base import BackwardMode, BackwardStats, FixedPointMap


class Phantom(BackwardMode):
    """From the detached ``u*``, ``k`` damped steps ``u <- (1 - tau) u + tau T(u)`` recorded with grad.

    Backpropagating through them approximates ``(I - J)^{-1}`` by a damped Neumann-like series in
    which the parameter gradient of every step counts (unlike Neumann-k, which applies the series to
    one T). ``k = 1`` with ``tau = 1`` is JFB exactly. Memory grows with ``k`` (one graph of T per step);
    BatchNorm running statistics are updated once, by the last step. By name: ``"phantom:5"``,
    ``"phantom:5:tau=0.5"``.
    """

    supports_second_order = True
    transforms = frozenset(TRANSFORMS)

    def __init__(self, k: int, tau: float = 1.0) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise JfbError(f"phantom steps k must be an integer >= 1, got {k!r}")
        require_number("phantom tau", tau, 0)
        if tau > 1:
            raise JfbError(f"phantom tau must be in (0, 1], got {tau!r}")
        self.k, self.tau = k, float(tau)
        self.name = f"phantom:{k}"

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        u = u_star.detach()
        for step in range(self.k):
            with T.frozen() if step < self.k - 1 else nullcontext():  # the last step updates the statistics
                z = T(u)
            u = z if self.tau == 1.0 else (1 - self.tau) * u + self.tau * z
        stats.t_evals += self.k - 1
        if u.requires_grad:
            u.register_hook(lambda grad: self._done(stats, grad))
        return u

    def _done(self, stats: BackwardStats, grad: Tensor) -> Tensor:
        stats.j_matvecs += self.k - 1  # J^T products through the steps before the last
        stats.iterations, stats.status = self.k, Status.CONVERGED
        return grad

    def __repr__(self) -> str:
        return self.name + ("" if self.tau == 1.0 else f":tau={self.tau:g}")
