"""Neumann-series truncation of the implicit gradient."""

from __future__ import annotations

from torch import Tensor

from ..errors import JfbError
from ..status import Status
from .base import BackwardMode, BackwardStats, FixedPointMap, refuse_second_order
from .jacobian import JacobianProducts
from .jfb import JFB


class Neumann(BackwardMode):
    """Replace ``(I - J^T)^{-1} g`` by ``sum_{i=0..k} (J^T)^i g``: exactly ``k`` J mat-vecs.

    ``k = 0`` is JFB and runs the very same code, so the two gradients are identical.
    """

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or k < 0:
            raise JfbError(f"Neumann order k must be an integer >= 0, got {k!r}")
        self.k = k
        self.name = f"neumann:{k}"

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = JFB().attach(T, u_star, stats)
        if self.k == 0 or not out.requires_grad:
            return out

        def truncated_series(grad: Tensor) -> Tensor:
            refuse_second_order(self.name)
            products = JacobianProducts(*T.linearization(u_star))
            stats.t_evals += 1
            total, term = grad, grad
            for _ in range(self.k):
                term = products.vjp(term)
                total = total + term
            stats.j_matvecs += products.count
            stats.iterations, stats.status = self.k, Status.CONVERGED
            return total

        out.register_hook(truncated_series)
        return out
