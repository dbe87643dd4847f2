"""ImplicitLayer: the ``nn.Module`` that owns an operator ``T(u, x)`` and its solve settings.

Each call is one :func:`jfb.equilibrium.solve_equilibrium`: :meth:`ImplicitLayer.solve` returns its
:class:`~jfb.Equilibrium`, ``forward`` its ``value`` (so the layer drops into ``nn.Sequential``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .backward import BackwardMode, get_backward
from .binding import InitialState, normalize_latent_shape
from .deprecation import LastCallAttributes, warn_deprecated
from .equilibrium import (
    Equilibrium,
    ImplicitStats,
    SolvePolicy,
    check_compatible,
    solve_equilibrium,
)
from .errors import JfbError
from .solvers import SolveOptions
from .solvers.options import option_names
from .state import State

#: the buffer that carries a stateful backward mode's state (the autopilot's level) in the ``state_dict``
BACKWARD_STATE = "backward_state"


class ImplicitLayer(LastCallAttributes, nn.Module):
    """Computes ``u* = T(u*; x)`` with ``operator(u, x) -> u`` and differentiates it.

    Args:
        operator: an nn.Module or any callable ``(u, x) -> u``; ``u`` is a batch-first tensor or a
            tuple or dict of them (nested too), and T must return the same structure and shapes.
        backward: ``"jfb"`` (default), ``"neumann:K"``, ``"phantom:K"``, ``"ift"`` (fixed-point linear solve),
            ``"ift:cg"`` (the paper's CG), ``"ift:gmres"``, ``"unroll"``, ``"auto"``, options as
            ``"ift:cg:tol=1e-8"``, a name added with :func:`jfb.register_backward`, or a
            :class:`~jfb.backward.BackwardMode` instance.
        options: the training-mode :class:`~jfb.SolveOptions`; or give its fields as keywords
            (``solver=``, ``tol=``, ``max_iter=``, ``stop_mode=``, ``freeze_converged=``,
            ``check_every=``, ``keep_history=``, ``divergence_ratio=``, ``solver_options=``).
        eval_options: the solve in eval mode (default: the training options).
        latent_shape: per-sample shape of the state when ``u0`` is not given (a tuple of shapes
            for a tuple state); without it the state starts as zeros shaped like ``x``.
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when a forward solve diverges
            or meets a non-finite value, or a backward linear solve misses its tolerance; the
            status is always in the result's ``stats``.
        lockstep: make all processes of a distributed run stop the solve together (see
            :mod:`jfb.lockstep`). ``None`` (default) decides per call: on when torch.distributed
            runs several processes and the operator holds a SyncBatchNorm in training mode.
            Lock-step solves never freeze converged samples.
        jacobian_probes: ``N > 0``: each training-mode call with grad returns in ``jacobian_penalty`` the
            Hutchinson estimate (``N`` Gaussian probes) of ``||dT/du (u*)||_F^2 / d`` (see :class:`~jfb.Equilibrium`).
        correction: ``K > 0``: each training-mode call with grad returns in ``correction_states`` T applied with
            grad to ``K`` evenly spaced iterates of the solve (fixed-point correction).

    The backward mode is changed by assigning a name or a mode: ``layer.backward = "ift"`` (checked
    against the options at once). Options are changed by assigning a new SolveOptions to ``layer.options`` or
    ``layer.eval_options``, for one call with ``layer(x, solve=dict(tol=1e-6))``, or for a block
    with ``with layer.solving(tol=1e-6): ...``. ``layer.last_stats`` is a convenience: the statistics
    of the last call (a model that calls the layer twice reads each call's own from :meth:`solve`).

    In training mode BatchNorm running statistics inside T are updated once per call, by the final
    application with grad (see :mod:`jfb.frozen`); in eval mode they are used, not updated, and the
    eval options apply.
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
        jacobian_probes: int = 0,
        correction: int = 0,
        jacobian_penalty: int | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if not callable(operator):
            raise JfbError(f"operator must be an nn.Module or a callable (u, x) -> u, got {type(operator).__name__}")
        if options is not None and settings:
            raise JfbError(f"pass either options= or solve settings as keywords, not both (got {', '.join(settings)})")
        if jacobian_penalty is not None:
            warn_deprecated("ImplicitLayer(jacobian_penalty=N)", "ImplicitLayer(jacobian_probes=N)")
            jacobian_probes = jacobian_penalty
        self.operator = operator
        self.options = options if options is not None else SolveOptions.from_settings(**settings)
        self.eval_options = eval_options
        self.backward = backward
        self.policy = SolvePolicy(on_failure, lockstep, jacobian_probes, correction)
        self.latent_shape = normalize_latent_shape(latent_shape)
        self._overrides: list[Mapping[str, Any]] = []
        self.last_stats: ImplicitStats | None = None
        self._last: Equilibrium | None = None  # for the deprecated attributes below, without its output

    @property
    def backward(self) -> BackwardMode:
        """The backward mode; assign a name or a :class:`~jfb.backward.BackwardMode` to change it
        (``layer.backward = "ift"``), validated against the options at once."""
        return self.backward_mode

    def __setattr__(self, name: str, value: Any) -> None:
        if name in option_names():
            raise AttributeError(
                f"ImplicitLayer.{name} cannot be set; assign layer.options = layer.options.replace({name}=...), "
                f"or use layer(x, solve=dict({name}=...)) or `with layer.solving({name}=...)`"
            )
        if name in ("backward", "backward_mode"):
            return self._set_backward(value)
        if name in ("options", "eval_options") and value is not None:
            if not isinstance(value, SolveOptions):
                raise JfbError(f"{name} must be a jfb.SolveOptions, got {type(value).__name__}")
            if "backward_mode" in self.__dict__:
                check_compatible(self.backward_mode, value)
        super().__setattr__(name, value)

    def _set_backward(self, spec: str | BackwardMode) -> None:
        """Build and check the mode, then keep the buffer of its state (if it has one) in step with it."""
        mode = get_backward(spec)
        for options in (self.options, self.eval_options):
            if options is not None:
                check_compatible(mode, options)
        self.__dict__["backward_mode"] = mode
        state = mode.state_dict()
        if state:
            self.register_buffer(BACKWARD_STATE, torch.tensor(list(state.values()), dtype=torch.int64))
        elif BACKWARD_STATE in self._buffers:
            del self._buffers[BACKWARD_STATE]

    def solve(
        self, x: Any, u0: InitialState = None, solve: SolveOptions | Mapping[str, Any] | None = None
    ) -> Equilibrium:
        """One solve of ``T(., x)`` from ``u0``: the :class:`~jfb.Equilibrium` of this call.

        Args:
            x: the input: a tensor, or a tuple, list or dict of batch-first tensors.
            u0: the initial state (a state, or a function ``x -> state``); default zeros of
                ``latent_shape``, else zeros shaped like ``x``.
            solve: options for this call only: a SolveOptions, or a mapping of fields to change.
        """
        options = self.active_options(solve)
        result = solve_equilibrium(
            self.operator, x, u0, options, self.backward_mode, self.policy, self.latent_shape, self.training
        )
        self.last_stats = result.stats
        self._last = dataclasses.replace(result, value=None)
        return result

    def forward(
        self, x: Any, u0: InitialState = None, *, solve: SolveOptions | Mapping[str, Any] | None = None
    ) -> State:
        """``self.solve(x, u0, solve).value``: with grad the backward mode's output, under ``no_grad`` ``u*``."""
        return self.solve(x, u0, solve).value

    def active_options(self, solve: SolveOptions | Mapping[str, Any] | None = None) -> SolveOptions:
        """The options a call makes now: eval or training options, ``solving`` overrides, then ``solve``."""
        base = self.options if self.training or self.eval_options is None else self.eval_options
        options = resolve_call_options(base, self._overrides, solve)
        if options is not self.options and options is not self.eval_options:
            check_compatible(self.backward_mode, options)
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

    @property
    def on_failure(self) -> str:
        return self.policy.on_failure

    @property
    def jacobian_probes(self) -> int:
        return self.policy.jacobian_probes

    @property
    def correction(self) -> int:
        return self.policy.correction

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        if hasattr(self, BACKWARD_STATE):  # the mode's state as it is now, e.g. after an autopilot switch
            self.backward_state.copy_(torch.tensor(list(self.backward_mode.state_dict().values())))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if hasattr(self, BACKWARD_STATE) and prefix + BACKWARD_STATE not in state_dict:
            warnings.warn(
                f"the state_dict has no {prefix + BACKWARD_STATE} (written by torch-jfb 0.1?): backward "
                f"{self.backward_mode!r} keeps the state it has now",
                stacklevel=2,
            )
            state_dict[prefix + BACKWARD_STATE] = self.backward_state
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if hasattr(self, BACKWARD_STATE) and prefix + BACKWARD_STATE in state_dict:
            keys = self.backward_mode.state_dict().keys()
            self.backward_mode.load_state_dict(dict(zip(keys, self.backward_state.tolist(), strict=True)))

    def extra_repr(self) -> str:
        evaluation = "" if self.eval_options is None else f", eval_options={self.eval_options}"
        return f"backward={self.backward_mode!r}, options={self.options}{evaluation}"


def resolve_call_options(base: SolveOptions, changes: list[Mapping[str, Any]], solve: Any) -> SolveOptions:
    """``base`` with the ``solving`` blocks' ``changes``, then this call's ``solve`` (options or changes)."""
    options = base
    for change in changes:
        options = options.replace(**change)
    if isinstance(solve, SolveOptions):
        return solve
    if solve is not None:
        if not isinstance(solve, Mapping):
            raise JfbError(f"solve must be a jfb.SolveOptions or a mapping of fields to change, got {solve!r}")
        options = options.replace(**solve)
    return options
