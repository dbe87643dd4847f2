"""SHINE (Ramzi et al., ICLR 2022): the backward pass reuses the forward quasi-Newton inverse-Jacobian estimate.

Broyden's forward solve of ``g(u) = T(u) - u = 0`` ends with ``B ~ (J - I)^{-1}`` (``B = -I + U V^T``, per sample),
so the implicit gradient ``w = (I - J^T)^{-1} dl/du*`` is estimated as ``-B^T dl/du*`` with no Jacobian product at
all. The estimate is as good as Broyden's last rank-one updates made it (they restart every ``memory`` steps), so
the paper's fallback is offered: ``refine=K`` iterations of an IFT linear solver started from the estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import JfbError
from ..solvers import SolveOptions, SolveStats, solve_flat
from ..solvers.base import require_integer
from ..solvers.broyden import Broyden, inverse_transpose_product
from ..status import Status
from ..transforms import differentiated_check
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientOverride, refuse_second_order
from .jacobian import JacobianProducts, with_products
from .linear import LINEAR_SOLVERS, LinearSolver


@dataclass
class ShineStats(BackwardStats):
    """:class:`BackwardStats` with the quality of the estimate before any refinement."""

    #: ``||J^T w + g - w|| / ||g||`` of SHINE's estimate ``w`` (one J^T product measures it)
    estimate_residual: float = float("nan")


@dataclass(frozen=True)
class _KeptBroyden(Broyden):
    """Broyden that keeps its last state, where the mode can read it after the solve."""

    kept: list = field(default_factory=list, compare=False)

    def init(self, x0: Tensor) -> Any:
        state = super().init(x0)
        self.kept.append(state)
        return state


class Shine(BackwardMode):
    """``w = -B^T dl/du*`` with Broyden's inverse-Jacobian estimate ``B``; needs ``solver="broyden"``.

    ``refine=K`` (default 0) runs K iterations of ``linear_solver`` (default the fixed-point iteration) from the
    estimate toward ``tol``; with 0 the backward pass costs one J^T product (the estimate's residual, reported as
    ``stats.backward.estimate_residual``) plus the output's. An approximate gradient by design: a refinement that
    stops short of ``tol`` is not reported as a failure. The refinement (and the estimate's residual) takes J at the
    output ``T(u*)``, as ``ift`` does. By name: ``"shine"``, ``"shine:refine=5"``.
    """

    forward_solver = "broyden"
    lockstep_safe = False
    stats_type = ShineStats

    def __init__(self, refine: int = 0, linear_solver: str | LinearSolver = "fixed_point", tol: float = 1e-6) -> None:
        require_integer("shine refine", refine, 0)
        self.refine, self.tol = refine, tol
        self.linear_solver = LINEAR_SOLVERS.build(linear_solver)
        if refine and not self.linear_solver.takes_initial_guess:
            raise JfbError(f"shine refine: linear solver {self.linear_solver!r} takes no initial guess")
        self.name = "shine" + (f":refine={refine}" if refine else "")

    def solve(
        self,
        F: Callable[[Tensor, Tensor | None], Tensor],
        x0: Tensor,
        options: SolveOptions,
        agree: Callable[[bool], bool] | None,
        observe: Callable[[Tensor], None] | None,
    ) -> tuple[Tensor, SolveStats, Any]:
        solver = _KeptBroyden(memory=options.method.memory)
        u_star, stats = solve_flat(F, x0, options.replace(solver=solver), agree, observe)
        return u_star, stats, solver.kept[-1]

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: ShineStats) -> Tensor:
        out = T(u_star.detach())
        if not out.requires_grad:
            return out
        memory, differentiated = T.trace, differentiated_check()
        point = out.detach()  # J at the output T(u*), as ift takes it (the same at a fixed point)

        def gradient(grad: Tensor, value: Tensor) -> tuple[Tensor]:
            refuse_second_order(self.name, differentiated())
            estimate = -inverse_transpose_product(memory, grad)
            return (with_products(T, point, grad, lambda products, g: self._refined(products, g, estimate, stats)),)

        return GradientOverride.apply(gradient, None, out)

    def _refined(self, products: JacobianProducts, grad: Tensor, estimate: Tensor, stats: ShineStats) -> Tensor:
        with torch.no_grad():
            g_norm = float(grad.norm()) or 1.0
            stats.estimate_residual = float((products.vjp(estimate) + grad - estimate).norm()) / g_norm
            w, stats.relative_residual, stats.status = estimate, stats.estimate_residual, Status.CONVERGED
            if self.refine:
                w, info = self.linear_solver.solve(products, grad, self.tol, self.refine, w0=estimate)
                stats.relative_residual, stats.iterations = info.relative_residual, info.iterations
        stats.t_evals += 1
        stats.j_matvecs += products.count
        return w
