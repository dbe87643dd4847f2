"""Second derivatives through the layer (create_graph=True): exact for IFT and the modes that record T, refused
for the rest.

A backward pass with ``create_graph=True`` followed by a backward pass of a loss on that gradient (forces as
-dE/dx, physics-informed losses, Hessian-vector products) differentiates the backward mode itself. JFB, phantom
and unroll build their gradient by autograd through applications of T, so the result is the derivative of what
they compute. IFT attaches its linear solve as a fixed point of its own, so its second derivative is the
implicit one (it used to be silently wrong: relative error 0.63 against unrolled Picard). Neumann-k and
reversible compute theirs without a graph and refuse.
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


def _unrolled_picard(op: TanhOperator, x: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """u* by autograd through Picard steps: contraction 0.5, so 200 steps are exact to rounding, derivatives too."""
    u = torch.zeros_like(x)
    for _ in range(steps):
        u = op(u, x)
    return u


def test_neumann_refuses_second_derivatives() -> None:
    op, x = _problem()
    layer = jfb.ImplicitLayer(op, "neumann:3", **TIGHT)
    with pytest.raises(jfb.JfbError, match=r"create_graph=True") as refused:
        _force_loss_gradient(layer, op, x)
    able = str(refused.value).split("use one of ")[1]
    assert [name in able for name in ("jfb", "ift[", "phantom:K", "unroll", "neumann", "reversible", "auto")] == [
        *[True] * 4,
        *[False] * 3,
    ]


def test_a_mode_registered_from_outside_is_named_by_its_capability_flag() -> None:
    """The modes a refusal offers come from their ``supports_second_order`` flag, not from a list of names."""

    class Twice(jfb.backward.JFB):  # JFB's attachment under another name: differentiable as it is
        name = "twice"

    jfb.register_backward("twice", Twice)
    try:
        op, x = _problem()
        with pytest.raises(jfb.JfbError, match=r"use one of .*twice"):
            _force_loss_gradient(jfb.ImplicitLayer(op, "neumann:3", **TIGHT), op, x)
        layer = jfb.ImplicitLayer(op, "twice", **TIGHT)
        (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        assert gx.requires_grad and layer.backward.supports_second_order and layer.backward.lockstep_safe
    finally:
        jfb.backward.BACKWARD_MODES._factories.pop("twice")


@pytest.mark.parametrize("mode", ["ift:tol=1e-12", "ift:cg:tol=1e-12", "ift:gmres:tol=1e-12"])
def test_ift_second_derivative_is_the_implicit_one(mode: str) -> None:
    op, x = _problem()
    u = _unrolled_picard(op, x)
    (gx,) = torch.autograd.grad(0.5 * (u**2).sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad((gx**2).sum(), op.W)
    got = _force_loss_gradient(jfb.ImplicitLayer(op, mode, **TIGHT), op, x)
    assert (got - expected).norm() / expected.norm() < 1e-10


def test_ift_at_its_default_tolerance_is_within_1e_6() -> None:
    op, x = _problem()
    u = _unrolled_picard(op, x)
    (gx,) = torch.autograd.grad(0.5 * (u**2).sum(), x, create_graph=True)
    (expected,) = torch.autograd.grad((gx**2).sum(), op.W)
    got = _force_loss_gradient(jfb.ImplicitLayer(op, "ift", **TIGHT), op, x)
    assert (got - expected).norm() / expected.norm() < 1e-6


def test_ift_hessian_matches_the_dense_hessian() -> None:
    """Every entry of d^2 l / dW^2 for l = sum(head * u*), against the dense Hessian of the unrolled solve."""
    op, x = _problem()
    head = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    W0 = op.W.detach().clone()

    def loss_of(W: torch.Tensor) -> torch.Tensor:
        u = torch.zeros_like(x)
        for _ in range(200):
            u = torch.tanh(u @ W.T + x @ op.U.T + op.b)
        return (head * u).sum()

    dense = torch.autograd.functional.hessian(loss_of, W0).reshape(25, 25)
    layer = jfb.ImplicitLayer(op, "ift:gmres:tol=1e-13", **TIGHT)
    (g,) = torch.autograd.grad((head * layer(x)).sum(), op.W, create_graph=True)
    rows = [torch.autograd.grad(g.reshape(-1)[i], op.W, retain_graph=True)[0].reshape(-1) for i in range(25)]
    torch.testing.assert_close(torch.stack(rows), dense, rtol=1e-8, atol=1e-10)


def test_ift_third_derivatives_are_refused() -> None:
    op, x = _problem()
    u = jfb.ImplicitLayer(op, "ift", **TIGHT)(x)
    (gx,) = torch.autograd.grad(0.5 * (u**2).sum(), x, create_graph=True)
    with pytest.raises(jfb.JfbError, match="third derivatives"):  # the second pass asks for a graph
        torch.autograd.grad((gx**2).sum(), op.W, create_graph=True)


def test_first_derivatives_of_refusing_modes_still_work() -> None:
    op, x = _problem()
    u = jfb.ImplicitLayer(op, "neumann:3", **TIGHT)(x)
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
