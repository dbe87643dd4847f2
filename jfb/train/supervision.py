"""Deep supervision in the step engine (HRM, TRM): each batch trained in segments.

A segment is one solve that starts from the state the previous segment reached, detached (no gradient crosses
segments), with its own loss and its own optimiser step; the first starts from the model's default. With
``backward="jfb"`` this is HRM's training ("one-step gradient"), with ``phantom:K`` or ``unroll`` its k-step
variants. The model keeps constant memory in the number of segments: only one segment's graph exists at a time.
For a hand-written loop, :func:`jfb.looped.segments` yields the segments of a layer or an operator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import JfbError
from ..state import map_state

#: ``loss(model, batch, state) -> (loss, mean forward iterations, state reached)``; ``state`` None: the model's
#: default start
SegmentLoss = Callable[[nn.Module, object, Any], tuple[Tensor, float, Any]]


@dataclass(frozen=True)
class DeepSupervision:
    """``count`` segments of ``loss`` per batch, each from the previous one's state, detached: called as
    ``supervision(model, batch)`` it yields each segment's ``(loss, iterations)``; the engine takes an optimiser
    step on each before asking for the next."""

    loss: SegmentLoss
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise JfbError(f"deep supervision: segments must be an integer >= 1, got {self.count!r}")

    def __call__(self, model: nn.Module, batch: object) -> Iterator[tuple[Tensor, float]]:
        state = None
        for _ in range(self.count):
            value, iterations, state = self.loss(model, batch, state)
            yield value, iterations
            state = map_state(Tensor.detach, state)  # where this segment's loss saw it; no gradient crosses


def from_start(loss: SegmentLoss) -> Callable[[nn.Module, object], tuple[Tensor, float]]:
    """The plain loss (one solve from the model's default start) of a segment loss."""

    def plain(model: nn.Module, batch: object) -> tuple[Tensor, float]:
        value, iterations, _ = loss(model, batch, None)
        return value, iterations

    return plain
