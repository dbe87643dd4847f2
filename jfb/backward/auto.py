"""``backward="auto"``: train with JFB, check the quality of its direction now and then, escalate when it fails."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from ..errors import JfbError
from ..solvers.base import require_integer, require_number
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientCheck
from .ift import IFT
from .jacobian import JacobianProducts
from .jfb import JFB
from .linear import LINEAR_SOLVERS, LinearSolver
from .neumann import Neumann

POWER_STEPS = 5  # J^T products of the contraction estimate


class Autopilot(BackwardMode):
    """JFB, escalated to ``neumann:K`` and then IFT while JFB's direction is poor, and back when it recovers.

    Every ``every``-th call with grad, the backward pass also solves for the implicit gradient (``linear_solver``,
    default GMRES, which needs no contraction; at most ``check_iters`` iterations) and compares
    (:class:`GradientCheck`).
    ``patience`` checks in a row with a cosine below ``threshold`` or without descent move one level up
    (JFB -> neumann:K -> IFT); ``patience`` checks in a row with a cosine of at least ``recover`` move one
    level down (the gap keeps a JFB direction that is just acceptable from switching back and forth). A check goes
    into the statistics of the call it measured (``result.stats.backward.checks``); with GMRES it costs at most
    ``check_iters + 8`` J products and one application of T. The top level is IFT with the same linear solver:
    escalation happens when T may not be contractive, where the fixed-point linear solve would diverge. The
    level travels in the layer's ``state_dict`` (:meth:`state_dict`).
    """

    name = "auto"

    def __init__(
        self,
        every: int = 100,
        threshold: float = 0.5,
        recover: float = 0.8,
        patience: int = 2,
        k: int = 4,
        check_iters: int = 20,
        linear_solver: str | LinearSolver = "gmres",
    ) -> None:
        require_integer("auto every", every, 1)
        require_integer("auto patience", patience, 1)
        require_integer("auto check_iters", check_iters, 1)
        require_number("auto threshold", threshold, -1)
        if not threshold <= recover <= 1:
            raise JfbError(f"auto needs -1 < threshold <= recover <= 1 (cosines), got {threshold!r} and {recover!r}")
        self.every, self.threshold, self.recover = every, threshold, recover
        self.patience, self.check_iters = patience, check_iters
        self.linear_solver = LINEAR_SOLVERS.build(linear_solver)
        self.levels: list[BackwardMode] = [JFB(), Neumann(k), IFT(self.linear_solver)]
        self.level, self.calls, self.good, self.bad = 0, 0, 0, 0

    @property
    def current(self) -> BackwardMode:
        return self.levels[self.level]

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        if not torch.is_grad_enabled():
            return self.current.attach(T, u_star, stats)
        self.calls += 1
        if self.calls % self.every:
            return self.current.attach(T, u_star, stats)
        call, mode = self.calls, repr(self.current)
        value = self.current.attach(T, u_star, stats)
        if not value.requires_grad:
            return value
        # a view in front of the mode's output: its hook sees dl/du* itself, before any hook or autograd
        # function of the mode (Neumann's hook, IFT's linear solve) has changed it
        checked = value.view_as(value)
        checked.register_hook(lambda grad: self._check(T, u_star, grad, stats, call, mode))
        return checked

    def _check(self, T: FixedPointMap, u_star: Tensor, grad: Tensor, stats: BackwardStats, call: int, mode: str):
        started = time.perf_counter()
        grad = grad.detach()  # under create_graph=True the check measures; it records nothing
        with torch.enable_grad():
            z, u = T.linearization(u_star)
            products = JacobianProducts(z, u)
            w, _ = self.linear_solver.solve(products, grad, 1e-6, self.check_iters)
            contraction = _spectral_radius(products.vjp, grad, POWER_STEPS)
            inputs = T.inputs()
            jfb_direction = _flat_grad(z, inputs, grad, retain=True)
            implicit_direction = _flat_grad(z, inputs, w, retain=False)
        stats.t_evals += 1
        stats.j_matvecs += products.count + 2
        dot = float(jfb_direction @ implicit_direction)
        norms = float(jfb_direction.norm() * implicit_direction.norm())
        cosine = dot / norms if norms > 0 else math.nan
        descent = dot > 0
        switched = self._decide(
            poor=not (descent and cosine >= self.threshold), good=descent and cosine >= self.recover
        )
        seconds = time.perf_counter() - started
        stats.checks.append(GradientCheck(call, mode, cosine, descent, contraction, switched, seconds))

    def _decide(self, poor: bool, good: bool) -> str | None:
        """Move one level after ``patience`` checks in a row that say so; the new mode's name, if it moved."""
        self.bad = self.bad + 1 if poor else 0
        self.good = self.good + 1 if good else 0
        if self.bad >= self.patience and self.level < len(self.levels) - 1:
            self.level += 1
        elif self.good >= self.patience and self.level > 0:
            self.level -= 1
        else:
            return None
        self.good = self.bad = 0
        return repr(self.current)

    def state_dict(self) -> dict[str, int]:
        """Where the autopilot stands (in the layer's ``state_dict``, so a resumed run continues in the same mode)."""
        return {"level": self.level, "calls": self.calls, "good": self.good, "bad": self.bad}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.level, self.calls, self.good, self.bad = state["level"], state["calls"], state["good"], state["bad"]

    def __repr__(self) -> str:
        return f"auto({self.current!r})"


def _spectral_radius(vjp, start: Tensor, steps: int) -> float:
    """Power iteration on ``J^T`` from ``start``: the growth factor of the last step."""
    v, growth = start / start.norm().clamp_min(1e-30), 0.0
    for _ in range(steps):
        v = vjp(v)
        growth = float(v.norm())
        v = v / max(growth, 1e-30)
    return growth


def _flat_grad(z: Tensor, inputs: list[Tensor], v: Tensor, retain: bool) -> Tensor:
    """``(dz/d inputs)^T v`` as one flat vector (zeros for inputs z does not depend on)."""
    if not inputs:
        return v.new_zeros(0)
    grads = torch.autograd.grad(z, inputs, v, retain_graph=retain, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(t)).reshape(-1) for g, t in zip(grads, inputs)])
