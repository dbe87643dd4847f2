"""Limited-memory ("good") Broyden on g(u) = T(u) - u, batched per sample."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Agreement, Operator, ResidualTracker, SampleLayout, SolverState, require_integer

#: a step that multiplies a sample's residual by more than this is undone and its memory reset
_REJECT_GROWTH = 4.0


def broyden(
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
    memory: int = 10,
) -> tuple[Tensor, SolverState]:
    """Quasi-Newton solve of ``T(u) - u = 0``.

    The inverse Jacobian of ``g`` is approximated by ``B = -I + U V^T``, so the first step is a
    Picard step; after ``memory`` rank-one updates the approximation restarts from ``-I``. A step
    that makes a sample's residual grow more than 4x is undone for that sample and its memory
    reset (plain Broyden has no globalisation and otherwise blows up on slow contractions).
    One T evaluation per step; converged samples are frozen (not evaluated) when
    ``freeze_converged`` is set.
    Returns the lowest-residual ``T(u)`` of each sample.
    """
    require_integer("broyden memory", memory, 1)
    batch = u0.shape[0]
    tracker = ResidualTracker(u0, tol, max_iter, stop_mode, divergence_ratio, keep_history, agree=agree)
    dim = u0[0].numel()
    U = u0.new_zeros(batch, dim, memory)
    V = u0.new_zeros(batch, memory, dim)
    layout = SampleLayout(u0)
    u = layout.flatten(u0)
    fu = layout.flatten(f(u0, None))
    tracker.update(layout.unflatten(u), layout.unflatten(fu), 1)
    tracker.t_evals += 1
    g = fu - u
    nothing_frozen = torch.zeros(batch, dtype=torch.bool, device=u0.device)
    for step in range(2, max_iter + 1):
        if tracker.finished():
            break
        frozen = tracker.converged if freeze_converged else nothing_frozen
        du = torch.where(frozen[:, None], torch.zeros_like(u), -_matvec(U, V, g))
        u_new = u + du
        active = (~frozen).nonzero().squeeze(1)
        index = None if bool((~frozen).all()) else active
        rows = slice(None) if index is None else index
        x_rows = layout.unflatten(u_new[rows])
        fx = layout.flatten(f(x_rows, index))
        tracker.update(x_rows, layout.unflatten(fx), step, index)
        tracker.t_evals += 1
        g_new = g.clone()
        g_new[rows] = fx - u_new[rows]
        rejected = g_new.norm(dim=1) > _REJECT_GROWTH * g.norm(dim=1)
        slot = (step - 2) % memory
        if slot == 0:
            U.zero_(), V.zero_()
        _rank_one_update(U, V, du, g_new - g, slot)
        U[rejected], V[rejected] = 0, 0
        u = torch.where(rejected[:, None], u, u_new)
        g = torch.where(rejected[:, None], g, g_new)
    return tracker.best, tracker.state(tracker.best)


def _matvec(U: Tensor, V: Tensor, x: Tensor) -> Tensor:
    """``B x`` for ``B = -I + U V^T``."""
    return -x + torch.einsum("bnm,bm->bn", U, torch.einsum("bmn,bn->bm", V, x))


def _rmatvec(U: Tensor, V: Tensor, x: Tensor) -> Tensor:
    """``x^T B`` for ``B = -I + U V^T``."""
    return -x + torch.einsum("bm,bmn->bn", torch.einsum("bn,bnm->bm", x, U), V)


def _rank_one_update(U: Tensor, V: Tensor, du: Tensor, dg: Tensor, slot: int) -> None:
    """Sherman-Morrison update of the inverse Jacobian so that ``B dg = du``."""
    vT = _rmatvec(U, V, du)
    denom = (vT * dg).sum(dim=1, keepdim=True)
    safe = denom.abs() > torch.finfo(du.dtype).eps * du.norm(dim=1, keepdim=True) * dg.norm(dim=1, keepdim=True)
    u_vec = (du - _matvec(U, V, dg)) / torch.where(safe, denom, torch.ones_like(denom))
    U[:, :, slot] = torch.where(safe, u_vec, torch.zeros_like(u_vec))
    V[:, slot] = torch.where(safe, vT, torch.zeros_like(vT))
