"""ImplicitLayer: a fixed point ``u* = T(u*; x)`` with a choice of solver and backward mode."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .backward import IFT, BackwardMode, BackwardStats, get_backward
from .backward.base import FixedPointMap
from .frozen import frozen_running_stats
from .lockstep import all_processes_done, distributed_world_size, has_collectives
from .solvers import STOP_MODES, SolverState, get_solver
from .solvers.base import require_integer

ON_FAILURE = ("warn", "raise", "ignore")


class FixedPointError(RuntimeError):
    """Raised (with ``on_failure="raise"``) when a forward solve diverges or produces non-finite values."""


class ConvergenceWarning(RuntimeWarning):
    """Warned (with ``on_failure="warn"``) when a forward solve diverges or produces non-finite values."""


@dataclass
class ImplicitStats:
    """What the last forward (and, once it ran, backward) pass of an ImplicitLayer did.

    ``iterations``, ``abs_residual``, ``rel_residual`` and ``converged`` are per sample;
    ``t_evals`` counts every call of T: the solve, the final application with grad and the
    backward pass's linearisation (Neumann-k with k > 0, IFT); ``j_matvecs`` and the
    ``backward`` statistics are filled in when the backward pass runs.
    """

    forward: SolverState
    backward: BackwardStats = field(default_factory=BackwardStats)
    attached: bool = False

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
    def status(self) -> str:
        return self.forward.status

    @property
    def history(self) -> list[float]:
        return self.forward.history

    @property
    def t_evals(self) -> int:
        return self.forward.t_evals + int(self.attached) + self.backward.t_evals

    @property
    def j_matvecs(self) -> int:
        return self.backward.j_matvecs


class ImplicitLayer(nn.Module):
    """Computes ``u* = T(u*; x)`` with ``operator(u, x) -> u`` and differentiates it.

    Args:
        operator: an nn.Module or callable ``(u, x) -> u`` (same shape as ``u``).
        solver: ``"picard"``, ``"anderson"`` or ``"broyden"``.
        backward: ``"jfb"``, ``"neumann:K"``, ``"ift"`` / ``"ift:cg"`` / ``"ift:fixed_point"`` /
            ``"ift:gmres"``, ``"unroll"``, or a :class:`~jfb.backward.BackwardMode` instance.
        tol: stopping tolerance on the per-sample residual (absolute or relative, ``stop_mode``).
        max_iter: maximum number of T evaluations of the forward solve.
        freeze_converged: stop updating samples that already met the tolerance.
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when the forward solve
            diverges or meets a non-finite value; the status is always in ``last_stats``.
        solver_kwargs: extra options of the solver (e.g. ``memory``, ``beta`` for Anderson).
        lockstep: make all processes of a distributed run stop the solve together (see
            :mod:`jfb.lockstep`). ``None`` (default) decides per call: on when torch.distributed
            runs several processes and the operator holds a SyncBatchNorm in training mode.
            Lock-step solves never freeze converged samples.

    In training mode with grad enabled the output is ``T(u*)`` computed with grad (the paper's
    Figure 3); otherwise it is the solver's ``u*``. BatchNorm running statistics inside T are
    updated once per call, by that final application (see :mod:`jfb.frozen`).
    """

    def __init__(
        self,
        operator: Union[nn.Module, Callable[[Tensor, Any], Tensor]],
        solver: str = "anderson",
        backward: Union[str, BackwardMode] = "jfb",
        tol: float = 1e-4,
        max_iter: int = 50,
        *,
        stop_mode: str = "abs",
        freeze_converged: bool = False,
        on_failure: str = "warn",
        keep_history: bool = False,
        divergence_ratio: float = 1e4,
        solver_kwargs: Optional[dict[str, Any]] = None,
        lockstep: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if not callable(operator):
            raise ValueError(f"operator must be an nn.Module or a callable (u, x) -> u, got {type(operator).__name__}")
        _check_positive_number("tol", tol)
        require_integer("max_iter", max_iter, 1)
        _check_choice("stop_mode", stop_mode, STOP_MODES)
        _check_choice("on_failure", on_failure, ON_FAILURE)
        self.operator = operator
        self.solver_name = solver
        self.solve = get_solver(solver)
        self.backward_mode = _resolve_backward(get_backward(backward), max_iter)
        if self.backward_mode.records_forward_graph and solver != "picard":
            raise ValueError(f"backward 'unroll' backpropagates through Picard iterations; use solver='picard', not {solver!r}")
        self.tol, self.max_iter = tol, max_iter
        self.stop_mode, self.freeze_converged, self.on_failure = stop_mode, freeze_converged, on_failure
        self.keep_history, self.divergence_ratio = keep_history, divergence_ratio
        self.solver_kwargs = dict(solver_kwargs or {})
        self.lockstep = lockstep
        self.last_stats: Optional[ImplicitStats] = None
        self.last_fixed_point: Optional[Tensor] = None

    def forward(self, x: Any, u0: Optional[Tensor] = None) -> Tensor:
        u0 = torch.zeros_like(_first_tensor(x)) if u0 is None else u0
        T = self._bind(x)
        u_star, state = self._solve(T, u0)
        self.last_fixed_point = u_star.detach()  # for warm starts of later solves (no graph attached)
        self.last_stats = stats = ImplicitStats(state, BackwardStats(forward_evals=state.t_evals))
        self._handle_failure(state)
        if not torch.is_grad_enabled():
            return u_star
        stats.attached = True
        bound = FixedPointMap(lambda u: T(u, None), lambda: frozen_running_stats(self.operator))
        return self.backward_mode.attach(bound, u_star, stats.backward)

    def _solve(self, T: Callable, u0: Tensor) -> tuple[Tensor, SolverState]:
        records_graph = self.backward_mode.records_forward_graph and torch.is_grad_enabled()
        lockstep = self._in_lockstep()
        with frozen_running_stats(self.operator), torch.set_grad_enabled(records_graph):
            return self.solve(
                T,
                u0 if records_graph else u0.detach(),
                tol=self.tol,
                max_iter=self.max_iter,
                stop_mode=self.stop_mode,
                freeze_converged=self.freeze_converged and not records_graph and not lockstep,
                divergence_ratio=self.divergence_ratio,
                keep_history=self.keep_history,
                agree=all_processes_done(u0.device) if lockstep else None,
                **self.solver_kwargs,
            )

    def _in_lockstep(self) -> bool:
        if self.lockstep is not None:
            lockstep = self.lockstep and distributed_world_size() > 1
        else:
            lockstep = distributed_world_size() > 1 and has_collectives(self.operator)
        if lockstep and isinstance(self.backward_mode, IFT) and torch.is_grad_enabled():
            raise ValueError(
                "backward 'ift' cannot run with collectives inside the operator (SyncBatchNorm in a distributed run): "
                "its linear solve stops at a different iteration on each process; use backward 'jfb' or 'neumann:K', "
                "or no latent BatchNorm"
            )
        return lockstep

    def _bind(self, x: Any) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
        """T(u, index): the operator with the input bound, on the batch rows ``index``."""

        def T(u: Tensor, index: Optional[Tensor] = None) -> Tensor:
            out = self.operator(u, x if index is None else _take_rows(x, index))
            if out.shape != u.shape:
                raise ValueError(
                    f"operator output shape {tuple(out.shape)} differs from u shape {tuple(u.shape)}; "
                    "T must map u to the same shape (pass u0 with the latent shape if it differs from x)"
                )
            return out

        return T

    def _handle_failure(self, state: SolverState) -> None:
        if state.status not in ("diverged", "non_finite") or self.on_failure == "ignore":
            return
        message = (
            f"fixed-point solve {state.status} after {state.t_evals} T evaluations "
            f"({int((~state.converged).sum())} of {state.converged.numel()} samples not converged)"
        )
        if self.on_failure == "raise":
            raise FixedPointError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)

    def extra_repr(self) -> str:
        return f"solver={self.solver_name!r}, backward={self.backward_mode!r}, tol={self.tol}, max_iter={self.max_iter}"


def _resolve_backward(mode: BackwardMode, max_iter: int) -> BackwardMode:
    """The paper's IFT setting: max linear-solver iterations = max forward depth."""
    if isinstance(mode, IFT) and mode.max_iter is None:
        return IFT(mode.linear_solver, mode.tol, max_iter)
    return mode


def _check_positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def _first_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    raise ValueError(f"x must be a tensor or a tuple of tensors (batch first) when u0 is not given, got {type(x).__name__}")


def _take_rows(x: Any, index: Tensor) -> Any:
    if isinstance(x, Tensor):
        return x[index]
    if isinstance(x, (tuple, list)):
        return type(x)(_take_rows(item, index) for item in x)
    return x
