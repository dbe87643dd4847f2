"""Solving one batch from several initial states at once: what multi-start and the path-independence diagnostic share.

A start is a kind of initial state by name (``"zeros"``, ``"random"``, ``"mixed"``: see
:func:`jfb.binding.initial_state`), a state, or a function ``x -> state`` (a learned initialisation). K starts of
a batch of B samples become one solve of K * B rows: the input repeated K times (a :class:`jfb.Shared` argument
is not), the K initial states stacked start by start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..binding import InitialState, initial_state, normalize_latent_shape
from ..equilibrium import Equilibrium, fixed_point
from ..errors import JfbError
from ..layer import ImplicitLayer
from ..state import State, StateLayout, first_tensor, take_rows

#: ``solve(x, u0) -> Equilibrium``: one call of a layer or of :func:`jfb.fixed_point` with fixed settings
Solve = Callable[[Any, State], Equilibrium]


def solve_function(model: ImplicitLayer | Callable, latent_shape: Any, settings: dict[str, Any]) -> Solve:
    """``solve(x, u0)`` for an :class:`~jfb.ImplicitLayer` (its own settings) or an operator ``T(u, x)`` with
    :func:`jfb.fixed_point`'s keywords."""
    if isinstance(model, ImplicitLayer):
        if settings or latent_shape is not None:
            given = sorted(settings) + (["latent_shape"] if latent_shape is not None else [])
            raise JfbError(f"a layer solves with its own settings; got {', '.join(given)} (use layer.solving(...))")
        return lambda x, u0: model.solve(x, u0)
    if not callable(model):
        raise JfbError(f"expected a jfb.ImplicitLayer or an operator T(u, x), got {type(model).__name__}")
    return lambda x, u0: fixed_point(model, x, u0=u0, latent_shape=latent_shape, **settings)


def latent_shape_of(model: ImplicitLayer | Callable, latent_shape: Any) -> tuple | None:
    return model.latent_shape if isinstance(model, ImplicitLayer) else normalize_latent_shape(latent_shape)


def start_list(starts: int | Sequence[InitialState]) -> list[InitialState]:
    """``K`` means zeros and K - 1 random starts; a sequence is taken as it is."""
    if isinstance(starts, bool) or not isinstance(starts, (int, Sequence)) or isinstance(starts, str):
        raise JfbError(f"starts must be a number of starts or a list of them, got {starts!r}")
    if isinstance(starts, int):
        if starts < 1:
            raise JfbError(f"starts must be at least 1, got {starts}")
        return ["zeros", *["random"] * (starts - 1)]
    if not starts:
        raise JfbError("starts: an empty list; give at least one start")
    return list(starts)


def initial_states(x: Any, starts: list[InitialState], latent_shape: tuple | None) -> State:
    """The K initial states of the batch ``x`` stacked start by start (rows ``k * B + i``)."""
    states = [initial_state(x, start, latent_shape)[0] for start in starts]
    return concat_states(states)


def concat_states(states: list[State]) -> State:
    first = states[0]
    if isinstance(first, Tensor):
        return torch.cat(states)
    if isinstance(first, (tuple, list)):
        return tuple(concat_states([s[i] for s in states]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: concat_states([s[key] for s in states]) for key in first}
    raise JfbError(f"an initial state must be tensors in tuples and dicts, got {type(first).__name__}")


def repeated(x: Any, k: int) -> Any:
    """The input of K * B rows: the batch taken K times over (:func:`jfb.state.take_rows`; Shared ones kept)."""
    like = first_tensor(x)
    return take_rows(x, torch.arange(like.shape[0], device=like.device).repeat(k))


def batch_size(x: Any) -> int:
    return first_tensor(x).shape[0]


def per_start(t: Tensor, k: int) -> Tensor:
    """A per-row statistic of K * B rows as ``(K, B)``."""
    return t.reshape(k, -1)


def flat_rows(state: State) -> Tensor:
    """Each row of a state as one vector (:class:`jfb.state.StateLayout`'s flattening)."""
    return StateLayout(state).flatten(state)
