"""SHINE: the backward pass from Broyden's inverse-Jacobian estimate, with and without refinement."""

from __future__ import annotations

import pytest
import torch

import jfb
from jfb.errors import JfbError

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize(
    ("T", "derivative"),
    [
        (lambda u, x: 0.5 * u + x, lambda u: torch.full_like(u, 2.0)),
        (lambda u, x: 0.5 * torch.cos(u) + x, lambda u: 1 / (1 + 0.5 * torch.sin(u))),
    ],
)
def test_in_one_dimension_the_secant_estimate_is_the_derivative(T, derivative):
    """One secant update pins a 1-D inverse Jacobian: SHINE's gradient is du*/dx = 1 / (1 - T'(u*))."""
    x = torch.tensor([[0.3], [-1.0]], requires_grad=True)
    layer = jfb.ImplicitLayer(T, backward="shine", solver="broyden", tol=1e-12, max_iter=50)
    u = layer(x)
    u.sum().backward()
    assert torch.allclose(x.grad, derivative(u.detach()), rtol=1e-6)
    stats = layer.last_stats.backward
    assert stats.estimate_residual < 1e-6 and stats.j_matvecs == 1  # the estimate's residual, measured once


def _tanh_gradients(backwards, solver="broyden"):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(30, 30, generator=g)
    W = 1.6 * W / torch.linalg.matrix_norm(W, ord=2)
    U = torch.randn(30, 4, generator=g)
    x0 = torch.randn(8, 4, generator=g)
    out = {}
    for backward in backwards:
        layer = jfb.ImplicitLayer(
            lambda u, x: torch.tanh(u @ W.T + x @ U.T),
            backward=backward,
            solver=solver,
            tol=1e-8,
            max_iter=100,
            latent_shape=(30,),
        )
        x = x0.clone().requires_grad_()
        (layer(x) ** 2).sum().backward()
        out[backward] = (x.grad, layer.last_stats.backward)
    return out


def test_refinement_from_the_estimate_approaches_the_implicit_gradient():
    got = _tanh_gradients(["ift:gmres:tol=1e-12", "shine", "shine:refine=5"])
    exact = got["ift:gmres:tol=1e-12"][0]
    errors = {name: float((g - exact).norm() / exact.norm()) for name, (g, _) in got.items()}
    assert 0.05 < errors["shine"] < 0.6  # approximate by design (Broyden's memory restarts every 10 updates)
    assert errors["shine:refine=5"] < errors["shine"] / 5
    assert got["shine:refine=5"][1].j_matvecs == 6  # the estimate's residual, then 5 iterations
    assert got["shine"][1].estimate_residual == pytest.approx(got["shine:refine=5"][1].estimate_residual)


def test_shine_needs_broyden_and_refuses_what_it_cannot_differentiate():
    with pytest.raises(JfbError, match="uses the iterations of solver 'broyden'"):
        jfb.ImplicitLayer(lambda u, x: 0.5 * u + x, backward="shine", solver="anderson")
    layer = jfb.ImplicitLayer(lambda u, x: torch.tanh(0.5 * u + x), backward="shine", solver="broyden", tol=1e-10)
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(JfbError, match="second derivatives"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(JfbError, match=r"does not run under torch\.func"):
        torch.func.jacrev(lambda x: layer(x).sum())(x)


def test_a_refinement_needs_a_solver_that_takes_an_initial_guess():
    from jfb.backward.linear import LinearSolver, fixed_point, register_linear_solver

    class Plain(LinearSolver):
        name = "plain"

        def solve(self, products, b, tol, max_iter):
            return fixed_point(products.vjp, b, tol, max_iter)

    register_linear_solver("plain_shine_test_only", Plain, replace=True)
    jfb.get_backward("shine:linear_solver=plain_shine_test_only")  # no refinement: the solver is never called
    with pytest.raises(JfbError, match="takes no initial guess"):
        jfb.get_backward("shine:refine=2:linear_solver=plain_shine_test_only")
