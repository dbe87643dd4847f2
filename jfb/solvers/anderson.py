"""Batched Anderson acceleration (type II, as in the DEQ literature)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import JfbError
from .base import Solver, require_integer


@dataclass
class _History:
    F: Tensor  # (batch, memory, features): the images T(x) of the last points evaluated
    G: Tensor  # their residuals T(x) - x (so the points themselves are F - G)
    gram: Tensor  # (batch, memory, memory): G G^T, one row and column replaced per step
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
    The residuals are kept and the Gram matrix ``G G^T`` is updated by the one row and column of the
    newest residual: ``memory`` inner products per step instead of ``memory**2`` (and no ``F - X``).
    """

    memory: int = 5
    beta: float = 1.0
    ridge: float = 1e-4
    name = "anderson"
    onnx_refusal = "its mixing solves a small linear system at every step, and ONNX has no linear-solve operator"

    def __post_init__(self) -> None:
        require_integer("anderson memory", self.memory, 2, hint=" (memory 1 is Picard)")
        if not self.beta > 0 or not self.ridge >= 0:
            raise JfbError(f"anderson needs beta > 0 and ridge >= 0, got beta={self.beta!r}, ridge={self.ridge!r}")

    def init(self, x0: Tensor) -> _History:
        batch, m = x0.shape[0], self.memory
        F = x0.new_zeros(batch, m, x0.shape[1])
        wide = torch.promote_types(x0.dtype, torch.float32)
        H = x0.new_zeros(batch, m + 1, m + 1, dtype=wide)
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        rhs = x0.new_zeros(batch, m + 1, 1, dtype=wide)
        rhs[:, 0] = 1
        return _History(F, torch.zeros_like(F), x0.new_zeros(batch, m, m, dtype=wide), H, rhs)

    def update(self, state: _History, x: Tensor, fx: Tensor) -> Tensor:
        latest = state.count % self.memory
        state.F[:, latest], state.G[:, latest] = fx, fx - x
        state.count += 1
        n = min(state.count, self.memory)
        F, G = state.F[:, :n], state.G[:, :n]
        with torch.autocast(x.device.type, enabled=False):  # the least squares stays in float32 or wider
            row = (G.to(state.gram.dtype) @ G[:, latest, :, None].to(state.gram.dtype))[:, :, 0]
            state.gram[:, latest, :n], state.gram[:, :n, latest] = row, row
            if state.count == 1:
                return fx
            gram = state.gram[:, :n, :n]
            # floor at eps, not tiny: a sample whose residuals are all exactly zero must still give a regular system
            scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(gram.dtype).eps)
            state.H[:, 1 : n + 1, 1 : n + 1] = gram + self.ridge * scale[:, None, None] * torch.eye(
                n, dtype=gram.dtype, device=x.device
            )
            solution, _ = torch.linalg.solve_ex(
                state.H[:, : n + 1, : n + 1], state.rhs[:, : n + 1]
            )  # no error check: no sync
        alpha = solution[:, 1 : n + 1, 0]
        picard_step = torch.zeros_like(alpha)
        picard_step[:, latest] = 1
        alpha = torch.where(torch.isfinite(alpha).all(dim=1, keepdim=True), alpha, picard_step).to(F.dtype)
        mixed = (alpha[:, None] @ F)[:, 0]  # the points' mix is alpha F - alpha G
        return mixed if self.beta == 1 else mixed - (1 - self.beta) * (alpha[:, None] @ G)[:, 0]
