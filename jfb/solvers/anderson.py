"""Batched Anderson acceleration (type II, as in the DEQ literature)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import JfbError
from .base import Solver, require_integer


@dataclass
class _History:
    X: Tensor  # (batch, memory, features): the last points evaluated
    F: Tensor  # their images T(x)
    H: Tensor  # the bordered least-squares system, reused
    rhs: Tensor
    count: int = 0


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration with memory ``memory``, mixing ``beta`` and ridge ``ridge``.

    Each step solves, per sample, the small constrained least-squares problem
    ``min_alpha ||G alpha||^2 + ridge * s ||alpha||^2`` (``s`` the mean squared residual, so the
    regularisation is scale-free) s.t. ``sum(alpha) = 1`` over the last ``memory`` residuals
    ``G = F - X``, then mixes ``x = beta F alpha + (1 - beta) X alpha``. The first step is Picard's;
    rows whose system is singular fall back to a Picard step. Without host synchronisation. The
    small least-squares problem is solved in at least float32, so bf16/fp16 states (autocast) work.
    """

    memory: int = 5
    beta: float = 1.0
    ridge: float = 1e-4
    name = "anderson"

    def __post_init__(self) -> None:
        require_integer("anderson memory", self.memory, 2, hint=" (memory 1 is Picard)")
        if not self.beta > 0 or not self.ridge >= 0:
            raise JfbError(f"anderson needs beta > 0 and ridge >= 0, got beta={self.beta!r}, ridge={self.ridge!r}")

    def init(self, x0: Tensor) -> _History:
        batch, m = x0.shape[0], self.memory
        X = x0.new_zeros(batch, m, x0.shape[1])
        wide = torch.promote_types(x0.dtype, torch.float32)
        H = x0.new_zeros(batch, m + 1, m + 1, dtype=wide)
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        rhs = x0.new_zeros(batch, m + 1, 1, dtype=wide)
        rhs[:, 0] = 1
        return _History(X, torch.zeros_like(X), H, rhs)

    def update(self, state: _History, x: Tensor, fx: Tensor) -> Tensor:
        latest = state.count % self.memory
        state.X[:, latest], state.F[:, latest] = x, fx
        state.count += 1
        if state.count == 1:
            return fx
        n = min(state.count, self.memory)
        X, F = state.X[:, :n], state.F[:, :n]
        with torch.autocast(x.device.type, enabled=False):  # the least squares stays in float32 or wider
            G = (F - X).to(state.H.dtype)
            gram = G @ G.transpose(1, 2)
            # floor at eps, not tiny: a sample whose residuals are all exactly zero must still give a regular system
            scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(G.dtype).eps)
            state.H[:, 1 : n + 1, 1 : n + 1] = gram + self.ridge * scale[:, None, None] * torch.eye(
                n, dtype=G.dtype, device=x.device
            )
            solution, _ = torch.linalg.solve_ex(
                state.H[:, : n + 1, : n + 1], state.rhs[:, : n + 1]
            )  # no error check: no sync
        alpha = solution[:, 1 : n + 1, 0]
        picard_step = torch.zeros_like(alpha)
        picard_step[:, latest] = 1
        alpha = torch.where(torch.isfinite(alpha).all(dim=1, keepdim=True), alpha, picard_step).to(F.dtype)
        mixed = (alpha[:, None] @ F)[:, 0]
        return mixed if self.beta == 1 else self.beta * mixed + (1 - self.beta) * (alpha[:, None] @ X)[:, 0]
