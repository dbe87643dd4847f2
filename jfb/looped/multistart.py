"""Multi-start: solve each sample from K initial states in one batched solve and keep the best per sample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..binding import InitialState
from ..equilibrium import Equilibrium
from ..errors import JfbError
from ..layer import ImplicitLayer
from ..state import State, take_rows
from .starts import (
    batch_size,
    initial_states,
    latent_shape_of,
    per_start,
    repeated,
    solve_function,
    start_list,
)

#: ``score(u, x) -> (rows,)``: lower is better; ``u`` and ``x`` have K * B rows
Score = Callable[[State, Any], Tensor]


@dataclass
class MultiStart:
    """The outcome of :func:`multi_start`.

    Attributes:
        value: per sample, the state of the chosen start (with grad: the backward mode's output of that start's
            row, so only the chosen solves receive gradient).
        choice: ``(B,)`` the index of the chosen start per sample.
        scores: ``(K, B)`` what was minimised: the residual (abs or rel as the solve's ``stop_mode``) or the score.
        residuals: ``(K, B)`` each start's residual, whatever chose.
        equilibrium: the one batched solve of K * B rows (start ``k`` of sample ``i`` is row ``k * B + i``).
    """

    value: State
    choice: Tensor
    scores: Tensor
    residuals: Tensor
    equilibrium: Equilibrium


def multi_start(
    model: ImplicitLayer | Callable,
    x: Any,
    starts: int | Sequence[InitialState] = 4,
    *,
    score: Score | None = None,
    latent_shape: Any = None,
    **settings: Any,
) -> MultiStart:
    """Solve ``x`` from K starts at once and keep, per sample, the start of lowest residual (or of lowest ``score``).

    Args:
        model: an :class:`~jfb.ImplicitLayer` (solves with its own settings) or an operator ``T(u, x)``
            (solved by :func:`jfb.fixed_point` with ``settings``: ``solver=``, ``tol=``, ``backward=`` ...).
        x: the batch of B samples.
        starts: K (zeros and K - 1 random starts), or a list of starts: ``"zeros"``, ``"random"``, ``"mixed"``, a
            state, or a function ``x -> state`` (a learned initialisation).
        score: ``score(u, x) -> (K * B,)``, lower is better (a learned verifier); default: the residual.

    The K * B rows are one solve: a T that mixes samples (BatchNorm over the batch in training mode) sees the K
    copies together. Random starts draw from torch's global generator.
    """
    starts = start_list(starts)
    solve = solve_function(model, latent_shape, settings)
    k, b = len(starts), batch_size(x)
    xs = repeated(x, k)
    equilibrium = solve(xs, initial_states(x, starts, latent_shape_of(model, latent_shape)))
    stats = equilibrium.stats
    residual = stats.rel_residual if stats.options.stop_mode == "rel" else stats.abs_residual
    residuals = per_start(residual.detach(), k)
    if score is None:
        scores = residuals
    else:
        with torch.no_grad():
            scores = per_start(_checked_score(score(equilibrium.value, xs), k * b), k)
    choice = torch.nan_to_num(scores, nan=torch.inf).argmin(dim=0)
    rows = choice * b + torch.arange(b, device=choice.device)
    return MultiStart(take_rows(equilibrium.value, rows), choice, scores, residuals, equilibrium)


def _checked_score(values: Any, rows: int) -> Tensor:
    if not isinstance(values, Tensor) or values.shape != (rows,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise JfbError(f"score(u, x) must return one number per row, shape ({rows},), got {shape}")
    return values.detach()
