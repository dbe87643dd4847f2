"""The functional forms beside :func:`jfb.fixed_point`: one problem without a batch dimension, a root
``F(u; x) = 0``, a linear system ``A w = b`` solved by the library's linear solvers.

What jaxopt, optimistix and lineax users reach for; each is a thin layer over the one solve and the one set of
linear solvers, so every solver, backward mode and transform works through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .backward.linear import LINEAR_SOLVERS, LinearSolveInfo, LinearSolver
from .equilibrium import fixed_point
from .errors import JfbError

MatVec = Callable[[Tensor], Tensor]


def root_find(F: Callable[[Any, Any], Any], x: Any, **kwargs: Any) -> Any:
    """Solve ``F(u; x) = 0``: :func:`jfb.fixed_point` of ``T(u) = u - F(u; x)`` with ``kwargs`` (every solver,
    backward mode and option).

    Picard on ``T`` converges where ``I - dF/du`` contracts; Anderson and Broyden reach further. The implicit
    gradient (``backward="ift"``) is exactly ``-(dF/du)^{-1} dF/dx``; JFB's is ``-dF/dx`` (``dF/du`` taken as I).
    """

    def T(u: Any, x: Any) -> Any:
        out = F(u, x)
        if isinstance(u, (tuple, list)):
            return tuple(a - b for a, b in zip(u, out, strict=True))
        return u - out

    return fixed_point(T, x, **kwargs)


class _SystemProducts:
    """``A`` seen as ``I - J^T`` by the IFT linear solvers: ``vjp(v) = v - A v``, ``jvp(v) = v - A^T v``."""

    def __init__(self, matvec: MatVec, rmatvec: MatVec | None, like: Tensor) -> None:
        self.matvec, self.rmatvec, self.like = matvec, rmatvec, like
        self.count = 0

    def vjp(self, v: Tensor) -> Tensor:
        self.count += 1
        return v - self.matvec(v)

    def jvp(self, v: Tensor) -> Tensor:
        self.count += 1
        if self.rmatvec is not None:
            return v - self.rmatvec(v)
        with torch.enable_grad():  # A is linear: the vector-Jacobian product at any point is A^T v
            point = torch.zeros_like(self.like, requires_grad=True)
            (transposed,) = torch.autograd.grad(self.matvec(point), point, v)
        return v - transposed


def linear_solve(
    matvec: MatVec,
    b: Tensor,
    *,
    solver: str | LinearSolver = "gmres",
    tol: float = 1e-8,
    max_iter: int = 200,
    rmatvec: MatVec | None = None,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``A w = b`` for ``A`` given by its product ``matvec(v) = A v`` (any shape, the whole ``b`` one vector):
    ``(w, info)`` with ``info.iterations``, ``info.relative_residual`` (``||b - A w|| / ||b||``) and ``info.status``.

    ``solver``: ``"gmres"`` (any invertible A), ``"cg"`` (CG on the normal equations; needs ``A^T v``: ``rmatvec``, or
    autograd through ``matvec``), ``"fixed_point"`` (``w <- (I - A) w + b``: needs ``I - A`` to contract), or a
    registered :class:`~jfb.LinearSolver`. ``w`` carries no gradient; a missed ``tol`` is in ``info.status``, never
    silent: check it.
    """
    if not isinstance(b, Tensor) or not b.is_floating_point():
        raise JfbError(f"b must be a floating-point tensor, got {type(b).__name__}")
    method = LINEAR_SOLVERS.build(solver)
    with torch.no_grad():
        return method.solve(_SystemProducts(matvec, rmatvec, b), b, tol, max_iter)
