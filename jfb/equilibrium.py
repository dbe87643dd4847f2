"""The functional core: :func:`fixed_point` does one solve, attaches one backward mode and returns an
:class:`Equilibrium` (the output, the detached fixed point, the statistics, the regularisers of this call).

:class:`jfb.ImplicitLayer` is the ``nn.Module`` around it; both run :func:`solve_equilibrium`, which reads
top to bottom: prepare the state, solve, attach the backward mode, regularise, return the result.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import transforms
from .backward import BACKWARD_MODES, BackwardMode, BackwardStats, FixedPointMap, GradientCheck, get_backward
from .binding import (
    InitialState,
    bind,
    check_state,
    differentiable_inputs,
    first_problem,
    initial_state,
    normalize_latent_shape,
    one_problem,
)
from .errors import JfbError
from .failures import FUNCTION_CALL_SITES_WARNED, FailureReport, SolvePolicy
from .frozen import as_in_forward, call_state, frozen_running_stats
from .lockstep import all_processes_done, in_lockstep
from .regularizers import evenly_spaced, jacobian_frobenius
from .solvers import SolveOptions, SolveStats, solve_flat
from .solvers.traced import solve_traced
from .state import State, StateLayout
from .status import Status
from .transforms import Boundary


@dataclass
class ImplicitStats:
    """What one call's forward (and, once it ran, backward) pass did.

    ``iterations``, ``abs_residual``, ``rel_residual`` and ``converged`` are per sample;
    ``t_evals`` counts every call of T: the solve, the final application with grad and the
    backward pass's linearisation (Neumann-k with k > 0, IFT); ``j_matvecs`` and the
    ``backward`` statistics are filled in when the backward pass runs; ``regularizer_evals`` counts the
    applications of T for the Jacobian penalty and fixed-point correction.
    """

    forward: SolveStats
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


@dataclass
class Equilibrium:
    """The outcome of one solve, returned by :func:`fixed_point` and :meth:`jfb.ImplicitLayer.solve`.

    Attributes:
        value: the output: with grad enabled the backward mode's attachment (for JFB ``T(u*)`` applied
            with grad), under ``no_grad`` the solver's ``u*``. Same structure as the state.
        fixed_point: ``u*`` detached (for warm starts, diagnostics), same structure as the state.
        stats: per-sample iterations, residuals and converged flags, the status, T evaluations and the
            options used; ``stats.backward`` (J products, the linear solve, the autopilot's ``checks``) is
            filled in when the backward pass runs.
        jacobian_penalty: with ``jacobian_probes > 0``, a training call with grad: the differentiable
            Hutchinson estimate of ``||dT/du (u*)||_F^2 / d`` (add ``weight * penalty`` to the loss); else None.
        correction_states: with ``correction > 0``, a training call with grad: T applied with grad to evenly
            spaced iterates of the solve (a loss on them trains the path to u*); else None.
    """

    value: State
    fixed_point: State
    stats: ImplicitStats
    jacobian_penalty: Tensor | None = None
    correction_states: list[State] | None = None

    @property
    def checks(self) -> list[GradientCheck]:
        """``backward="auto"``: the gradient checks of this call (made when its backward pass runs)."""
        return self.stats.backward.checks


def fixed_point(
    operator: Callable[[Any, Any], Any],
    x: Any,
    *,
    u0: InitialState = None,
    options: SolveOptions | None = None,
    backward: str | BackwardMode = "jfb",
    latent_shape: Any = None,
    on_failure: str = "warn",
    lockstep: bool | None = None,
    jacobian_probes: int = 0,
    correction: int = 0,
    batched: bool = True,
    **settings: Any,
) -> Equilibrium:
    """Solve ``u* = T(u*; x)`` once with ``operator(u, x) -> u`` and attach one backward mode.

    Args:
        operator: an nn.Module or any callable ``(u, x) -> u``; ``u`` a batch-first tensor, or such
            tensors nested in tuples and dicts.
        x: the input: a tensor, or a tuple, list or dict of batch-first tensors.
        u0: the initial state (or a function ``x -> state``); default zeros of ``latent_shape``, else like ``x``.
        options: a :class:`~jfb.SolveOptions`, or its fields as keywords (``solver="anderson", tol=1e-4``).
        backward: a registered name (``"jfb"``, ``"ift:gmres"``, ...) or a :class:`~jfb.BackwardMode`.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when the solve diverges or a backward linear
            solve misses its tolerance (the status is always in ``stats``).
        lockstep: make all processes of a distributed run stop together (None: when T holds collectives).
        jacobian_probes: Hutchinson probes of the Jacobian penalty in :class:`Equilibrium` (0: off).
        correction: iterates of the fixed-point correction in :class:`Equilibrium` (0: off).
        batched: False for one problem without a batch dimension (a state of any shape, a scalar included;
            ``x`` passed to T as it is, never sliced): solved as a batch of one, the states returned unbatched.

    Example::

        eq = jfb.fixed_point(lambda u, x: torch.tanh(0.5 * u + x), x, solver="picard", tol=1e-6)
        loss = eq.value.square().sum()  # eq.stats.iterations, eq.stats.status, eq.fixed_point
    """
    if not callable(operator):
        raise JfbError(f"operator must be an nn.Module or a callable (u, x) -> u, got {type(operator).__name__}")
    if options is not None and settings:
        raise JfbError(f"pass either options= or solve settings as keywords, not both (got {', '.join(settings)})")
    options = options if options is not None else SolveOptions.from_settings(**settings)
    if not isinstance(options, SolveOptions):
        raise JfbError(f"options must be a jfb.SolveOptions, got {type(options).__name__}")
    mode = get_backward(backward)
    check_compatible(mode, options)
    policy = SolvePolicy(on_failure, lockstep, jacobian_probes, correction, warned=FUNCTION_CALL_SITES_WARNED)
    if not batched:
        operator, u0 = one_problem(operator, x, u0, normalize_latent_shape(latent_shape))
        return first_problem(solve_equilibrium(operator, x, u0, options, mode, policy))
    return solve_equilibrium(operator, x, u0, options, mode, policy, normalize_latent_shape(latent_shape))


def solve_equilibrium(
    operator: Callable[[Any, Any], Any],
    x: Any,
    u0: InitialState,
    options: SolveOptions,
    mode: BackwardMode,
    policy: SolvePolicy,
    latent_shape: tuple | None = None,
    regularize: bool = True,
) -> Equilibrium:
    """One call: prepare the state, solve, attach the backward mode, regularise (when ``regularize`` and grad)."""
    if transforms.active():
        transforms.refuse_unsupported(
            mode, BACKWARD_MODES, regularize and bool(policy.jacobian_probes or policy.correction)
        )
    u0, guessed = initial_state(x, u0, latent_shape)
    check_state(u0, guessed)
    layout = StateLayout(u0)
    T = bind(operator, x, layout, u0, guessed)
    regularized = regularize and torch.is_grad_enabled()
    iterates: list[Tensor] | None = [] if regularized and policy.correction else None
    u_star, forward, trace = _solve(operator, mode, policy, T, layout.flatten(u0), options, iterates)
    stats = ImplicitStats(forward, options, mode.stats_type(mode=repr(mode), forward_evals=forward.t_evals))
    report = FailureReport(policy.on_failure, policy.warned)
    report.forward(forward, options)
    if not torch.is_grad_enabled():
        return Equilibrium(layout.unflatten(u_star), layout.unflatten(u_star), stats)
    stats.attached = True
    state = call_state(operator)
    bound = FixedPointMap(
        lambda u: T(u, None),
        lambda: as_in_forward(operator, state),
        options.max_iter,
        report.backward,
        lambda: differentiable_inputs(operator, x),
        trace,
    )
    value = layout.unflatten(mode.attach(bound, u_star, stats.backward))
    result = Equilibrium(value, layout.unflatten(u_star.detach()), stats)
    if regularized:
        _regularize(result, bound, u_star, iterates or [], layout, policy)
    return result


def check_compatible(mode: BackwardMode, options: SolveOptions) -> None:
    """JfbError when the backward mode cannot run after this solve."""
    if mode.forward_solver is not None and options.solver_name != mode.forward_solver:
        raise JfbError(
            f"backward {mode.name!r} uses the iterations of solver {mode.forward_solver!r}; "
            f"pass solver={mode.forward_solver!r}, not {options.solver_name!r}"
        )


def _solve(
    operator: Callable,
    mode: BackwardMode,
    policy: SolvePolicy,
    T: Callable,
    x0: Tensor,
    options: SolveOptions,
    iterates: list[Tensor] | None,
) -> tuple[Tensor, SolveStats, Any]:
    records_graph = mode.records_forward_graph and torch.is_grad_enabled()
    lockstep = in_lockstep(operator, mode, policy.lockstep)
    boundary = Boundary.current()
    if options.freeze_converged and (records_graph or lockstep or boundary):
        options = options.replace(freeze_converged=False)
    with frozen_running_stats(operator) as settle, torch.set_grad_enabled(records_graph), _outside_autocast(x0):
        agree = all_processes_done(x0.device) if lockstep else None
        observe = None if iterates is None else iterates.append
        F = _settling(T, settle)
        if torch.compiler.is_exporting() and options.tol is not None:  # the stop becomes part of the program
            return (*solve_traced(F, x0.detach(), options), None)
        if boundary is None:
            return mode.solve(F, x0 if records_graph else x0.detach(), options, agree, observe)
        if records_graph:  # unroll differentiates its iterations: they stay wrapped, the bookkeeping reads through
            u_star, stats = solve_flat(F, x0, options, agree, observe, peel=boundary.peel)
            return u_star, stats, None
        return boundary.solve_outside(lambda G, u0, seen: mode.solve(G, u0, options, agree, seen), F, x0, observe)


def _outside_autocast(x0: Tensor) -> AbstractContextManager:
    """The solver's arithmetic (mixing, least squares, residuals) in the state's dtype: T itself re-enters the
    caller's autocast region (:func:`jfb.binding.caller_autocast`), the steps between its calls leave it."""
    device = x0.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext()


def _settling(T: Callable, settle: Callable[[], None]) -> Callable:
    """``T`` that settles the freezing of a plain-function operator's modules after its first evaluation."""
    settled = False

    def F(u: Tensor, index: Tensor | None = None) -> Tensor:
        nonlocal settled
        out = T(u, index)
        if not settled:
            settle()
            settled = True
        return out

    return F


def _regularize(
    result: Equilibrium,
    T: FixedPointMap,
    u_star: Tensor,
    iterates: list[Tensor],
    layout: StateLayout,
    policy: SolvePolicy,
) -> None:
    """The Jacobian penalty at ``u*`` and the fixed-point correction states (running statistics untouched)."""
    if policy.jacobian_probes:
        result.jacobian_penalty = jacobian_frobenius(*T.linearization(u_star), policy.jacobian_probes)
        result.stats.regularizer_evals += 1
    if policy.correction:
        with T.frozen():
            states = [layout.unflatten(T(u.detach())) for u in evenly_spaced(iterates, policy.correction)]
        result.correction_states = states
        result.stats.regularizer_evals += len(states)
