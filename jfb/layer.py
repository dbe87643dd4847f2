"""ImplicitLayer: a fixed point ``u* = T(u*; x)`` with a choice of solver and backward mode."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backward import IFT, BackwardMode, BackwardStats, FixedPointMap, get_backward
from .errors import ConvergenceWarning, FixedPointError, JfbError, unknown_name
from .frozen import frozen_running_stats
from .lockstep import all_processes_done, distributed_world_size, has_collectives
from .regularizers import evenly_spaced, jacobian_frobenius
from .solvers import SolveOptions, SolverState, solve_flat
from .solvers.options import option_names
from .state import State, StateLayout, describe, first_tensor, take_rows
from .status import Status

ON_FAILURE = ("warn", "raise", "ignore")
#: ``u0`` as given to :meth:`ImplicitLayer.forward`: a state, a function of ``x``, or None
InitialState = None | Tensor | Sequence[Tensor] | Callable[[Any], State]


@dataclass
class ImplicitStats:
    """What the last forward (and, once it ran, backward) pass of an ImplicitLayer did.

    ``iterations``, ``abs_residual``, ``rel_residual`` and ``converged`` are per sample;
    ``t_evals`` counts every call of T: the solve, the final application with grad and the
    backward pass's linearisation (Neumann-k with k > 0, IFT); ``j_matvecs`` and the
    ``backward`` statistics are filled in when the backward pass runs; ``regularizer_evals`` counts the
    applications of T for the Jacobian penalty and fixed-point correction.
    """

    forward: SolverState
    options: SolveOptions
    backward: BackwardStats = field(default_factory=BackwardStats)
    attached: bool = False
    regularizer_evals: int = 0

    @property
    def iterations(self) -> Tensor:
        return self.forward.iterations

    @property
    def abs_residual(self) -> Tensor:
        return self.forward.abs_residual

    @property
    def rel_residual(self) -> Tensor:
        return self.forward.rel_residual

    @property
    def converged(self) -> Tensor:
        return self.forward.converged

    @property
    def status(self) -> Status:
        return self.forward.status

    @property
    def history(self):
        return self.forward.history

    @property
    def t_evals(self) -> int:
        return self.forward.t_evals + int(self.attached) + self.backward.t_evals + self.regularizer_evals

    @property
    def j_matvecs(self) -> int:
        return self.backward.j_matvecs


class ImplicitLayer(nn.Module):
    """Computes ``u* = T(u*; x)`` with ``operator(u, x) -> u`` and differentiates it.

    Args:
        operator: an nn.Module or any callable ``(u, x) -> u``; ``u`` is a batch-first tensor or a
            tuple of them, and T must return the same structure and shapes.
        backward: ``"jfb"`` (default), ``"neumann:K"``, ``"ift"`` (fixed-point linear solve),
            ``"ift:cg"`` (the paper's CG), ``"ift:gmres"``, ``"unroll"``, options as ``"ift:cg:tol=1e-8"``, a name added
            with :func:`jfb.register_backward`, or a :class:`~jfb.backward.BackwardMode` instance.
        options: the training-mode :class:`~jfb.SolveOptions`; or give its fields as keywords
            (``solver=``, ``tol=``, ``max_iter=``, ``stop_mode=``, ``freeze_converged=``,
            ``check_every=``, ``keep_history=``, ``divergence_ratio=``, ``solver_options=``).
        eval_options: the solve in eval mode (default: the training options).
        latent_shape: per-sample shape of the state when ``u0`` is not given (a tuple of shapes
            for a tuple state); without it the state starts as zeros shaped like ``x``.
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when a forward solve diverges
            or meets a non-finite value, or a backward linear solve misses its tolerance; the
            status is always in ``last_stats``.
        lockstep: make all processes of a distributed run stop the solve together (see
            :mod:`jfb.lockstep`). ``None`` (default) decides per call: on when torch.distributed
            runs several processes and the operator holds a SyncBatchNorm in training mode.
            Lock-step solves never freeze converged samples.
        jacobian_penalty: ``N > 0``: after each training-mode call with grad, ``layer.jacobian_penalty`` is the
            Hutchinson estimate (``N`` Gaussian probes) of ``||dT/du (u*)||_F^2 / d``, d the state size per
            sample, averaged over the batch: a differentiable scalar to add to the loss with a weight.
        correction: ``K > 0``: after each training-mode call with grad, ``layer.correction_states`` holds T
            applied with grad to ``K`` evenly spaced iterates of the solve (fixed-point correction: a loss on
            them trains the path to u*, not only its end); fewer when the solve was shorter.

    Options are changed by assigning a new SolveOptions to ``layer.options`` or
    ``layer.eval_options``, for one call with ``layer(x, solve=dict(tol=1e-6))``, or for a block
    with ``with layer.solving(tol=1e-6): ...``.

    Output: with grad enabled (training or eval mode) the output is the backward mode's
    attachment, for JFB ``T(u*)`` computed with grad (the paper's Figure 3); under ``no_grad`` it
    is the solver's ``u*``. In training mode BatchNorm running statistics inside T are updated
    once per call, by that final application (see :mod:`jfb.frozen`); in eval mode they are used,
    not updated, and the eval options apply.
    """

    def __init__(
        self,
        operator: nn.Module | Callable[[Any, Any], Any],
        backward: str | BackwardMode = "jfb",
        *,
        options: SolveOptions | None = None,
        eval_options: SolveOptions | None = None,
        latent_shape: Sequence[Any] | None = None,
        on_failure: str = "warn",
        lockstep: bool | None = None,
        jacobian_penalty: int = 0,
        correction: int = 0,
        **settings: Any,
    ) -> None:
        super().__init__()
        if not callable(operator):
            raise JfbError(f"operator must be an nn.Module or a callable (u, x) -> u, got {type(operator).__name__}")
        if options is not None and settings:
            raise JfbError(f"pass either options= or solve settings as keywords, not both (got {', '.join(settings)})")
        if on_failure not in ON_FAILURE:
            raise unknown_name("on_failure", on_failure, ON_FAILURE)
        self.operator = operator
        self.backward_mode = get_backward(backward)
        self.options = options if options is not None else SolveOptions.from_settings(**settings)
        self.eval_options = eval_options
        self.latent_shape = _latent_shape(latent_shape)
        self.on_failure, self.lockstep = on_failure, lockstep
        for name, value in (("jacobian_penalty", jacobian_penalty), ("correction", correction)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise JfbError(f"{name} must be an integer >= 0 (probes / iterates; 0 = off), got {value!r}")
        self.jacobian_probes, self.correction = jacobian_penalty, correction
        self.jacobian_penalty: Tensor | None = None
        self.correction_states: list[State] = []
        self._overrides: list[dict[str, Any]] = []
        self.last_stats: ImplicitStats | None = None
        self.last_fixed_point: State | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in option_names():
            raise AttributeError(
                f"ImplicitLayer.{name} cannot be set; assign layer.options = layer.options.replace({name}=...), "
                f"or use layer(x, solve=dict({name}=...)) or `with layer.solving({name}=...)`"
            )
        if name in ("options", "eval_options") and value is not None:
            if not isinstance(value, SolveOptions):
                raise JfbError(f"{name} must be a jfb.SolveOptions, got {type(value).__name__}")
            self._check_compatible(value)
        super().__setattr__(name, value)

    def _check_compatible(self, options: SolveOptions) -> None:
        if self.backward_mode.records_forward_graph and options.solver_name != "picard":
            raise JfbError(
                "backward 'unroll' backpropagates through Picard iterations; "
                f"use solver='picard', not {options.solver_name!r}"
            )

    def active_options(self, solve: SolveOptions | Mapping[str, Any] | None = None) -> SolveOptions:
        """The options a call makes now: eval or training options, ``solving`` overrides, then ``solve``."""
        options = self.options if self.training or self.eval_options is None else self.eval_options
        for changes in self._overrides:
            options = options.replace(**changes)
        if isinstance(solve, SolveOptions):
            options = solve
        elif solve is not None:
            options = options.replace(**solve)
        if options is not self.options and options is not self.eval_options:
            self._check_compatible(options)
        return options

    @contextmanager
    def solving(self, **changes: Any) -> Iterator[ImplicitLayer]:
        """Solve with ``changes`` to the options (training and eval) inside the block; validated on entry."""
        self.options.replace(**changes)
        self._overrides.append(changes)
        try:
            yield self
        finally:
            self._overrides.pop()

    def forward(
        self, x: Any, u0: InitialState = None, *, solve: SolveOptions | Mapping[str, Any] | None = None
    ) -> State:
        """The fixed point of ``T(., x)`` from ``u0`` (see the class docstring for what is returned).

        Args:
            x: the input: a tensor, or a tuple, list or dict of batch-first tensors.
            u0: the initial state (a state, or a function ``x -> state``); default zeros of
                ``latent_shape``, else zeros shaped like ``x``.
            solve: options for this call only: a SolveOptions, or a mapping of fields to change.
        """
        options = self.active_options(solve)
        u0, guessed = self._initial_state(x, u0)
        layout = StateLayout(u0)
        T = self._bind(x, layout, u0, guessed)
        regularized = self.training and torch.is_grad_enabled()
        iterates: list[Tensor] | None = [] if regularized and self.correction else None
        u_star, state = self._solve(T, layout.flatten(u0), options, None if iterates is None else iterates.append)
        self.last_fixed_point = layout.unflatten(u_star.detach())  # for warm starts of later solves
        self.last_stats = stats = ImplicitStats(state, options, BackwardStats(forward_evals=state.t_evals))
        self.jacobian_penalty, self.correction_states = None, []
        self._handle_forward_failure(state)
        if not torch.is_grad_enabled():
            return layout.unflatten(u_star)
        stats.attached = True
        bound = FixedPointMap(
            lambda u: T(u, None),
            lambda: frozen_running_stats(self.operator),
            options.max_iter,
            self._handle_backward_failure,
            lambda: self._differentiable_inputs(x),
        )
        out = layout.unflatten(self.backward_mode.attach(bound, u_star, stats.backward))
        if regularized:
            self._regularize(bound, u_star, iterates or [], layout, stats)
        return out

    def _regularize(
        self, T: FixedPointMap, u_star: Tensor, iterates: list[Tensor], layout: StateLayout, stats: ImplicitStats
    ) -> None:
        """The Jacobian penalty at ``u*`` and the fixed-point correction states (running statistics untouched)."""
        if self.jacobian_probes:
            self.jacobian_penalty = jacobian_frobenius(*T.linearization(u_star), self.jacobian_probes)
            stats.regularizer_evals += 1
        if self.correction:
            with T.frozen():
                self.correction_states = [
                    layout.unflatten(T(u.detach())) for u in evenly_spaced(iterates, self.correction)
                ]
            stats.regularizer_evals += len(self.correction_states)

    def _differentiable_inputs(self, x: Any) -> list[Tensor]:
        """The operator's parameters and the tensors of ``x`` that require grad."""
        parameters = self.operator.parameters() if isinstance(self.operator, nn.Module) else ()
        tensors = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else (x,)
        return [t for t in (*parameters, *tensors) if isinstance(t, Tensor) and t.requires_grad]

    def _initial_state(self, x: Any, u0: InitialState) -> tuple[State, bool]:
        """``(u0, guessed)``; ``guessed``: zeros shaped like x, for want of a latent shape."""
        if callable(u0) and not isinstance(u0, Tensor):
            u0 = u0(x)
        if u0 is not None:
            return (tuple(u0) if isinstance(u0, list) else u0), False
        like = first_tensor(x)
        if self.latent_shape is None:
            return torch.zeros_like(like), True
        if all(isinstance(d, int) for d in self.latent_shape):
            return like.new_zeros((like.shape[0], *self.latent_shape)), False
        return tuple(like.new_zeros((like.shape[0], *shape)) for shape in self.latent_shape), False

    def _solve(
        self, T: Callable, x0: Tensor, options: SolveOptions, observe: Callable[[Tensor], None] | None = None
    ) -> tuple[Tensor, SolverState]:
        records_graph = self.backward_mode.records_forward_graph and torch.is_grad_enabled()
        lockstep = self._in_lockstep()
        if options.freeze_converged and (records_graph or lockstep):
            options = options.replace(freeze_converged=False)
        with frozen_running_stats(self.operator), torch.set_grad_enabled(records_graph):
            agree = all_processes_done(x0.device) if lockstep else None
            return solve_flat(T, x0 if records_graph else x0.detach(), options, agree, observe)

    def _in_lockstep(self) -> bool:
        if self.lockstep is not None:
            lockstep = self.lockstep and distributed_world_size() > 1
        else:
            lockstep = distributed_world_size() > 1 and has_collectives(self.operator)
        if lockstep and isinstance(self.backward_mode, IFT) and torch.is_grad_enabled():
            raise JfbError(
                "backward 'ift' cannot run with collectives inside the operator (SyncBatchNorm in a distributed run): "
                "its linear solve stops at a different iteration on each process; use backward 'jfb' or 'neumann:K', "
                "or no latent BatchNorm"
            )
        return lockstep

    def _bind(self, x: Any, layout: StateLayout, u0: State, guessed: bool) -> Callable[[Tensor, Tensor | None], Tensor]:
        """T on flat states, ``T(u, index)`` on the batch rows ``index``; shapes checked on every call."""

        # only the first call on a guessed u0 can fail for its shape; in a multi-process run a failure may
        # be a peer's (a collective inside T timing out), so the error is passed on as it is
        shapes_unchecked = guessed and distributed_world_size() == 1
        precision = _caller_autocast(first_tensor(u0).device.type)

        def T(u: Tensor, index: Tensor | None = None) -> Tensor:
            nonlocal shapes_unchecked
            state = layout.unflatten(u)
            try:
                with precision():
                    out = self.operator(state, x if index is None else take_rows(x, index))
            except RuntimeError as error:
                if not shapes_unchecked:
                    raise
                raise JfbError(
                    f"the operator failed on u0 = zeros shaped like x {describe(x)} ({error}); if the state has "
                    "another shape, pass latent_shape= to the layer or u0= to the call"
                ) from error
            if not layout.matches(out):
                raise JfbError(
                    f"T(u0) has shape {describe(out)} but u0 has {describe(u0)} (x: {describe(x)}); "
                    "T must return a state of u's shape: pass u0= or latent_shape= when the state is not shaped like x"
                )
            shapes_unchecked = False
            return layout.flatten(out).to(u.dtype)

        return T

    def _handle_forward_failure(self, state: SolverState) -> None:
        if state.status.failed:
            self._fail(
                f"fixed-point solve {state.status} after {state.t_evals} T evaluations "
                f"({int((~state.converged).sum())} of {state.converged.numel()} samples not converged)"
            )

    def _handle_backward_failure(self, name: str, stats: BackwardStats) -> None:
        if stats.status != Status.CONVERGED:
            self._fail(
                f"backward linear solve ({name}) {stats.status} after {stats.iterations} iterations, "
                f"relative residual {stats.relative_residual:.3g}"
            )

    def _fail(self, message: str) -> None:
        if self.on_failure == "raise":
            raise FixedPointError(message)
        if self.on_failure == "warn":
            warnings.warn(message, ConvergenceWarning, stacklevel=4)

    def extra_repr(self) -> str:
        evaluation = "" if self.eval_options is None else f", eval_options={self.eval_options}"
        return f"backward={self.backward_mode!r}, options={self.options}{evaluation}"


def _caller_autocast(device_type: str) -> Callable[[], AbstractContextManager]:
    """The autocast region the layer is called in, to re-enter around every application of T.

    Under ``torch.autocast`` T runs in low precision while the state stays in its own dtype (float32):
    the solver's residuals and mixing are not rounded to bf16/fp16, and the backward pass, which runs
    outside the caller's region, applies T in the same precision as the forward pass did.
    """
    if not torch.is_autocast_enabled(device_type):
        return nullcontext
    dtype, cache = torch.get_autocast_dtype(device_type), torch.is_autocast_cache_enabled()
    return lambda: torch.autocast(device_type, dtype=dtype, cache_enabled=cache)


def _latent_shape(shape: Sequence[Any] | None) -> tuple | None:
    """A shape as a tuple of ints, or for a tuple state a tuple of such shapes."""
    if shape is None:
        return None
    try:
        if all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            return tuple(shape)
        return tuple(_latent_shape(part) for part in shape)
    except TypeError:
        raise JfbError(f"latent_shape must be a shape like (64,) or a tuple of shapes, got {shape!r}") from None
