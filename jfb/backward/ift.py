"""Jacobian-based gradient via the implicit function theorem."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..solvers.base import require_integer, require_number
from .base import BackwardMode, BackwardStats, FixedPointMap, refuse_second_order
from .jacobian import JacobianProducts
from .linear import LINEAR_SOLVERS, LinearSolver

#: chosen by measurement (README, "Backward modes"): the fixed-point iteration w <- J^T w + g was the
#: fastest per step on the MNIST model and on a conv DEQ (0.37x and 0.31x of CG's time; CG also hit
#: its cap on the conv DEQ), keeps memory constant in the number of iterations (GMRES, which met the
#: tolerance on both, stores up to 30 Krylov vectors), and needs only J^T products, so it also runs
#: under torch.compile (CG's J products need double backward). Select "ift:gmres" for a Jacobian
#: with eigenvalues near 1, where the fixed-point iteration stalls; a missed tolerance is reported.
DEFAULT_LINEAR_SOLVER = "fixed_point"


class IFT(BackwardMode):
    """Solve ``(I - J^T) w = dl/du*`` and backpropagate ``w`` through one application of T.

    ``linear_solver``: ``fixed_point`` (default: ``w <- J^T w + g``), ``gmres``, ``cg`` (conjugate
    gradient on the normal equations, the paper's choice), a name added with
    :func:`jfb.register_linear_solver` or a :class:`~jfb.backward.linear.LinearSolver` instance; further
    keywords are its options (``"ift:gmres:restart=20"``). ``tol`` is relative to ``||dl/du*||``.
    ``max_iter=None`` means "the forward solve's max_iter" (the paper's setting), read at every call, so it
    follows later changes of the layer's options. A solve that misses ``tol`` follows the layer's
    ``on_failure``. By name: ``"ift"``, ``"ift:cg"``, ``"ift:cg:tol=1e-8:max_iter=100"``.
    """

    def __init__(
        self,
        linear_solver: str | LinearSolver = DEFAULT_LINEAR_SOLVER,
        tol: float = 1e-6,
        max_iter: int | None = None,
        **linear_options: Any,
    ) -> None:
        self.linear_solver = LINEAR_SOLVERS.build(linear_solver, **linear_options)
        require_number("IFT tol", tol, 0)
        if max_iter is not None:
            require_integer("IFT max_iter", max_iter, 1, hint=" or None (the forward max_iter)")
        self.tol, self.max_iter = tol, max_iter
        self.name = f"ift:{self.linear_solver!r}"

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = T(u_star.detach())
        max_iter = self.max_iter or T.forward_max_iter

        def implicit_gradient(grad: Tensor) -> Tensor:
            refuse_second_order(self.name)
            products = JacobianProducts(*T.linearization(u_star))
            stats.t_evals += 1
            w, info = self.linear_solver.solve(products, grad, self.tol, max_iter)
            stats.j_matvecs += products.count
            stats.iterations, stats.relative_residual, stats.status = (
                info.iterations,
                info.relative_residual,
                info.status,
            )
            T.report(self.name, stats)
            return w

        if out.requires_grad:
            out.register_hook(implicit_gradient)
        return out

    def __repr__(self) -> str:
        extra = "" if self.tol == 1e-6 else f":tol={self.tol:g}"
        return self.name + extra + ("" if self.max_iter is None else f":max_iter={self.max_iter}")
