"""Neumann-series truncation of the implicit gradient."""

from __future__ import annotations

from torch import Tensor

from ..errors import JfbError
from ..status import Status
from ..transforms import TRANSFORMS, derivative_levels, differentiated_check
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientOverride, refuse_second_order
from .jacobian import JacobianProducts, with_products
from .jfb import JFB


class Neumann(BackwardMode):
    """Replace ``(I - J^T)^{-1} g`` by ``sum_{i=0..k} (J^T)^i g``: exactly ``k`` J mat-vecs.

    ``k = 0`` is JFB and runs the very same code, so the two gradients are identical. In forward mode
    (``torch.func.jvp``) the tangent is the same series in ``J``: ``sum_{i=0..k} J^i t``.
    """

    transforms = frozenset(TRANSFORMS)

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or k < 0:
            raise JfbError(f"Neumann order k must be an integer >= 0, got {k!r}")
        self.k = k
        self.name = f"neumann:{k}"

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        if self.k == 0:
            return JFB().attach(T, u_star, stats)
        out = T(u_star.detach())
        if not out.requires_grad and not derivative_levels():
            return out
        differentiated, tangent_differentiated = differentiated_check(), differentiated_check(False)

        def series(b: Tensor, transposed: bool) -> Tensor:
            def compute(products: JacobianProducts, rhs: Tensor) -> Tensor:
                product = products.jvp if transposed else products.vjp
                total, term = rhs, rhs
                for _ in range(self.k):
                    term = product(term)
                    total = total + term
                stats.j_matvecs += products.count
                return total

            stats.t_evals += 1
            stats.iterations, stats.status = self.k, Status.CONVERGED
            return with_products(T, u_star, b, compute)

        def truncated_series(grad: Tensor, value: Tensor) -> tuple[Tensor]:
            refuse_second_order(self.name, differentiated())
            return (series(grad, transposed=False),)

        def tangent(t: Tensor) -> Tensor:
            refuse_second_order(self.name, tangent_differentiated())
            return series(t, transposed=True)

        return GradientOverride.apply(truncated_series, tangent, out)
