"""Halting: each sample stops after its own number of segments, when a halting head on its state says it is done.

ACT, HRM and TRM learn when to stop: a small head reads the state and predicts "done"; at test time a sample
stops at the first segment where the prediction passes a threshold, and the samples still running are the only
ones solved further. The head trains with a loss of its own (TRM: binary cross-entropy against "the answer read
from this state is right", :func:`halting_loss`). Within one solve, per-sample stopping at convergence is the
solve's own ``freeze_converged=True``; this is stopping across segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..binding import InitialState, initial_state
from ..errors import JfbError
from ..layer import ImplicitLayer
from ..state import State, map_state, take_rows
from .starts import batch_size, flat_rows, latent_shape_of, solve_function


class HaltingHead(nn.Module):
    """``done`` logits per sample from the state: one linear unit on the flattened state (``features`` values), or,
    with ``pooled=True``, on each channel's mean and maximum over the trailing dimensions of a ``(B, features, ...)``
    state, so that one head reads states whose size varies with the problem (mazes of any size, strings of any
    length). ``hidden=H`` (pooled only) first maps each position's ``features`` to ``H`` by a linear layer and a ReLU,
    so the maximum can find the one position that is not done yet."""

    def __init__(self, features: int, pooled: bool = False, hidden: int = 0) -> None:
        super().__init__()
        if hidden and not pooled:
            raise JfbError("HaltingHead: hidden=H is a layer per position before pooling; it needs pooled=True")
        self.pooled = pooled
        self.position = nn.Sequential(nn.Linear(features, hidden), nn.ReLU()) if hidden else None
        width = hidden or features
        self.linear = nn.Linear(2 * width if pooled else width, 1)

    def features(self, state: State) -> Tensor:
        """What the linear unit reads: ``(B, features)``, or pooled ``(B, 2 * features)`` (``2 * hidden``)."""
        if not self.pooled:
            return flat_rows(state)
        if not isinstance(state, Tensor) or state.dim() < 3:
            raise JfbError("HaltingHead(pooled=True) reads a (B, channels, ...) tensor state; use pooled=False")
        positions = state.flatten(2)
        if self.position is not None:
            positions = self.position(positions.transpose(1, 2)).transpose(1, 2)
        return torch.cat([positions.mean(2), positions.amax(2)], 1)

    def forward(self, state: State) -> Tensor:
        return self.linear(self.features(state)).squeeze(-1)


def halting_loss(logits: Tensor, correct: Tensor) -> Tensor:
    """TRM's halting loss: binary cross-entropy of the ``done`` logits against whether each sample's answer, read
    from the same state, is right (so the head learns to stop once more segments no longer change the answer)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, correct.to(logits.dtype))


@dataclass
class Halted:
    """The outcome of :func:`halted_solve`.

    Attributes:
        value: per sample, the state it halted at (or the last segment's, if it never halted).
        segments: ``(B,)`` the segments each sample ran.
        halted: ``(B,)`` whether the head stopped it (False: it ran every segment).
        saved: the fraction of sample-segments not run, ``1 - segments.sum() / (B * count)``.
    """

    value: State
    segments: Tensor
    halted: Tensor
    saved: float


def halted_solve(
    model: ImplicitLayer | Callable,
    x: Any,
    head: Callable[[State], Tensor],
    count: int,
    *,
    threshold: float = 0.5,
    u0: InitialState = None,
    latent_shape: Any = None,
    **settings: Any,
) -> Halted:
    """Up to ``count`` segments (as :func:`jfb.looped.segments`); after each, a sample whose ``sigmoid(head(state))``
    exceeds ``threshold`` stops, and only the others are solved further. Without grad (test time)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise JfbError(f"halted_solve: count must be an integer >= 1, got {count!r}")
    if not 0 < threshold < 1:
        raise JfbError(f"halted_solve: threshold must be a probability in (0, 1), got {threshold!r}")
    solve = solve_function(model, latent_shape, settings)
    b = batch_size(x)
    with torch.no_grad():
        state = initial_state(x, u0, latent_shape_of(model, latent_shape))[0]
        segments = torch.zeros(b, dtype=torch.long)
        running = torch.arange(b)
        for _ in range(count):
            rows = solve(take_rows(x, running), take_rows(state, running)).value
            state = _write_rows(state, running, rows)
            segments[running] += 1
            done = torch.sigmoid(head(rows)) > threshold
            running = running[~done.cpu()]
            if running.numel() == 0:
                break
    halted = torch.ones(b, dtype=torch.bool)
    halted[running] = False
    saved = 1 - float(segments.sum()) / (b * count)
    return Halted(state, segments, halted, saved)


def _write_rows(state: State, rows: Tensor, values: State) -> State:
    """``state`` with its rows ``rows`` replaced by ``values`` (out of place)."""
    leaves: list[Tensor] = []
    map_state(leaves.append, values)
    it = iter(leaves)
    return map_state(lambda t: t.index_copy(0, rows.to(t.device), next(it).to(t.dtype)), state)
