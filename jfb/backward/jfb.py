"""Jacobian-free backpropagation (the paper's Figure 3)."""

from __future__ import annotations

from torch import Tensor

from ..status import Status
from ..transforms import TRANSFORMS
from .base import BackwardMode, BackwardStats, FixedPointMap


class JFB(BackwardMode):
    """Detach ``u*`` and apply T once with grad: the gradient treats ``(I - J)^{-1}`` as ``I``.

    No Jacobian products; memory and cost of one backward through T.
    """

    name = "jfb"
    supports_second_order = True
    transforms = frozenset(TRANSFORMS)

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = T(u_star.detach())
        if out.requires_grad:
            out.register_hook(lambda grad: _mark_done(stats, grad))
        return out


def _mark_done(stats: BackwardStats, grad: Tensor) -> Tensor:
    stats.status = Status.CONVERGED
    stats.iterations = 0
    return grad
