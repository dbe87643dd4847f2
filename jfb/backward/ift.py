"""Jacobian-based gradient via the implicit function theorem."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .base import BackwardMode, BackwardStats, FixedPointMap
from .jacobian import JacobianProducts
from .linear import LINEAR_SOLVERS, cg_normal, fixed_point, gmres


class IFT(BackwardMode):
    """Solve ``(I - J^T) w = dl/du*`` and backpropagate ``w`` through one application of T.

    ``linear_solver``: ``cg`` (conjugate gradient on the normal equations, the paper's choice),
    ``fixed_point`` or ``gmres``. ``max_iter=None`` means "the forward max_iter" (the paper's
    setting), filled in by the layer. ``tol`` is relative to ``||dl/du*||``.
    """

    def __init__(self, linear_solver: str = "cg", tol: float = 1e-6, max_iter: Optional[int] = None) -> None:
        if linear_solver not in LINEAR_SOLVERS:
            raise ValueError(f"unknown IFT linear solver {linear_solver!r}; choose one of {', '.join(LINEAR_SOLVERS)}")
        if not tol > 0:
            raise ValueError(f"IFT tol must be > 0, got {tol!r}")
        if max_iter is not None and max_iter < 1:
            raise ValueError(f"IFT max_iter must be >= 1, got {max_iter!r}")
        self.linear_solver, self.tol, self.max_iter = linear_solver, tol, max_iter
        self.name = "ift" if linear_solver == "cg" else f"ift:{linear_solver}"

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = T(u_star.detach())
        if self.max_iter is None:
            raise ValueError("IFT.max_iter is None; ImplicitLayer sets it to the forward max_iter")
        max_iter = self.max_iter

        def implicit_gradient(grad: Tensor) -> Tensor:
            products = JacobianProducts(*T.linearization(u_star))
            stats.t_evals += 1
            w, info = self._solve(products, grad, max_iter)
            stats.j_matvecs += products.count
            stats.iterations, stats.relative_residual, stats.status = info.iterations, info.relative_residual, info.status
            return w

        if out.requires_grad:
            out.register_hook(implicit_gradient)
        return out

    def _solve(self, products: JacobianProducts, grad: Tensor, max_iter: int):
        def A(v: Tensor) -> Tensor:  # (I - J^T) v
            return v - products.vjp(v)

        def At(v: Tensor) -> Tensor:  # (I - J) v
            return v - products.jvp(v)

        if self.linear_solver == "cg":
            return cg_normal(A, At, grad, self.tol, max_iter)
        if self.linear_solver == "fixed_point":
            return fixed_point(products.vjp, grad, self.tol, max_iter)
        return gmres(A, grad, self.tol, max_iter)
