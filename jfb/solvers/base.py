"""The step protocol every forward solver implements, its registry, and the statistics of a solve.

A solver proposes points; :mod:`jfb.solvers.driver` evaluates T at them and owns everything else
(stopping, per-sample freezing, best iterates, divergence, evaluation counts, agreement between
processes). States reach a solver flattened to ``(batch, features)`` (see :mod:`jfb.state`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..errors import JfbError
from ..registry import Registry
from ..status import Status


class Solver:
    """One fixed-point method: ``init`` once, then ``update`` after every evaluation of T.

    ``update(state, x, fx)`` gets the point just evaluated and ``fx = T(x)`` for the whole batch and
    returns the next point to evaluate (Picard returns ``fx``). It must not evaluate T itself and
    must work row by row (samples never mix), so the driver may freeze rows. ``returns_best``: the
    driver returns each sample's lowest-residual ``T(x)`` instead of the latest one (for methods
    that may oscillate). Subclasses are usually frozen dataclasses whose fields are the options,
    validated in ``__post_init__``.
    """

    name: ClassVar[str] = ""
    returns_best: ClassVar[bool] = True
    #: why an ONNX file cannot hold this solver's steps (empty: it can; see :func:`jfb.deploy.export_onnx`)
    onnx_refusal: ClassVar[str] = ""

    def init(self, x0: Tensor) -> Any:
        return None

    def update(self, state: Any, x: Tensor, fx: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass
class History:
    """Per-sample residuals of every iteration: ``abs[k, i]`` and ``rel[k, i]`` after evaluation ``k + 1``."""

    abs: Tensor
    rel: Tensor


@dataclass
class SolveStats:
    """What a forward solve did.

    ``iterations[i]``: T evaluations after which sample ``i`` first met the tolerance (``max_iter``
    when it never did, and always under a fixed depth). ``abs_residual`` / ``rel_residual`` belong
    to the returned point's row: ``||T(x) - x||`` (and over ``||T(x)||``) for the ``x`` whose ``T(x)``
    is returned. ``status`` is the worst outcome over the batch (see :class:`jfb.Status`).
    """

    iterations: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    status: Status
    t_evals: int
    history: History | None = None


def require_integer(name: str, value: object, minimum: int, hint: str = "") -> None:
    """JfbError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise JfbError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")


def require_number(name: str, value: object, above: float, hint: str = "") -> None:
    """JfbError unless ``value`` is an int or float (not a bool) > ``above``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > above:
        raise JfbError(f"{name} must be a number > {above}{hint}, got {value!r}")


SOLVERS: Registry[Solver] = Registry("solver", Solver)


def register_solver(name: str, factory: Callable[..., Solver], usage: str = "", *, replace: bool = False) -> None:
    """Make ``factory(**options) -> Solver`` (usually the solver class) available by ``name``
    (and as ``"name:key=value"``)."""
    SOLVERS.register(name, factory, usage, replace=replace)


def solver_names() -> tuple[str, ...]:
    return SOLVERS.names()


def make_solver(spec: str, options: dict[str, Any] | None = None) -> Solver:
    """The registered solver ``spec`` (``"anderson"``, ``"anderson:memory=3"``) built with ``options``;
    unknown names and options raise JfbError."""
    return SOLVERS.build(spec, **(options or {}))
