"""States of any shape: one tensor or a tuple of tensors, each batch-first, seen by the solvers
and the backward modes as one ``(batch, features)`` matrix.

Norms, inner products and Anderson/Broyden mixing do not depend on the order of the features, so
each part is flattened in its own memory order: for a single NCHW or channels-last tensor both
directions are views (the operator keeps receiving channels-last inputs, and nothing is copied);
a tuple is concatenated (one copy per flatten).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import JfbError

#: a batch-first tensor, or such tensors nested in tuples and dicts
State = Tensor | tuple[Any, ...] | dict[str, Any]


class _Part:
    """Flattening of one batch-first tensor in its memory order."""

    def __init__(self, like: Tensor) -> None:
        self.shape = tuple(like.shape[1:])
        self.size = math.prod(self.shape)  # (no int(): a traced length stays symbolic)
        self.channels_last = (
            like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last)
        )
        self.flat = len(self.shape) == 1  # (batch, features) already: both directions are the tensor itself

    def flatten(self, t: Tensor) -> Tensor:
        if self.flat and t.dim() == 2:
            return t
        return (t.permute(0, 2, 3, 1) if self.channels_last else t).reshape(t.shape[0], -1)

    def unflatten(self, flat: Tensor) -> Tensor:
        if self.flat:
            return flat
        if self.channels_last:
            channels, height, width = self.shape
            return flat.view(-1, height, width, channels).permute(0, 3, 1, 2)
        return flat.view(-1, *self.shape)


def state_leaves(state: Any) -> list[Any]:
    """The leaves of a state nested in tuples, lists and dicts (a dict's in its key order), in order."""
    if isinstance(state, (tuple, list)):
        return [leaf for item in state for leaf in state_leaves(item)]
    if isinstance(state, dict):
        return [leaf for key in state for leaf in state_leaves(state[key])]
    return [state]


def map_state(f: Callable[[Tensor], Tensor], state: Any) -> Any:
    """``f`` applied to every tensor of a nested state, the structure kept (lists become tuples)."""
    if isinstance(state, (tuple, list)):
        return tuple(map_state(f, item) for item in state)
    if isinstance(state, dict):
        return {key: map_state(f, value) for key, value in state.items()}
    return f(state)


def _structure(state: Any) -> Any:
    """What a state's nesting is, comparable with ``==`` (tuples and lists alike; dicts by their keys)."""
    if isinstance(state, (tuple, list)):
        return ("tuple", tuple(_structure(item) for item in state))
    if isinstance(state, dict):
        return ("dict", tuple((key, _structure(value)) for key, value in state.items()))
    return None


def _rebuild(structure: Any, leaves: Iterator[Tensor]) -> Any:
    if structure is None:
        return next(leaves)
    kind, items = structure
    if kind == "tuple":
        return tuple(_rebuild(item, leaves) for item in items)
    return {key: _rebuild(item, leaves) for key, item in items}


class StateLayout:
    """Flattens states shaped like ``like`` (a tensor, or tensors nested in tuples and dicts) to
    ``(batch, features)`` and back; checks shapes."""

    def __init__(self, like: State) -> None:
        self.structure = _structure(like)
        tensors = state_leaves(like)
        if not tensors or not all(isinstance(t, Tensor) and t.dim() >= 1 for t in tensors):
            raise JfbError(
                f"a state must be a batch-first tensor, or such tensors in tuples and dicts, got {describe(like)}"
            )
        if any(t.shape[0] != tensors[0].shape[0] for t in tensors[1:]):  # (no set: a traced batch size is unhashable)
            raise JfbError(f"the tensors of a state must share the batch size, got {describe(like)}")
        self.parts = [_Part(t) for t in tensors]
        self.sizes = [p.size for p in self.parts]

    @property
    def is_flat(self) -> bool:
        """Whether states are single ``(batch, features)`` tensors, which flatten to themselves."""
        return self.structure is None and self.parts[0].flat

    @property
    def is_tuple(self) -> bool:
        """Whether the state is more than one tensor (nested in tuples or dicts)."""
        return self.structure is not None

    @property
    def features(self) -> int:
        return sum(self.sizes)

    def flatten(self, state: State) -> Tensor:
        if not self.is_tuple:
            return self.parts[0].flatten(state)
        return torch.cat([p.flatten(t) for p, t in zip(self.parts, state_leaves(state))], dim=1)

    def unflatten(self, flat: Tensor) -> State:
        if not self.is_tuple:
            return self.parts[0].unflatten(flat)
        chunks = (p.unflatten(chunk) for p, chunk in zip(self.parts, flat.split(self.sizes, dim=1)))
        return _rebuild(self.structure, chunks)

    def matches(self, state: Any, batch: int | None = None) -> bool:
        """Whether ``state`` has this structure and these per-sample shapes (and ``batch`` samples, when given)."""
        if self.structure is None:  # (the common case, checked on every evaluation of T: kept short)
            shape = self.parts[0].shape
            return (
                isinstance(state, Tensor)
                and state.dim() == len(shape) + 1
                and state.shape[1:] == shape
                and (batch is None or state.shape[0] == batch)
            )
        if _structure(state) != self.structure:
            return False
        return all(
            isinstance(t, Tensor) and tuple(t.shape[1:]) == p.shape and (batch is None or t.shape[0] == batch)
            for p, t in zip(self.parts, state_leaves(state))
        )


def describe(value: Any) -> str:
    """Shapes of a state or input for error messages: ``(2, 3)``, ``((2, 3), (2, 4, 4))``, ``dict``."""
    if isinstance(value, Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def first_tensor(x: Any) -> Tensor:
    """The first tensor of an input (a tensor, a tuple/list or a dict of them)."""
    if isinstance(x, Tensor):
        return x
    values: Sequence[Any] = list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, (tuple, list)) else []
    for value in values:
        if isinstance(value, Tensor):
            return value
    raise JfbError(f"x must be a tensor, or a tuple or dict of batch-first tensors, got {describe(x)}")


@dataclass(frozen=True)
class Shared:
    """An argument in ``x`` shared by every sample (a matrix, a table): T receives ``value`` itself, never sliced
    to the samples still iterating (``freeze_converged``) and never taken for the batch: ``jfb.Shared(A)``."""

    value: Any


def without_shared(x: Any) -> Any:
    """``x`` as T receives it: every :class:`Shared` replaced by its value."""
    if isinstance(x, Shared):
        return x.value
    if isinstance(x, (tuple, list)):
        return type(x)(without_shared(item) for item in x)
    if isinstance(x, dict):
        return {key: without_shared(item) for key, item in x.items()}
    return x


def take_rows(x: Any, index: Tensor) -> Any:
    """The samples ``index`` of an input: every tensor inside tuples, lists and dicts is indexed (a
    :class:`Shared` argument is not)."""
    if isinstance(x, Tensor):
        return x[index]
    if isinstance(x, (tuple, list)):
        return type(x)(take_rows(item, index) for item in x)
    if isinstance(x, dict):
        return {key: take_rows(item, index) for key, item in x.items()}
    return x


def per_sample_norm(v: Tensor) -> Tensor:
    """2-norm over all non-batch dimensions (no copy for channels-last tensors)."""
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim()))) if v.dim() > 1 else v.abs()
