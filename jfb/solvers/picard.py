"""Picard (fixed-point) iteration: Algorithm 1 of the paper."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .base import Agreement, Operator, ResidualTracker, SolverState


def picard(
    f: Operator,
    u0: Tensor,
    *,
    tol: float,
    max_iter: int,
    stop_mode: str = "abs",
    freeze_converged: bool = False,
    divergence_ratio: float = 1e4,
    keep_history: bool = False,
    agree: Optional[Agreement] = None,
) -> tuple[Tensor, SolverState]:
    """Iterate ``u <- T(u)`` until every sample's residual is <= ``tol`` or ``max_iter``.

    With ``freeze_converged`` the operator is evaluated only on the samples that have not yet
    converged, which saves work when a batch mixes easy and hard samples (but changes batch
    statistics if T normalises over the batch).  Differentiable when called with grad enabled
    and ``freeze_converged=False`` (that is how the ``unroll`` backward uses it).
    """
    tracker = ResidualTracker(u0, tol, max_iter, stop_mode, divergence_ratio, keep_history, track_best=False, agree=agree)
    u = u0
    for step in range(1, max_iter + 1):
        if freeze_converged and step > 1:
            active = (~tracker.converged).nonzero().squeeze(1)
            fu_active = f(u[active], active)
            tracker.update(u[active], fu_active, step, active)
            u = u.index_copy(0, active, fu_active)
        else:
            fu = f(u, None)
            tracker.update(u, fu, step)
            u = fu
        tracker.t_evals += 1
        if tracker.finished():
            break
    return u, tracker.state(u)
