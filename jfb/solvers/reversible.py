"""The reversible coupled iteration (McCallum, Arora, Foster, "Reversible Deep Equilibrium Models", 2025).

From ``y_0 = z_0 = u0``, with relaxation ``beta`` in (0, 2), ``beta != 1``::

    y_{n+1} = (1 - beta) y_n + beta T(z_n)
    z_{n+1} = (1 - beta) z_n + beta T(y_{n+1})

Each step can be undone exactly in algebra (``z_n = (z_{n+1} - beta T(y_{n+1})) / (1 - beta)``, then
``y_n = (y_{n+1} - beta T(z_n)) / (1 - beta)``), which is what ``backward="reversible"`` does to
backpropagate through every step in memory independent of their number. As a step-protocol solver
(``solver="reversible"``) it can also serve any other backward mode; the driver then evaluates T at
``z_0, y_1, z_1, y_2, ...`` and may stop after either half of a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import JfbError
from .base import Solver, SolveStats, require_number
from .driver import Agreement, FlatOperator, Tracker
from .options import SolveOptions


@dataclass(frozen=True)
class Reversible(Solver):
    """The coupled iteration above; ``beta`` is its relaxation (0.5 by default)."""

    name: ClassVar[str] = "reversible"
    returns_best: ClassVar[bool] = False
    beta: float = 0.5

    def __post_init__(self) -> None:
        require_number("reversible beta", self.beta, 0)
        if not self.beta < 2 or self.beta == 1:
            raise JfbError(
                f"reversible beta must be in (0, 2) and not 1 (then a step cannot be undone), got {self.beta!r}"
            )

    def init(self, x0: Tensor) -> dict[str, Tensor]:
        return {"y": x0, "z": x0, "next": "y"}

    def update(self, state: dict, x: Tensor, fx: Tensor) -> Tensor:
        """``x`` was ``z_n`` (then ``y_{n+1}`` is next) or ``y_{n+1}`` (then ``z_{n+1}``)."""
        part = state["next"]
        state[part] = (1 - self.beta) * state[part] + self.beta * fx
        state["next"] = "z" if part == "y" else "y"
        return state[part]


@dataclass
class CoupledTrace:
    """What the reverse pass starts from: the last pair, the number of steps and the first iterate."""

    y: Tensor
    z: Tensor
    steps: int
    beta: float
    start: Tensor


def pair_dtype(x0: Tensor) -> torch.dtype:
    """float64 for the coupled pair (MPS has none: the state's own dtype there). T is evaluated at the pair
    rounded to the state's dtype, so the reverse pass meets T's outputs bit for bit while the pair is within
    that rounding, and undoes the forward arithmetic to float64's rounding, not T's."""
    return x0.dtype if x0.device.type == "mps" else torch.promote_types(x0.dtype, torch.float64)


def solve_coupled(
    F: FlatOperator,
    x0: Tensor,
    options: SolveOptions,
    agree: Agreement | None = None,
    observe: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, SolveStats, CoupledTrace]:
    """Run whole coupled steps (two T evaluations each, at most ``max_iter // 2``) on the whole batch.

    Stops after the step in which every sample's ``||T(z_n) - z_n||`` met the tolerance (checked every
    ``check_every`` steps; ``iterations`` counts T evaluations up to that measurement), or after the depth.
    Returns ``z_N`` (in the state's dtype), the statistics of the solve and its trace (the pair in
    :func:`pair_dtype`). No sample is frozen: every row must take the same steps for the reverse pass.

    Its bookkeeping is the driver's (:class:`~jfb.solvers.driver.Tracker`: residuals, stopping, failures,
    evaluation counts); the loop is its own because the reverse pass needs what the driver's does not give: a
    stop only after whole steps (the driver stops after any evaluation), the residual measured at ``z_n`` only
    (the ``y`` halves counted, not measured), and ``z_N`` itself with the float64 pair (the driver returns T's
    value at the last point).
    """
    method = options.method
    if not isinstance(method, Reversible):
        raise JfbError(f"the coupled iteration needs solver 'reversible', got {options.solver_name!r}")
    if options.max_iter < 2:
        raise JfbError(f"solver 'reversible' steps by 2 T evaluations: max_iter must be >= 2, got {options.max_iter}")
    tracker = Tracker(x0, options, track_best=False)
    wide = pair_dtype(x0)
    state = method.init(x0.to(wide))
    steps, z, measured, fz = 0, x0, x0, x0
    for steps in range(1, options.max_iter // 2 + 1):
        measured, fz = z, F(z, None)
        tracker.record(measured, fz, 2 * steps - 1, None)
        y = method.update(state, z, fz.to(wide)).to(x0.dtype)
        fy = F(y, None)
        tracker.count()
        if observe is not None:
            observe(fy)
        z = method.update(state, y, fy.to(wide)).to(x0.dtype)
        if tracker.checks(steps) and tracker.finished(agree):
            break
    _, stats = tracker.result(measured, fz)  # the residual of the last z at which T was evaluated
    return z, stats, CoupledTrace(state["y"], state["z"], steps, method.beta, x0)
