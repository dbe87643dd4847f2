"""A solve that stops at a tolerance inside a traced program (``torch.export``, and from it ONNX): Picard as one
``torch.while_loop``, whose condition is the iteration cap and the batch's largest residual against ``tol``.

The driver's decisions are read on the host, which a traced program cannot do; here the decision is part of the
program (an ONNX ``Loop``), so the exported model stops where the eager one does. Per-sample freezing, best
iterates and divergence detection stay with the driver; the statistics of the trace are placeholders
(``Status.TRACED``): the outcome exists only when the program runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import JfbError
from ..status import Status
from .base import SolveStats
from .options import SolveOptions

_EPS = 1e-12


def solve_traced(
    F: Callable[[Tensor, Tensor | None], Tensor], x0: Tensor, options: SolveOptions
) -> tuple[Tensor, SolveStats]:
    """``u*`` of ``F`` from ``x0``, stopping when every sample's residual meets ``options.tol`` or at ``max_iter``."""
    if options.solver_name != "picard":
        raise JfbError(
            f"a traced solve that stops at a tolerance runs Picard iterations, not {options.solver_name!r}: export "
            "with solver='picard', or at a fixed depth (jfb.deploy.export_program(..., depth=K), jfb export --depth K)"
        )
    tol, relative = options.tol, options.stop_mode == "rel"

    def residual(x: Tensor, fx: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(fx - x, dim=1)
        return norm / (torch.linalg.vector_norm(fx, dim=1) + _EPS) if relative else norm

    def unfinished(x: Tensor, fx: Tensor, count: Tensor) -> Tensor:
        return (count < options.max_iter) & (residual(x, fx).max() > tol)

    def step(x: Tensor, fx: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return fx.clone(), F(fx, None), count + 1  # (a loop body may not return an input itself)

    first = F(x0, None)
    x, fx, count = torch.while_loop(unfinished, step, (x0, first, torch.ones((), dtype=torch.int64, device=x0.device)))
    measure = residual(x, fx)
    batch = x0.shape[0]
    stats = SolveStats(
        iterations=count.expand(batch),
        abs_residual=torch.linalg.vector_norm(fx - x, dim=1),
        rel_residual=measure if relative else measure / (torch.linalg.vector_norm(fx, dim=1) + _EPS),
        converged=measure <= tol,
        status=Status.TRACED,
        t_evals=options.max_iter,  # (at most: the count exists when the program runs)
    )
    return fx, stats
