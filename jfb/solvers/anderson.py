"""Batched Anderson acceleration (type II, as in the DEQ literature)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Agreement, Operator, ResidualTracker, SampleLayout, SolverState, require_integer


def anderson(
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
    memory: int = 5,
    beta: float = 1.0,
    ridge: float = 1e-4,
) -> tuple[Tensor, SolverState]:
    """Anderson acceleration with memory ``memory``, mixing ``beta`` and ridge ``ridge``.

    Each step solves, per sample, the small constrained least-squares problem
    ``min_alpha ||G alpha||^2 + ridge * s ||alpha||^2`` (``s`` the mean squared residual, so
    the regularisation is scale-free) s.t. ``sum(alpha) = 1`` over the last
    ``memory`` residuals ``G``, then mixes ``u = beta F alpha + (1 - beta) X alpha``.
    One T evaluation per step. Returns the lowest-residual iterate of each sample.
    """
    require_integer("anderson memory", memory, 2, hint=" (memory 1 is Picard)")
    if not beta > 0 or not ridge >= 0:
        raise ValueError(f"anderson needs beta > 0 and ridge >= 0, got beta={beta!r}, ridge={ridge!r}")
    batch = u0.shape[0]
    tracker = ResidualTracker(u0, tol, max_iter, stop_mode, divergence_ratio, keep_history, agree=agree)
    layout = SampleLayout(u0)
    X = u0.new_zeros(batch, memory, u0[0].numel())
    F = torch.zeros_like(X)

    def evaluate(slot: int, x: Tensor, step: int) -> None:
        index = _active(tracker, freeze_converged)
        rows = slice(None) if index is None else index
        x_rows = layout.unflatten(x[rows])
        fx = f(x_rows, index)
        tracker.update(x_rows, fx, step, index)
        tracker.t_evals += 1
        X[rows, slot] = layout.flatten(x_rows)
        F[rows, slot] = layout.flatten(fx)

    evaluate(0, layout.flatten(u0), 1)
    if max_iter > 1 and not tracker.finished():
        evaluate(1, F[:, 0].clone(), 2)
    H = u0.new_zeros(batch, memory + 1, memory + 1)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    rhs = u0.new_zeros(batch, memory + 1, 1)
    rhs[:, 0] = 1
    for step in range(3, max_iter + 1):
        if tracker.finished():
            break
        n = min(step - 1, memory)
        G = F[:, :n] - X[:, :n]
        gram = G @ G.transpose(1, 2)
        # floor at eps, not tiny: a sample whose residuals are all exactly zero must still give a regular system
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(u0.dtype).eps)
        eye = torch.eye(n, dtype=u0.dtype, device=u0.device)
        H[:, 1 : n + 1, 1 : n + 1] = gram + ridge * scale[:, None, None] * eye
        alpha = torch.linalg.solve(H[:, : n + 1, : n + 1], rhs[:, : n + 1])[:, 1 : n + 1, 0]
        alpha = _picard_where_singular(alpha, (step - 2) % memory)
        mixed = beta * (alpha[:, None] @ F[:, :n])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :n])[:, 0]
        evaluate((step - 1) % memory, mixed, step)
    return tracker.best, tracker.state(tracker.best)


def _picard_where_singular(alpha: Tensor, latest: int) -> Tensor:
    """Rows whose mixing weights are not finite fall back to a plain Picard step from the latest iterate."""
    bad = ~torch.isfinite(alpha).all(dim=1)
    if not bool(bad.any()):
        return alpha
    picard_step = torch.zeros_like(alpha)
    picard_step[:, latest] = 1
    return torch.where(bad[:, None], picard_step, alpha)


def _active(tracker: ResidualTracker, freeze_converged: bool) -> Optional[Tensor]:
    if not freeze_converged or not bool(tracker.converged.any()):
        return None
    return (~tracker.converged).nonzero().squeeze(1)
