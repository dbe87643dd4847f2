"""The forward solvers (Anderson, Broyden) on the IFT system, run by the forward solve's own loop.

``w = J^T w + b`` is a fixed point like ``u = T(u)``: the whole batch is one state (a row of one "sample", since
the system couples the samples under batch statistics), the stopping tolerance is ``tol * ||b||`` on the
residual ``||J^T w + b - w||``, and the driver's bookkeeping (best iterate, divergence and non-finite watch, the
count of evaluations) applies unchanged. By name: ``ift:anderson``, ``ift:broyden``, with the solver's options
(``ift:anderson:memory=10``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..solvers import SolveOptions, solve_flat
from ..status import Status
from .linear import JacobianMatVecs, LinearSolveInfo, LinearSolver, register_linear_solver


class ForwardSolverIteration(LinearSolver):
    """A registered forward solver (``solver``) iterating ``w <- J^T w + b``; one ``J^T`` product per iteration."""

    takes_initial_guess: ClassVar[bool] = True

    def __init__(self, solver: str, **options: Any) -> None:
        SolveOptions(solver=solver, solver_options=options)  # validated now, in one line
        self.solver, self.options = solver, options
        self.name = solver  # type: ignore[misc]

    def solve(
        self, products: JacobianMatVecs, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
    ) -> tuple[Tensor, LinearSolveInfo]:
        b_norm = float(b.norm())
        if b_norm == 0.0:
            return torch.zeros_like(b), LinearSolveInfo(0, 0.0, Status.CONVERGED)
        shape, row = b.shape, b.reshape(1, -1)

        def step(w: Tensor, index: Tensor | None) -> Tensor:
            return products.vjp(w.reshape(shape)).reshape(1, -1) + row

        options = SolveOptions(solver=self.solver, tol=tol * b_norm, max_iter=max_iter, solver_options=self.options)
        w, stats = solve_flat(step, (b if w0 is None else w0).reshape(1, -1), options)
        info = LinearSolveInfo(int(stats.iterations.max()), float(stats.abs_residual.max()) / b_norm, stats.status)
        return w.reshape(shape), info

    def __repr__(self) -> str:
        return self.name + "".join(f":{key}={value}" for key, value in sorted(self.options.items()))


for _solver in ("anderson", "broyden"):
    register_linear_solver(
        _solver, lambda _name=_solver, **options: ForwardSolverIteration(_name, **options), f"{_solver}[:memory=M]"
    )
