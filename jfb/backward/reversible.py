"""Exact gradients in constant memory: backpropagation through the reversible coupled iteration.

The forward solve is :func:`jfb.solvers.reversible.solve_coupled` (``solver="reversible"``, whose
``beta`` it uses). The output is ``T(z_N)`` applied with grad, as in every mode. The backward pass
undoes the steps one at a time, from ``(y_N, z_N)`` back to ``u0``, and backpropagates through each as
it goes: the gradient is that of autograd through every step, while memory holds one step's graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..solvers import SolveOptions, SolveStats
from ..solvers.reversible import CoupledTrace, solve_coupled
from ..status import Status
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientOverride, refuse_second_order, tensors_with_grad


class Reversible(BackwardMode):
    """Backpropagate exactly through the reversible coupled iteration, reconstructing it in reverse.

    Needs ``solver="reversible"`` (``"reversible:beta=0.8"`` sets the relaxation). Every sample takes the
    same number of steps (no freezing). Costs of the backward pass: 2 T evaluations with grad and 2 J^T
    products per step, plus the J^T product of the output's application. Its gradients reach every tensor
    T uses with grad: the operator's parameters, ``x``, and tensors a plain-function operator closes over.
    """

    name = "reversible"
    forward_solver = "reversible"

    def solve(
        self,
        F: Callable[[Tensor, Tensor | None], Tensor],
        x0: Tensor,
        options: SolveOptions,
        agree: Callable[[bool], bool] | None,
        observe: Callable[[Tensor], None] | None,
    ) -> tuple[Tensor, SolveStats, Any]:
        return solve_coupled(F, x0, options, agree, observe)

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        z_last = u_star.detach().requires_grad_()
        out = T(z_last)
        if not out.requires_grad:
            return out
        inputs = tensors_with_grad(out, T.inputs(), exclude=z_last)
        trace: CoupledTrace = T.trace

        def gradients(grad: Tensor, value: Tensor) -> tuple[Tensor | None, ...]:
            refuse_second_order(self.name)
            (z_bar,) = torch.autograd.grad(out, z_last, grad, retain_graph=True)
            totals = _reverse(T, trace, z_bar, inputs, stats)
            stats.j_matvecs += 1
            finite = all(bool(torch.isfinite(t).all()) for t in totals if t is not None)
            stats.iterations, stats.status = trace.steps, Status.CONVERGED if finite else Status.NON_FINITE
            T.report(self.name, stats)
            return (grad, *totals)

        return GradientOverride.apply(gradients, out, *inputs)


def _reverse(
    T: FixedPointMap, trace: CoupledTrace, z_bar: Tensor, inputs: list[Tensor], stats: BackwardStats
) -> list[Tensor | None]:
    """Undo the steps from the last, accumulating each one's vector-Jacobian products into the inputs'."""
    beta, keep = trace.beta, 1 - trace.beta
    y, z, y_bar = trace.y, trace.z, torch.zeros_like(z_bar)
    totals: list[Tensor | None] = [None] * len(inputs)
    with torch.enable_grad(), T.frozen():
        for _ in range(trace.steps):  # step n: y' = keep y + beta T(z); z' = keep z + beta T(y')
            t_y, y_leaf = _apply(T, y)
            z = (z - beta * t_y.detach()) / keep
            y_bar = y_bar + _pull_back(t_y, y_leaf, beta * z_bar, inputs, totals)
            z_bar = keep * z_bar
            t_z, z_leaf = _apply(T, z)
            y = (y - beta * t_z.detach()) / keep
            z_bar = z_bar + _pull_back(t_z, z_leaf, beta * y_bar, inputs, totals)
            y_bar = keep * y_bar
    stats.t_evals += 2 * trace.steps
    stats.j_matvecs += 2 * trace.steps
    start = trace.start.to(y.dtype)
    stats.reconstruction_error = float(torch.maximum((y - start).abs().max(), (z - start).abs().max()))
    return totals


def _apply(T: FixedPointMap, u: Tensor) -> tuple[Tensor, Tensor]:
    leaf = u.detach().requires_grad_()
    return T(leaf), leaf


def _pull_back(t: Tensor, leaf: Tensor, v: Tensor, inputs: list[Tensor], totals: list[Tensor | None]) -> Tensor:
    """``J^T v`` with respect to ``leaf``; the inputs' products are added to ``totals``."""
    leaf_grad, *grads = torch.autograd.grad(t, [leaf, *inputs], v, allow_unused=True)
    for i, g in enumerate(grads):
        if g is not None:
            totals[i] = g if totals[i] is None else totals[i] + g
    return leaf_grad if leaf_grad is not None else torch.zeros_like(leaf)
