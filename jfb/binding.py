"""Binding an operator ``T(u, x)`` to one input: the initial state, T on flat states, shape checks, autocast.

What the solvers and backward modes see is ``T(u_flat)`` on a ``(batch, features)`` matrix (see
:mod:`jfb.state`); this module builds it once per call from the user's operator, input and ``u0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from .errors import JfbError, unknown_name
from .lockstep import distributed_world_size
from .state import (
    Shared,
    State,
    StateLayout,
    describe,
    first_tensor,
    map_state,
    state_leaves,
    take_rows,
    without_shared,
)

#: what a state may hold: the solvers' norms, mixing and least squares are real floating-point arithmetic
STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: ``u0`` as given to a solve: a state, a function of ``x``, the name of a kind of initial state, or None (zeros)
InitialState = None | str | Tensor | Sequence[Tensor] | Callable[[Any], State]
#: the kinds of initial state a solve can start from by name
INITIAL_STATES = ("zeros", "random", "mixed")
#: the layer call (one solve and every application of T its backward pass makes) T is being evaluated for
CURRENT_CALL: ContextVar[object | None] = ContextVar("jfb_current_call", default=None)
#: T on flat states; ``T(u, index)`` evaluates the batch rows ``index`` only
FlatOperator = Callable[[Tensor, Tensor | None], Tensor]


def initial_state(x: Any, u0: InitialState, latent_shape: tuple | None) -> tuple[State, bool]:
    """``(u0, guessed)``; ``guessed``: shaped like x, for want of a latent shape.

    ``u0`` may name a kind of initial state (:data:`INITIAL_STATES`): ``"zeros"`` (the default), ``"random"``
    (standard normal entries) or ``"mixed"`` (standard normal on a random half of the entries, zeros elsewhere,
    as torchdeq's ``mixed_init``: training from varied starts makes the fixed point the model learns less
    dependent on where the solve starts). Random draws use torch's global generator (seeded runs repeat).
    """
    if callable(u0) and not isinstance(u0, Tensor):
        u0 = u0(x)
    if u0 is not None and not isinstance(u0, str):
        return (map_state(lambda t: t, u0) if isinstance(u0, list) else u0), False
    kind = u0 or "zeros"
    if kind not in INITIAL_STATES:
        raise unknown_name("kind of initial state u0 =", kind, INITIAL_STATES)
    like = first_tensor(x)
    if latent_shape is None:
        return _filled(torch.zeros_like(like), kind), True
    if all(isinstance(d, int) for d in latent_shape):
        return _filled(like.new_zeros((like.shape[0], *latent_shape)), kind), False
    return tuple(_filled(like.new_zeros((like.shape[0], *shape)), kind) for shape in latent_shape), False


def _filled(zeros: Tensor, kind: str) -> Tensor:
    if kind == "zeros":
        return zeros
    noise = torch.randn_like(zeros)
    return noise if kind == "random" else noise * torch.empty_like(zeros).bernoulli_(0.5)


def check_state(state: State, guessed: bool) -> None:
    """JfbError naming the argument unless the initial state is one or more floating-point, batch-first tensors
    with at least one sample and one feature each."""
    name = "x (the state starts as zeros shaped like it; pass u0= or latent_shape= otherwise)" if guessed else "u0"
    for t in state_leaves(state):
        if not isinstance(t, Tensor) or t.dim() < 1:
            raise JfbError(
                f"{name}: a state must be a batch-first tensor, or such tensors in tuples and dicts, "
                f"got {describe(state)}"
            )
        if t.dtype not in STATE_DTYPES:
            choices = ", ".join(str(d).removeprefix("torch.") for d in STATE_DTYPES)
            raise JfbError(f"{name} must be floating point ({choices}), got {str(t.dtype).removeprefix('torch.')}")
        if t.shape[0] == 0 or math.prod(t.shape[1:]) == 0:
            raise JfbError(f"{name} needs at least one sample and one feature per sample, got shape {describe(t)}")


def bind(operator: Callable, x: Any, layout: StateLayout, u0: State, guessed: bool) -> FlatOperator:
    """T on flat states, ``T(u, index)`` on the batch rows ``index``; shapes checked on every call.

    A failure of the first call is an argument problem (the state's shape or type): a JfbError naming u0 and x,
    the operator's own error chained to it. A later failure is passed on as it is, with a note of where it
    happened; so is every failure in a multi-process run, where it may be a peer's (a collective timing out).
    """
    first_call, dtypes_unchecked = distributed_world_size() == 1, True
    precision = caller_autocast(first_tensor(u0).device.type)
    # what per-call modules (jfb.nn: dropout masks, normalised weights) key their state on; set only for an operator
    # that may hold one, and not in an export (eval mode, where they keep no state; dynamo cannot trace a ContextVar)
    call = object() if reads_current_call(operator) and not torch.compiler.is_exporting() else None
    unshare = without_shared if _holds_shared(x) else _unchanged
    flat = layout.is_flat  # one (batch, features) tensor: T's input and output are the flat states themselves

    def T(u: Tensor, index: Tensor | None = None) -> Tensor:
        nonlocal first_call, dtypes_unchecked
        state = u if flat else layout.unflatten(u)
        token = None if call is None else CURRENT_CALL.set(call)
        try:
            if precision is None:
                out = operator(state, unshare(x if index is None else take_rows(x, index)))
            else:
                with precision():
                    out = operator(state, unshare(x if index is None else take_rows(x, index)))
        except Exception as error:
            if not first_call:
                error.add_note(f"jfb: raised by the operator on u {describe(state)}, x {describe(x)}")
                raise
            raise JfbError(_first_call_failure(x, u0, guessed, error)) from error
        finally:
            if token is not None:
                CURRENT_CALL.reset(token)
        checked = first_call or not torch.compiler.is_compiling()  # (a traced loop body: checked on the first call)
        if checked and not (  # broadcasting against x can change the batch
            isinstance(out, Tensor) and out.shape == u.shape if flat else layout.matches(out, batch=u.shape[0])
        ):
            raise JfbError(
                f"T(u0) has shape {describe(out)} but u0 has {describe(u0)} (x: {describe(x)}); "
                "T must return a state of u's shape: pass u0= or latent_shape= when the state is not shaped like x"
            )
        if dtypes_unchecked:
            _check_output_dtypes(out, u0)
        if first_call or dtypes_unchecked:  # (once: a traced loop body may not change the closure)
            first_call = dtypes_unchecked = False
        out = out if flat else layout.flatten(out)
        return out if out.dtype == u.dtype else out.to(u.dtype)

    return T


def _holds_shared(x: Any) -> bool:
    if isinstance(x, (tuple, list)):
        return any(_holds_shared(item) for item in x)
    if isinstance(x, dict):
        return any(_holds_shared(item) for item in x.values())
    return isinstance(x, Shared)


def _unchanged(x: Any) -> Any:
    return x


def reads_current_call(operator: Callable) -> bool:
    """Whether the operator may hold a module that keys its state on :data:`CURRENT_CALL` (one marked
    ``reads_current_call``; any plain function may call one)."""
    if not isinstance(operator, nn.Module):
        return True
    return any(getattr(module, "reads_current_call", False) for module in operator.modules())


def _check_output_dtypes(out: State, u0: State) -> None:
    """T may compute in lower precision (autocast), never in complex or integer numbers: those would be cast."""
    for t in state_leaves(out):
        if t.dtype not in STATE_DTYPES:
            raise JfbError(
                f"T(u0) returned {str(t.dtype).removeprefix('torch.')} values for a state of "
                f"{describe(u0)}; T must return real floating-point tensors (complex or integer values would be cast)"
            )


def _first_call_failure(x: Any, u0: State, guessed: bool, error: Exception) -> str:
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if guessed:
        return (
            f"the operator failed on u0 = zeros shaped like x {describe(x)} ({reason}); if the state has "
            "another shape, pass latent_shape= to the layer or u0= to the call"
        )
    return (
        f"the operator failed on its first call T(u0, x) with u0 {describe(u0)} and x {describe(x)} ({reason}); "
        "u0 must have the structure and shapes of the state T returns"
    )


def caller_autocast(device_type: str) -> Callable[[], AbstractContextManager] | None:
    """The autocast region the solve is called in, to re-enter around every application of T.

    Under ``torch.autocast`` T runs in low precision while the state stays in its own dtype (float32):
    the solver's residuals and mixing are not rounded to bf16/fp16, and the backward pass, which runs
    outside the caller's region, applies T in the same precision as the forward pass did.
    """
    if not torch.is_autocast_enabled(device_type):
        return None
    dtype, cache = torch.get_autocast_dtype(device_type), torch.is_autocast_cache_enabled()
    return lambda: torch.autocast(device_type, dtype=dtype, cache_enabled=cache)


def differentiable_inputs(operator: Callable, x: Any) -> list[Tensor]:
    """The operator's parameters and the tensors of ``x`` that require grad."""
    parameters = operator.parameters() if isinstance(operator, nn.Module) else ()
    x = without_shared(x)
    tensors = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else (x,)
    return [t for t in (*parameters, *tensors) if isinstance(t, Tensor) and t.requires_grad]


def normalize_latent_shape(shape: Sequence[Any] | None) -> tuple | None:
    """A shape as a tuple of ints, or for a tuple state a tuple of such shapes."""
    if shape is None:
        return None
    try:
        if all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            return tuple(shape)
        return tuple(normalize_latent_shape(part) for part in shape)
    except TypeError:
        raise JfbError(f"latent_shape must be a shape like (64,) or a tuple of shapes, got {shape!r}") from None


def one_problem(
    operator: Callable[[Any, Any], Any], x: Any, u0: InitialState, latent_shape: Any
) -> tuple[Callable[[Any, Any], Any], State]:
    """An unbatched problem as a batch of one: ``T`` and ``u0`` with a leading dimension of 1 (``x`` is passed to
    ``T`` as it is: shared, never sliced)."""
    if callable(u0) and not isinstance(u0, Tensor):
        u0 = u0(x)
    if isinstance(u0, str):
        raise JfbError(f"u0={u0!r}: a kind of initial state is drawn per sample; pass a state for one problem")
    if u0 is None:
        like = first_tensor(x)
        shapes = latent_shape if latent_shape is not None else tuple(like.shape)
        tuple_state = bool(shapes) and not all(isinstance(d, int) for d in shapes)
        u0 = tuple(like.new_zeros(s) for s in shapes) if tuple_state else like.new_zeros(shapes)

    def batched(u: State, x: Any) -> State:
        return map_state(lambda t: t[None], operator(map_state(lambda t: t[0], u), x))

    return batched, map_state(lambda t: t[None], u0)


def first_problem(result: Any) -> Any:
    """An :class:`~jfb.Equilibrium` of a batch of one with its states unbatched (statistics stay per sample)."""
    return dataclasses.replace(
        result, value=map_state(lambda t: t[0], result.value), fixed_point=map_state(lambda t: t[0], result.fixed_point)
    )
