"""Path independence (Anil et al., NeurIPS 2022): does the solve reach the same fixed point from every start?

Anil et al.'s asymptotic alignment score compares, per sample, the state reached from the usual initialisation
with the state reached from the fixed point of a *different* input, after enough iterations: a path-independent
model gives cosine similarity 1 whatever the start, and the paper finds that models with high scores are the ones
whose accuracy keeps improving with more test-time iterations on harder instances. Here the reference start is
zeros (or any start), and the other starts default to that of the paper (``"other_sample"``: sample ``i`` starts
from the reference fixed point of sample ``i + 1``) and a random state; the score of a sample is its lowest
alignment over the starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..binding import InitialState, initial_state
from ..errors import JfbError
from ..layer import ImplicitLayer
from ..state import State, map_state
from .starts import batch_size, concat_states, flat_rows, latent_shape_of, per_start, repeated, solve_function

#: the start of Anil et al.'s score: the reference fixed point of the next sample of the batch
OTHER_SAMPLE = "other_sample"


@dataclass
class PathIndependence:
    """The outcome of :func:`path_independence`.

    Attributes:
        score: ``(B,)`` per sample, the lowest alignment of a start's fixed point with the reference's (1: the
            same state whatever the start).
        alignment: ``(S, B)`` cosine similarity of each start's final state with the reference's.
        starts: the S starts, as given (named ones by name).
        residuals: ``(S + 1, B)`` abs residual of the reference solve (first) and of each start's.
        converged: ``(S + 1, B)`` whether each solve met its tolerance (an unconverged pair measures a path, not
            a fixed point).
    """

    score: Tensor
    alignment: Tensor
    starts: list[Any]
    residuals: Tensor
    converged: Tensor


def path_independence(
    model: ImplicitLayer | Callable,
    x: Any,
    starts: Sequence[InitialState] = (OTHER_SAMPLE, "random"),
    *,
    reference: InitialState = "zeros",
    latent_shape: Any = None,
    **settings: Any,
) -> PathIndependence:
    """Per-sample asymptotic alignment of the fixed points reached from ``starts`` with the one from ``reference``.

    ``model`` and ``settings`` as :func:`jfb.looped.multi_start`; give the solve enough iterations (``max_iter=``,
    or ``layer.solving(max_iter=...)``) for "asymptotic" to hold. Runs without grad: two solves (the reference,
    then every start in one batched solve).
    """
    starts = list(starts)
    if not starts:
        raise JfbError("path_independence needs at least one start besides the reference")
    solve, shape = solve_function(model, latent_shape, settings), latent_shape_of(model, latent_shape)
    b = batch_size(x)
    if OTHER_SAMPLE in starts and b < 2:
        raise JfbError(f"start {OTHER_SAMPLE!r} starts each sample from another's fixed point: needs a batch of 2+")
    with torch.no_grad():
        ref = solve(x, initial_state(x, reference, shape)[0])
        states = [_start_state(start, x, ref.fixed_point, shape) for start in starts]
        others = solve(repeated(x, len(starts)), concat_states(states))
    alignment = _alignment(flat_rows(ref.fixed_point), flat_rows(others.fixed_point).reshape(len(starts), b, -1))
    residuals = torch.cat([ref.stats.abs_residual[None], per_start(others.stats.abs_residual, len(starts))])
    converged = torch.cat([ref.stats.converged[None], per_start(others.stats.converged, len(starts))])
    return PathIndependence(alignment.min(dim=0).values, alignment, starts, residuals, converged)


def _start_state(start: InitialState, x: Any, fixed: State, shape: tuple | None) -> State:
    if isinstance(start, str) and start == OTHER_SAMPLE:
        return map_state(lambda t: t.roll(-1, dims=0), fixed)
    return initial_state(x, start, shape)[0]


def _alignment(reference: Tensor, others: Tensor) -> Tensor:
    """Cosine similarity per sample; two states both at zero (within rounding) count as aligned."""
    dot = (others * reference).sum(-1)
    norms = others.norm(dim=-1) * reference.norm(dim=-1)
    tiny = torch.finfo(reference.dtype).tiny ** 0.5
    return torch.where(norms > tiny, dot / norms.clamp_min(tiny), torch.ones_like(dot))
