"""torchdeq behind the workloads' engine interface, for side-by-side runs only.

torchdeq is never a dependency of torch-jfb: it is imported when an engine is built, and a missing
install is one line saying how to get it. The settings mirror :class:`jfb.workloads.engines.JfbEngine`:
training runs Picard (torchdeq's ``fixed_point_iter``) for exactly ``depth`` iterations (a tolerance of 0
is never met), then JFB (``grad=1``: one application of T with grad, torchdeq's one-step phantom gradient
with ``tau=1``) or the exact implicit gradient (``ift=True``, its backward fixed-point solve); eval stops
at the same relative tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import JfbError, unknown_name
from ..workloads.engines import EngineFactory, Operator, Solved

TORCHDEQ_ENGINES = ("torchdeq-jfb", "torchdeq-ift")


def _get_deq():
    try:
        from torchdeq import get_deq
    except ImportError as exc:
        raise JfbError("torchdeq is not installed; for side-by-side runs: pip install --no-deps torchdeq") from exc
    return get_deq


class TorchdeqEngine(nn.Module):
    """``torchdeq.get_deq(core="indexing", ...)`` around ``operator``; returns :class:`Solved`. ``backward_tol`` is
    torchdeq's absolute backward tolerance (its default); ``last_backward_missed``: whether the last backward solve
    in training ended above it for some sample (counted as a miss, as torch-jfb's own are); ``backward_writer``,
    when set, receives the statistics of each backward solve in training (torchdeq's ``backward_writer``)."""

    def __init__(
        self,
        operator: Operator,
        ift: bool,
        eval_tol: float | None,
        backward_iters: int = 40,
        backward_tol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.operator = operator
        self.deq = _get_deq()(
            core="indexing",
            f_solver="fixed_point_iter",
            f_tol=0.0,
            f_stop_mode="rel",
            ift=ift,
            grad=1,
            b_solver="fixed_point_iter",
            b_max_iter=backward_iters,
            b_tol=backward_tol,
        )
        self.eval_tol, self.backward_tol = eval_tol, backward_tol
        self.backward_writer: Callable[[dict[str, Any]], None] | None = None
        self.last_backward_missed = False

    def forward(self, x: Any, u0: Any, depth: int) -> Solved:
        # torchdeq takes the tolerance from its attribute only (a per-call one collides with it)
        self.deq.f_tol = self.eval_tol if not self.training and self.eval_tol is not None else 0.0
        writer = self._backward_solved if self.training else None
        states, info = self.deq(
            lambda u: self.operator(u, x), u0, solver_kwargs={"f_max_iter": depth}, backward_writer=writer
        )
        return Solved(states[-1], float(info["nstep"].float().mean()))

    def _backward_solved(self, info: dict[str, Any]) -> None:
        """torchdeq's statistics of a backward solve: a miss when a sample's lowest residual is not below the
        tolerance (torchdeq stops once every sample's is)."""
        self.last_backward_missed = not bool(info["abs_lowest"].max() < self.backward_tol)
        if self.backward_writer is not None:
            self.backward_writer(info)


def torchdeq_engine(name: str, eval_tol: float | None = 1e-4) -> EngineFactory:
    """``torchdeq-jfb`` or ``torchdeq-ift`` as an engine factory."""
    if name not in TORCHDEQ_ENGINES:
        raise unknown_name("engine", name, TORCHDEQ_ENGINES)
    _get_deq()  # fail here, before any training, when torchdeq is missing
    return lambda operator: TorchdeqEngine(operator, ift=name == "torchdeq-ift", eval_tol=eval_tol)
