"""``SolveOptions``: the one way forward-solve settings travel (TOML/CLI -> TrainConfig -> layer)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import JfbError, unknown_name
from ..settings import setting
from .base import SOLVERS, Solver, make_solver, require_integer, require_number

STOP_MODES = ("abs", "rel")


@dataclass(frozen=True)
class SolveOptions:
    """How a fixed point is found; validated when built, immutable (use :meth:`replace`).

    Attributes:
        solver: a registered name (``"picard"``, ``"anderson"``, ``"broyden"``, or one added with
            :func:`jfb.register_solver`) or a :class:`jfb.solvers.Solver` instance.
        tol: stopping tolerance on each sample's residual; ``None`` runs a **fixed depth** of exactly
            ``max_iter`` evaluations with no residual computed inside the loop (status ``fixed_depth``;
            the reported residual is that of the last step, computed once at the end).
        max_iter: the most T evaluations (the depth, when ``tol`` is None).
        stop_mode: ``"abs"``: ``||T(u) - u|| <= tol``; ``"rel"``: ``||T(u) - u|| / ||T(u)|| <= tol``.
        freeze_converged: stop evaluating samples that met the tolerance (saves work on mixed
            batches; changes batch statistics if T normalises over the batch).
        divergence_ratio: a residual this many times its best so far counts as divergence.
        check_every: decide on stopping (one host synchronisation) every this many iterations.
            1 is fastest on CPU (measured); on a GPU a larger value keeps the launch queue full at
            the price of up to ``check_every - 1`` extra iterations.
        keep_history: keep every iteration's per-sample residuals (``SolveStats.history``).
        solver_options: options of a named solver, e.g. ``{"memory": 5}`` for Anderson.
    """

    solver: str | Solver = setting("anderson", "forward solver: picard, anderson, broyden or a registered name")
    tol: float | None = setting(1e-4, "stopping tolerance per sample; none: a fixed depth of exactly max_iter")
    max_iter: int = setting(50, "most T evaluations per solve (the depth when tol is none)")
    stop_mode: str = setting("abs", "abs: ||T(u) - u|| <= tol; rel: divided by ||T(u)||", choices=STOP_MODES)
    freeze_converged: bool = setting(False, "stop evaluating samples that met the tolerance")
    divergence_ratio: float = setting(1e4, "a residual this many times its best so far counts as divergence")
    check_every: int = setting(1, "decide on stopping every N iterations (one host synchronisation)")
    keep_history: bool = setting(False, "keep every iteration's per-sample residuals in the statistics")
    solver_options: Mapping[str, Any] = setting(
        help="options of the named solver, e.g. memory=3,beta=0.9 for anderson", default_factory=dict
    )
    #: the solver instance this resolves to
    method: Solver = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tol is not None:
            require_number("tol", self.tol, 0, hint=', or None ("none" in TOML and flags) for a fixed depth')
        require_integer("max_iter", self.max_iter, 1)
        require_integer("check_every", self.check_every, 1)
        if self.stop_mode not in STOP_MODES:
            raise unknown_name("stop_mode", self.stop_mode, STOP_MODES)
        require_number("divergence_ratio", self.divergence_ratio, 1)
        for name in ("freeze_converged", "keep_history"):
            if not isinstance(getattr(self, name), bool):
                raise JfbError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.solver_options, Mapping):
            raise JfbError(f"solver_options must be a mapping of option names to values, got {self.solver_options!r}")
        object.__setattr__(self, "solver_options", dict(self.solver_options))  # a copy the caller cannot change
        object.__setattr__(self, "method", self._resolve_solver())

    def _resolve_solver(self) -> Solver:
        if isinstance(self.solver, Solver):
            if self.solver_options:
                raise JfbError("solver_options apply to a solver given by name; configure a Solver instance directly")
            return self.solver
        if not isinstance(self.solver, str):
            raise JfbError(f"solver must be a registered name or a jfb.solvers.Solver instance, got {self.solver!r}")
        return make_solver(self.solver, dict(self.solver_options))

    @property
    def fixed_depth(self) -> bool:
        return self.tol is None

    @property
    def solver_name(self) -> str:
        if isinstance(self.solver, str):
            return self.solver.split(":")[0]
        return self.method.name or type(self.method).__name__

    def replace(self, **changes: Any) -> SolveOptions:
        """A validated copy with ``changes``; a new ``solver`` drops the old solver's options."""
        check_names(changes)
        if "solver" in changes and "solver_options" not in changes:
            changes["solver_options"] = {}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, **settings: Any) -> SolveOptions:
        """``SolveOptions(**settings)`` with unknown names reported as a JfbError naming the valid ones.

        Options are immutable and a solver keeps its per-solve state in ``init``, so equal settings may share one
        instance: :func:`jfb.fixed_point` called in a loop builds and validates them once (the validation and the
        solver's construction cost as much as a few iterations of a small problem)."""
        check_names(settings)
        try:
            key = tuple((name, type(value), value) for name, value in settings.items())  # (True == 1: types too)
            return _cached_options(key, SOLVERS.version)
        except TypeError:  # an unhashable setting (solver_options, a Solver instance without __hash__)
            return cls(**settings)


def option_names() -> tuple[str, ...]:
    return _OPTION_NAMES


#: computed once: reading a dataclass's fields is a graph break where dynamo traces a solve
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SolveOptions) if f.init)


def check_names(settings: Mapping[str, Any]) -> None:
    for name in settings:
        if name not in option_names():
            raise unknown_name("solve option", name, option_names())


@functools.lru_cache(maxsize=64)
def _cached_options(settings: tuple[tuple[str, type, Any], ...], solvers_version: int) -> SolveOptions:
    return SolveOptions(**{name: value for name, _, value in settings})
