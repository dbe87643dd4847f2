"""Exact gradients in constant memory: backpropagation through the reversible coupled iteration.

The forward solve is :func:`jfb.solvers.reversible.solve_coupled` (``solver="reversible"``, whose
``beta`` it uses). The output is ``T(z_N)`` applied with grad, as in every mode. The backward pass
undoes the steps one at a time, from ``(y_N, z_N)`` back to ``u0``, and backpropagates through each as
it goes: the gradient is that of autograd through every step, while memory holds one step's graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..solvers import SolveOptions, SolveStats
from ..solvers.base import require_number
from ..solvers.reversible import CoupledTrace, solve_coupled
from ..status import Status
from ..transforms import differentiated_check
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientOverride, refuse_second_order, tensors_with_grad


@dataclass
class ReversibleStats(BackwardStats):
    """:class:`BackwardStats` with what only the reverse pass measures."""

    #: the largest absolute difference between the first pair the reverse pass reconstructed and the initial state
    #: (rounding grows as ``|1 - beta|^-1`` per half step)
    reconstruction_error: float = float("nan")
    #: the estimated relative error of the gradient from that rounding (past ``max_gradient_error`` the pass is
    #: reported ``diverged``)
    gradient_error_estimate: float = float("nan")


class Reversible(BackwardMode):
    """Backpropagate exactly through the reversible coupled iteration, reconstructing it in reverse.

    Needs ``solver="reversible"`` (``"reversible:beta=0.8"`` sets the relaxation). Every sample takes the
    same number of steps (no freezing). Costs of the backward pass: 2 T evaluations with grad and 2 J^T
    products per step, plus the J^T product of the output's application. Its gradients reach every tensor
    T uses with grad: the operator's parameters, ``x``, and tensors a plain-function operator closes over.

    The coupled pair is kept in float64 whatever T's precision (T sees it rounded to its own), so the reverse
    pass undoes the forward arithmetic to float64 rounding, not T's. Rounding still grows by ``|1 - beta|^-1``
    per half step in the reverse pass: when the estimated relative error of the gradient
    (``stats.backward.gradient_error_estimate``) passes ``max_gradient_error`` the pass is reported
    ``diverged`` through ``on_failure``. By name: ``"reversible"``, ``"reversible:max_gradient_error=1e-2"``.
    """

    forward_solver = "reversible"
    stats_type = ReversibleStats

    def __init__(self, max_gradient_error: float = 1e-3) -> None:
        require_number("reversible max_gradient_error", max_gradient_error, 0)
        self.max_gradient_error = float(max_gradient_error)
        self.name = "reversible"

    def solve(
        self,
        F: Callable[[Tensor, Tensor | None], Tensor],
        x0: Tensor,
        options: SolveOptions,
        agree: Callable[[bool], bool] | None,
        observe: Callable[[Tensor], None] | None,
    ) -> tuple[Tensor, SolveStats, Any]:
        return solve_coupled(F, x0, options, agree, observe)

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: ReversibleStats) -> Tensor:
        z_last = u_star.detach().requires_grad_()
        out = T(z_last)
        if not out.requires_grad:
            return out
        inputs = tensors_with_grad(out, T.inputs(), exclude=z_last)
        trace: CoupledTrace = T.trace

        differentiated = differentiated_check()

        def gradients(grad: Tensor, value: Tensor) -> tuple[Tensor | None, ...]:
            refuse_second_order(self.name, differentiated())
            (z_bar,) = torch.autograd.grad(out, z_last, grad, retain_graph=True)
            totals = _reverse(T, trace, z_bar, inputs, stats)
            stats.j_matvecs += 1
            finite = all(bool(torch.isfinite(t).all()) for t in totals if t is not None)
            stats.iterations, stats.status = trace.steps, Status.CONVERGED if finite else Status.NON_FINITE
            T.report(f"backward pass ({self.name})", stats, self._check_reconstruction(stats))
            return (grad, *totals)

        return GradientOverride.apply(gradients, None, out, *inputs)

    def _check_reconstruction(self, stats: ReversibleStats) -> str:
        """Mark the pass ``diverged`` when rounding in the reconstruction makes the gradient unreliable; the detail
        of the report names the fixes."""
        if stats.status != Status.CONVERGED or not stats.gradient_error_estimate > self.max_gradient_error:
            return ""
        stats.status = Status.DIVERGED
        return (
            f": the reconstruction of the forward iterates drifted (error {stats.reconstruction_error:.3g}), the "
            f"gradient's estimated relative error is {stats.gradient_error_estimate:.3g} > max_gradient_error="
            f"{self.max_gradient_error:g}; use fewer steps (a smaller max_iter or a looser tol), beta further from 1, "
            "or a float64 operator"
        )

    def __repr__(self) -> str:
        bound = self.max_gradient_error
        return self.name + ("" if bound == 1e-3 else f":max_gradient_error={bound:g}")


def _reverse(
    T: FixedPointMap, trace: CoupledTrace, z_bar: Tensor, inputs: list[Tensor], stats: ReversibleStats
) -> list[Tensor | None]:
    """Undo the steps from the last, accumulating each one's vector-Jacobian products into the inputs'."""
    beta, keep = trace.beta, 1 - trace.beta
    y, z, y_bar = trace.y, trace.z, torch.zeros_like(z_bar)
    totals: list[Tensor | None] = [None] * len(inputs)
    adjoints = []
    with torch.enable_grad(), T.frozen():
        for _ in range(trace.steps):  # step n: y' = keep y + beta T(z); z' = keep z + beta T(y')
            adjoints.append(torch.linalg.vector_norm(y_bar) + torch.linalg.vector_norm(z_bar))
            t_y, y_leaf = _apply(T, y.to(z_bar.dtype))
            z = (z - beta * t_y.detach().to(z.dtype)) / keep
            y_bar = y_bar + _pull_back(t_y, y_leaf, beta * z_bar, inputs, totals)
            z_bar = keep * z_bar
            t_z, z_leaf = _apply(T, z.to(z_bar.dtype))
            y = (y - beta * t_z.detach().to(y.dtype)) / keep
            z_bar = z_bar + _pull_back(t_z, z_leaf, beta * y_bar, inputs, totals)
            y_bar = keep * y_bar
    stats.t_evals += 2 * trace.steps
    stats.j_matvecs += 2 * trace.steps
    start = trace.start.to(y.dtype)
    stats.reconstruction_error = float(torch.maximum((y - start).abs().max(), (z - start).abs().max()))
    stats.gradient_error_estimate = _gradient_error_estimate(trace, adjoints, stats.reconstruction_error)
    return totals


def _gradient_error_estimate(trace: CoupledTrace, adjoints: list[Tensor], reconstruction_error: float) -> float:
    """A first-order estimate of the gradient's relative error from rounding in the reconstruction.

    Step ``n``'s contribution to the gradient is a product of its adjoint and its state, so a state off by
    ``e_n`` moves the gradient by about ``|adjoint_n| e_n``. The states' errors grow geometrically in the
    reverse pass, from the trace's rounding unit at the last step to the measured reconstruction error at the
    first; weighted by the adjoints' norms and divided by ``sum |adjoint_n| * scale`` this is the estimate.
    Early steps count little when the adjoints shrink going backwards, which is why a large reconstruction
    error alone does not mean a wrong gradient.
    """
    scale = float(torch.maximum(trace.y.abs().max(), trace.z.abs().max())) + torch.finfo(torch.float64).tiny
    unit = torch.finfo(trace.y.dtype).eps * scale
    if not trace.steps or not reconstruction_error > unit:
        return 0.0 if reconstruction_error == reconstruction_error else float("inf")
    weights = torch.stack(adjoints).to(torch.float64)  # weights[k]: the adjoints before undoing step N - k
    undone = torch.arange(1, trace.steps + 1, dtype=torch.float64)
    errors = unit * (reconstruction_error / unit) ** (undone / trace.steps)
    return float((weights * errors).sum() / (weights.sum() * scale + torch.finfo(torch.float64).tiny))


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
