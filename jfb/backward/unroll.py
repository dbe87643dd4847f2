"""Ordinary backpropagation through every forward iteration (for comparison only)."""

from __future__ import annotations

from torch import Tensor

from ..status import Status
from ..transforms import TRANSFORMS
from .base import BackwardMode, BackwardStats, FixedPointMap


class Unroll(BackwardMode):
    """The forward Picard loop records its graph; memory grows linearly with the depth.

    The backward pass then performs one J^T product per recorded application of T whose input
    requires grad: ``depth`` products for ``depth`` forward iterations (the first one starts
    from a constant) plus the final application.
    """

    name = "unroll"
    records_forward_graph = True
    forward_solver = "picard"
    supports_second_order = True
    transforms = frozenset(TRANSFORMS)

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = T(u_star)
        depth = stats.forward_evals if u_star.requires_grad else 0

        def count(grad: Tensor) -> Tensor:
            stats.j_matvecs += depth
            stats.iterations, stats.status = depth, Status.CONVERGED
            return grad

        if out.requires_grad:
            out.register_hook(count)
        return out
