"""Limited-memory ("good") Broyden on g(u) = T(u) - u, batched per sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Solver, require_integer

#: a step that multiplies a sample's residual by more than this is undone and its memory reset
_REJECT_GROWTH = 4.0


@dataclass
class _Memory:
    U: Tensor  # (batch, features, memory)
    V: Tensor  # (batch, memory, features)
    u: Tensor | None = None  # the accepted point
    g: Tensor | None = None  # its residual T(u) - u
    count: int = 0


@dataclass(frozen=True)
class Broyden(Solver):
    """Quasi-Newton solve of ``T(u) - u = 0``.

    The inverse Jacobian of ``g`` is approximated by ``B = -I + U V^T``, so the first step is a
    Picard step; after ``memory`` rank-one updates the approximation restarts from ``-I``. A step
    that makes a sample's residual grow more than 4x is undone for that sample and its memory
    reset (plain Broyden has no globalisation and otherwise blows up on slow contractions).
    """

    memory: int = 10
    name = "broyden"

    def __post_init__(self) -> None:
        require_integer("broyden memory", self.memory, 1)

    def init(self, x0: Tensor) -> _Memory:
        batch, features = x0.shape
        return _Memory(x0.new_zeros(batch, features, self.memory), x0.new_zeros(batch, self.memory, features))

    def update(self, state: _Memory, x: Tensor, fx: Tensor) -> Tensor:
        g_new = fx - x
        if state.u is None:
            state.u, state.g = x, g_new
        else:
            rejected = g_new.norm(dim=1) > _REJECT_GROWTH * state.g.norm(dim=1)
            slot = state.count % self.memory
            if slot == 0:
                state.U.zero_(), state.V.zero_()
            _rank_one_update(state.U, state.V, x - state.u, g_new - state.g, slot)
            kept = (~rejected).to(x.dtype)
            state.U.mul_(kept[:, None, None]), state.V.mul_(kept[:, None, None])
            state.u = torch.where(rejected[:, None], state.u, x)
            state.g = torch.where(rejected[:, None], state.g, g_new)
            state.count += 1
        return state.u - _matvec(state.U, state.V, state.g)


def inverse_transpose_product(memory: _Memory, x: Tensor) -> Tensor:
    """``B^T x`` per sample, with ``B ~ (J - I)^{-1}`` the inverse-Jacobian estimate of ``g(u) = T(u) - u`` that
    ``memory`` holds at the end of a solve (SHINE's backward pass, :mod:`jfb.backward.shine`)."""
    return _rmatvec(memory.U, memory.V, x.to(memory.U.dtype)).to(x.dtype)


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
