"""The functional forms of jaxopt / optimistix / lineax, checked against closed forms in float64: one problem
without a batch dimension (arguments shared, never sliced), a root ``F(u; x) = 0``, a linear system ``A w = b``."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, jacrev, vmap

import jfb
from jfb.errors import JfbError

F64 = torch.float64


def test_a_scalar_problem_without_a_batch_dimension():
    """u = 0.5 cos(u) + theta: du/dtheta = 1 / (1 + 0.5 sin u)."""

    def T(u, theta):
        return 0.5 * torch.cos(u) + theta

    theta = torch.tensor(0.3, dtype=F64, requires_grad=True)
    eq = jfb.fixed_point(T, theta, batched=False, backward="ift:tol=1e-13", solver="anderson", tol=1e-13)
    assert eq.value.shape == () and eq.fixed_point.shape == ()
    u = float(eq.fixed_point)
    assert math.isclose(u, 0.5 * math.cos(u) + 0.3, abs_tol=1e-12)
    (derivative,) = torch.autograd.grad(eq.value, theta)
    assert math.isclose(float(derivative), 1 / (1 + 0.5 * math.sin(u)), rel_tol=1e-10)

    def solve(theta):
        return jfb.fixed_point(T, theta, batched=False, backward="ift:tol=1e-13", solver="picard", tol=1e-13).value

    thetas = torch.linspace(-0.5, 0.5, 5, dtype=F64)
    derivatives = vmap(grad(solve))(thetas)
    states = vmap(solve)(thetas)
    assert torch.allclose(derivatives, 1 / (1 + 0.5 * torch.sin(states)), rtol=1e-10)


def test_a_shared_matrix_argument_is_passed_whole_and_differentiated():
    """x = (A, b), one 5-dimensional problem: u = tanh(A u + b); du/dA_ij by dense linear algebra."""
    g = torch.Generator().manual_seed(0)
    A = 0.4 * torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]
    b = torch.randn(5, generator=g, dtype=F64)

    def T(u, args):
        A, b = args
        return torch.tanh(A @ u + b)

    def solve(A):
        eq = jfb.fixed_point(T, (A, b), batched=False, latent_shape=(5,), backward="ift:tol=1e-13", tol=1e-13)
        return eq.value

    u = solve(A)
    assert u.shape == (5,)
    D = torch.diag(1 - u**2)
    # d u / d A_jk = (I - D A)^{-1} D e_j u_k
    want = torch.einsum("ij,k->ijk", torch.linalg.solve(torch.eye(5, dtype=F64) - D @ A, D), u)
    assert float((jacrev(solve)(A) - want).norm() / want.norm()) < 1e-9


def test_a_kind_of_initial_state_is_refused_for_one_problem():
    with pytest.raises(JfbError, match="a kind of initial state is drawn per sample"):
        jfb.fixed_point(lambda u, x: 0.5 * u + x, torch.ones(3), batched=False, u0="random")


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_root_find_gives_the_root_and_the_exact_implicit_gradient(solver):
    """F(u; x) = u + 0.2 u^3 - x: du/dx = 1 / (1 + 0.6 u^2)."""
    x = torch.linspace(-1, 1, 7, dtype=F64)[:, None].requires_grad_()
    eq = jfb.root_find(lambda u, x: u + 0.2 * u**3 - x, x, solver=solver, tol=1e-13, backward="ift:tol=1e-13")
    u = eq.fixed_point
    assert float((u + 0.2 * u**3 - x).abs().max()) < 1e-12
    (derivative,) = torch.autograd.grad(eq.value.sum(), x)
    assert torch.allclose(derivative, 1 / (1 + 0.6 * u**2), rtol=1e-10)


def _system(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(12, 12, generator=g, dtype=F64)
    A = torch.eye(12, dtype=F64) + 0.5 * M / torch.linalg.matrix_norm(M, ord=2)  # I - A contracts
    return A, torch.randn(12, generator=g, dtype=F64)


@pytest.mark.parametrize("solver", ["gmres", "cg", "fixed_point"])
def test_linear_solve_with_each_solver_matches_a_dense_solve(solver):
    A, b = _system()
    w, info = jfb.linear_solve(lambda v: A @ v, b, solver=solver, tol=1e-12, max_iter=500)
    assert info.status == "converged" and info.relative_residual <= 1e-12
    exact = torch.linalg.solve(A, b)
    assert float((w - exact).norm() / exact.norm()) < 1e-10


def test_linear_solve_reports_a_missed_tolerance():
    A, b = _system(1)
    _, info = jfb.linear_solve(lambda v: A @ v, b, solver="gmres", tol=1e-12, max_iter=2)
    assert info.status == "max_iter" and info.iterations == 2 and info.relative_residual > 1e-12


def _nested_problem():
    g = torch.Generator().manual_seed(2)
    A, B = (0.3 * torch.randn(n, n, generator=g, dtype=F64) for n in (4, 3))

    def T(u, x):
        first, second = u["pair"]
        return {"a": torch.tanh(u["a"] @ A.T + x), "pair": (torch.tanh(first @ B.T + u["a"][:, :3]), 0.5 * second)}

    u0 = {"a": torch.zeros(2, 4, dtype=F64), "pair": (torch.zeros(2, 3, dtype=F64), torch.ones(2, 2, 2, dtype=F64))}
    return T, u0, torch.randn(2, 4, generator=g, dtype=F64)


def test_a_state_nested_in_tuples_and_dicts_keeps_its_structure_and_exact_gradients():
    T, u0, x = _nested_problem()
    gradients = []
    for backward, solver in (("ift:tol=1e-13", "anderson"), ("unroll", "picard")):
        x_ = x.clone().requires_grad_()
        eq = jfb.fixed_point(T, x_, u0=u0, backward=backward, solver=solver, tol=1e-13, max_iter=300)
        assert list(eq.value) == ["a", "pair"] and eq.value["pair"][1].shape == (2, 2, 2)
        assert float(eq.fixed_point["pair"][1].abs().max()) < 1e-12  # 0.5^k -> 0
        gradients.append(torch.autograd.grad(eq.value["pair"][0].sum(), x_)[0])
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-9, atol=1e-12) and float(gradients[0].norm()) > 0.1


def test_a_nested_state_of_another_structure_is_named():
    T, u0, x = _nested_problem()
    with pytest.raises(JfbError, match="T must return a state of u's shape"):
        jfb.fixed_point(lambda u, x: {"a": T(u, x)["a"]}, x, u0=u0)


def test_a_shared_argument_of_a_batched_problem_is_never_sliced():
    """x = (inputs, jfb.Shared(A)); samples converge at different iterations and freeze (their rows of inputs are
    sliced away), A reaches T whole; d(sum u*)/dA against dense linear algebra, sample by sample."""
    g = torch.Generator().manual_seed(3)
    A = (0.5 * torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]).requires_grad_()
    inputs = torch.randn(6, 5, generator=g, dtype=F64) * torch.logspace(-3, 0, 6, dtype=F64)[:, None]

    def T(u, x):
        inputs, A = x
        return torch.tanh(u @ A.T + inputs)

    eq = jfb.fixed_point(T, (inputs, jfb.Shared(A)), backward="ift:tol=1e-13", tol=1e-12, freeze_converged=True)
    assert len(set(eq.stats.iterations.tolist())) > 1  # the samples did stop at different iterations
    (got,) = torch.autograd.grad(eq.value.sum(), A)
    want = torch.zeros(5, 5, dtype=F64)
    for u in eq.fixed_point:
        D = torch.diag(1 - u**2)
        w = torch.linalg.solve((torch.eye(5, dtype=F64) - D @ A.detach()).T, torch.ones(5, dtype=F64))
        want += torch.outer(D @ w, u)
    assert float((got - want).norm() / want.norm()) < 1e-9


def test_a_solution_computed_elsewhere_gets_its_implicit_gradient():
    """jaxopt's custom_root: u* found by another solver (here dense Newton), differentiated by IFT through one
    application of T from it (max_iter=1; the linear solve's own cap given, since it follows max_iter otherwise)."""
    g = torch.Generator().manual_seed(4)
    W = 0.5 * torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]
    x = torch.randn(1, 5, generator=g, dtype=F64, requires_grad=True)

    def T(u, x):
        return torch.tanh(u @ W.T + x)

    u = torch.zeros(5, dtype=F64)
    for _ in range(30):  # Newton on u - T(u) = 0, elsewhere
        residual = u - T(u[None], x.detach())[0]
        jacobian = torch.eye(5, dtype=F64) - torch.diag(1 - T(u[None], x.detach())[0] ** 2) @ W
        u = u - torch.linalg.solve(jacobian, residual)
    eq = jfb.fixed_point(T, x, u0=u[None], solver="picard", tol=None, max_iter=1, backward="ift:tol=1e-13:max_iter=100")
    assert float(eq.stats.abs_residual) < 1e-14  # it was a fixed point
    (got,) = torch.autograd.grad(eq.value.sum(), x)
    D = torch.diag(1 - u**2)
    want = torch.linalg.solve((torch.eye(5, dtype=F64) - D @ W).T, torch.ones(5, dtype=F64)) @ D
    assert float((got[0] - want).norm() / want.norm()) < 1e-12
