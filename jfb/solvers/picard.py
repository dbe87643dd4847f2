"""Picard (fixed-point) iteration: Algorithm 1 of the paper."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Solver


@dataclass(frozen=True)
class Picard(Solver):
    """``u <- T(u)``. Returns the latest iterate; differentiable through the iterations (``unroll``)."""

    name = "picard"
    returns_best = False

    def update(self, state: None, x: Tensor, fx: Tensor) -> Tensor:
        return fx
