"""Second derivatives through the layer (create_graph=True): exact for the modes that record T, refused for the rest.

A backward pass with ``create_graph=True`` followed by a backward pass of a loss on that gradient (forces as
-dE/dx, physics-informed losses) differentiates the backward mode itself. JFB, phantom and unroll build their
gradient by autograd through applications of T, so the result is the derivative of what they compute; IFT and
Neumann-k compute theirs in a hook without a graph, which used to give a silently wrong answer (relative error
0.63 against unrolled Picard for IFT): they now refuse.
"""

from __future__ import annotations

import pytest
import torch
from operators import TIGHT, TanhOperator

import jfb


def _force_loss_gradient(
    layer: jfb.ImplicitLayer, op: TanhOperator, x: torch.Tensor, checks: list | None = None
) -> torch.Tensor:
    """d/dW of ``||d(0.5 ||u*||^2)/dx||^2``: a loss on an input gradient, differentiated once more."""
    result = layer.solve(x)
    (gx,) = torch.autograd.grad(0.5 * (result.value**2).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad((gx**2).sum(), op.W)
    if checks is not None:
        checks.extend(result.checks)
    return gw


def _problem() -> tuple[TanhOperator, torch.Tensor]:
    op = TanhOperator(5, contraction=0.5)
    return op, torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()


@pytest.mark.parametrize("mode", ["ift", "ift:cg", "ift:gmres", "neumann:3"])
def test_modes_without_a_graph_refuse_second_derivatives(mode: str) -> None:
    op, x = _problem()
    layer = jfb.ImplicitLayer(op, mode, **TIGHT)
    with pytest.raises(jfb.JfbError, match=r"create_graph=True.*jfb, phantom:K, unroll"):
        _force_loss_gradient(layer, op, x)


def test_first_derivatives_of_refusing_modes_still_work() -> None:
    op, x = _problem()
    u = jfb.ImplicitLayer(op, "ift", **TIGHT)(x)
    (gx,) = torch.autograd.grad(0.5 * (u**2).sum(), x)
    assert torch.isfinite(gx).all()


def test_jfb_second_derivative_is_that_of_its_one_application_of_T() -> None:
    op, x = _problem()
    layer = jfb.ImplicitLayer(op, "jfb", **TIGHT)
    with torch.no_grad():
        u_star = layer(x)
    expected_u = op(u_star, x)  # JFB: T applied once with grad to the detached u*
    (gx,) = torch.autograd.grad(0.5 * (expected_u**2).sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad((gx**2).sum(), op.W)
    torch.testing.assert_close(_force_loss_gradient(layer, op, x), expected, rtol=1e-10, atol=1e-12)


def test_unroll_second_derivative_equals_autograd_through_picard() -> None:
    op, x = _problem()
    layer = jfb.ImplicitLayer(op, "unroll", solver="picard", tol=None, max_iter=60)
    u = torch.zeros_like(x)
    for _ in range(61):  # 60 solver steps and the final application
        u = op(u, x)
    (gx,) = torch.autograd.grad(0.5 * (u**2).sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad((gx**2).sum(), op.W)
    torch.testing.assert_close(_force_loss_gradient(layer, op, x), expected, rtol=1e-9, atol=1e-12)


def test_autopilot_check_under_create_graph_leaves_the_jfb_second_derivative() -> None:
    op, x = _problem()
    jfb_gradient = _force_loss_gradient(jfb.ImplicitLayer(op, "jfb", **TIGHT), op, x)
    auto = jfb.ImplicitLayer(op, "auto:every=1", **TIGHT)
    checks: list = []
    torch.testing.assert_close(_force_loss_gradient(auto, op, x, checks), jfb_gradient, rtol=1e-10, atol=1e-12)
    # one per backward pass through the output: both are measured
    assert len(checks) == 2 and all(0.9 < c.cosine <= 1 for c in checks)
