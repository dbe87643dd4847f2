"""The IFT linear solvers on small dense systems, where the answer is known."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import jfb
from jfb.backward.linear import LinearSolver, fixed_point, register_linear_solver
from jfb.errors import JfbError
from jfb.status import Status


def _system(radius: float, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    J = q @ torch.diag(torch.linspace(-radius, radius, n, dtype=torch.float64)) @ q.T  # symmetric, known spectrum
    return J, torch.randn(n, generator=generator, dtype=torch.float64)


def test_fixed_point_iteration_solves_a_contraction():
    J, b = _system(0.5)
    w, info = fixed_point(lambda v: J.T @ v, b, 1e-10, 200)
    assert info.status == Status.CONVERGED
    assert torch.allclose(w, torch.linalg.solve(torch.eye(6, dtype=J.dtype) - J.T, b), atol=1e-9)


def test_a_diverging_fixed_point_iteration_returns_its_best_iterate_not_the_last():
    """Spectral radius 1.5: the iterates grow like 1.5^k; the last one would be a gradient of any size."""
    J, b = _system(1.5)
    w, info = fixed_point(lambda v: J.T @ v, b, 1e-10, 40)
    residual = (J.T @ w + b - w).norm() / b.norm()
    assert info.status == Status.MAX_ITER
    assert residual.item() == pytest.approx(info.relative_residual, rel=1e-9)  # the reported residual is w's own
    assert w.norm() < 10 * b.norm()  # the last iterate has norm ~1.5^40 ||b||
    last = b.clone()
    for _ in range(40):
        last = J.T @ last + b
    assert last.norm() > 1e6 * b.norm()


def test_a_fixed_point_iteration_that_overflows_returns_its_best_finite_iterate():
    """Spectral radius 1e15 in float32: the iterates overflow to inf, their residuals to NaN (which compares false
    against the best residual); the solve must still return its best iterate, never the non-finite last one."""
    J, b = _system(1e15)
    J, b = J.float(), b.float()
    w, info = fixed_point(lambda v: J.T @ v, b, 1e-6, 10)
    assert bool(torch.isfinite(w).all()) and torch.equal(w, b)  # the first iterate had the smallest residual
    assert info.status == Status.MAX_ITER
    assert info.relative_residual == pytest.approx(((J.T @ b).norm() / b.norm()).item(), rel=1e-5)


# --- the backward-solve levers of ift (issue: exact gradients near JFB's price) ---


def _tanh_problem(radius: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(30, 30, generator=g, dtype=torch.float64)
    W = radius * W / torch.linalg.matrix_norm(W, ord=2)
    U = torch.randn(30, 4, generator=g, dtype=torch.float64)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    return (lambda u, x: torch.tanh(u @ W.T + x @ U.T)), W, U, x


def _dense_gradient(T, W, U, x):
    """d/dx sum(u*^2) per sample by dense linear algebra: G^T 2u* with G = (I - D W)^{-1} D U."""
    u = torch.zeros(x.shape[0], 30, dtype=torch.float64)
    for _ in range(2000):
        u = T(u, x)
    rows = []
    for ui in u:
        D = torch.diag(1 - ui**2)
        G = torch.linalg.solve(torch.eye(30, dtype=torch.float64) - D @ W, D @ U)
        rows.append(G.T @ (2 * ui))
    return torch.stack(rows)


def _gradient(T, x, backward, **settings):
    layer = jfb.ImplicitLayer(T, backward=backward, solver="anderson", tol=1e-12, max_iter=300, latent_shape=(30,))
    x = x.clone().requires_grad_()
    (layer(x) ** 2).sum().backward()
    return x.grad, layer.last_stats.backward, layer


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden", "gmres", "cg"])
def test_every_linear_solver_gives_the_dense_implicit_gradient(solver):
    T, W, U, x = _tanh_problem(1.6)
    grad, stats, _ = _gradient(T, x, f"ift:{solver}:tol=1e-12")
    want = _dense_gradient(T, W, U, x)
    assert stats.status == "converged"
    assert float((grad - want).norm() / want.norm()) < 1e-9


def test_anderson_and_gmres_take_fewer_products_than_the_fixed_point_iteration_on_a_slow_contraction():
    T, _, _, x = _tanh_problem(1.6)
    solvers = ("fixed_point", "anderson", "gmres")
    products = {solver: _gradient(T, x, f"ift:{solver}:tol=1e-10")[1].j_matvecs for solver in solvers}
    assert products["anderson"] < 0.8 * products["fixed_point"]
    assert products["gmres"] < 0.8 * products["fixed_point"]


def _cos_gradient(backward: str):
    """u = cos(u) + pi/2: J = -sin(u*) = -1 at u* = pi/2, so w <- J w + g oscillates; du*/dtheta = 1/(1 - J) = 1/2."""
    theta = torch.tensor([[math.pi / 2]], dtype=torch.float64, requires_grad=True)
    layer = jfb.ImplicitLayer(lambda u, x: torch.cos(u) + x, backward=backward, tol=1e-10, max_iter=200)
    layer(theta).sum().backward()
    return float(theta.grad), layer.last_stats.backward


def test_the_fixed_point_iteration_hands_a_solve_without_progress_to_gmres_when_asked():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missed, nothing to warn about
        gradient, stats = _cos_gradient("ift:fixed_point:fallback=gmres")
    assert gradient == pytest.approx(0.5, abs=1e-8)
    assert (stats.status, stats.fallback) == ("converged", "gmres")
    assert stats.iterations < 20  # 10 iterations without progress, then GMRES
    with pytest.warns(jfb.ConvergenceWarning, match="backward linear solve"):
        gradient, stats = _cos_gradient("ift")  # the default: no fallback, the best iterate, reported missed
    assert abs(gradient - 0.5) > 0.1
    assert (stats.status, stats.fallback) == ("max_iter", "")


def test_the_fallback_leaves_a_contraction_alone():
    T, _, _, x = _tanh_problem(0.9)
    grad, stats, _ = _gradient(T, x, "ift:fixed_point:fallback=gmres:tol=1e-10")
    plain, plain_stats, _ = _gradient(T, x, "ift:tol=1e-10")
    assert torch.equal(grad, plain)
    assert (stats.j_matvecs, stats.fallback) == (plain_stats.j_matvecs, "")


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "gmres"])
def test_a_warm_start_begins_at_the_previous_solution_and_restarts_cold_on_a_new_shape(solver):
    T, W, U, x = _tanh_problem(1.6)
    backward = f"ift:{solver}:tol=1e-10:warm_start=1"
    layer = jfb.ImplicitLayer(T, backward=backward, solver="anderson", tol=1e-12, max_iter=300, latent_shape=(30,))

    def backward_iterations(x):
        x = x.clone().requires_grad_()
        (layer(x) ** 2).sum().backward()
        return layer.last_stats.backward.iterations, x.grad

    cold, _ = backward_iterations(x)
    warm, grad = backward_iterations(x)  # the same system again: the previous solution already solves it
    assert cold >= 10 and warm <= 2
    assert float((grad - _dense_gradient(T, W, U, x)).norm()) < 1e-8 * float(grad.norm()) * 100
    other_shape, _ = backward_iterations(x[:5])
    assert other_shape >= 10  # a batch of another size starts cold
    assert repr(layer.backward).endswith(":warm_start=1")


def test_a_tolerance_schedule_tightens_geometrically_over_the_gradient_solves_and_then_holds():
    T, W, U, x = _tanh_problem(0.9)
    backward = "ift:tol=1e-2:tol_end=1e-8:tol_solves=4"
    layer = jfb.ImplicitLayer(T, backward=backward, solver="anderson", tol=1e-12, max_iter=300, latent_shape=(30,))
    assert repr(layer.backward) == "ift:fixed_point:tol=0.01:tol_end=1e-08:tol_solves=4"
    tolerances, residuals, iterations = [], [], []
    for _ in range(6):
        tolerances.append(layer.backward.current_tol())
        xg = x.clone().requires_grad_()
        (layer(xg) ** 2).sum().backward()
        stats = layer.last_stats.backward
        residuals.append(stats.relative_residual)
        iterations.append(stats.iterations)
    expected = [10 ** (-2 - 1.5 * k) for k in range(4)] + [1e-8, 1e-8]
    assert tolerances == pytest.approx(expected, rel=1e-12)
    assert all(r <= t for r, t in zip(residuals, tolerances))
    assert iterations[0] < iterations[2] < iterations[4] == iterations[5]  # looser early, fewer products
    assert float((xg.grad - _dense_gradient(T, W, U, x)).norm()) < 1e-6 * float(xg.grad.norm())


@pytest.mark.parametrize(
    ("options", "message"),
    [(":tol_end=1e-6", "give both tol_end and tol_solves"), (":tol_end=0:tol_solves=5", "tol_end must be a number")],
)
def test_a_tolerance_schedule_needs_a_positive_end_and_a_number_of_solves(options, message):
    with pytest.raises(JfbError, match=message):
        jfb.get_backward("ift" + options)


def test_a_warm_start_needs_a_solver_that_takes_an_initial_guess():
    class Plain(LinearSolver):
        name = "plain"

        def solve(self, products, b, tol, max_iter, w0=None):
            return fixed_point(products.vjp, b, tol, max_iter)

    register_linear_solver("plain_test_only", Plain, replace=True)
    jfb.get_backward("ift:plain_test_only")  # fine cold
    with pytest.raises(JfbError, match="takes no initial guess"):
        jfb.get_backward("ift:plain_test_only:warm_start=1")


def test_per_sample_best_iterates_keep_a_diverging_sample_from_spoiling_the_others():
    """Two decoupled samples, one contracting (radius 0.5) and one diverging (1.5): per sample, the first is solved
    to tolerance and the second keeps an early iterate; over the whole batch the diverging one decides for both."""
    from jfb.backward.linear import fixed_point_per_sample

    J_good, b_good = _system(0.5)
    J_bad, b_bad = _system(1.5)
    b = torch.stack([b_good, b_bad])

    def Jt(w):
        return torch.stack([J_good.T @ w[0], J_bad.T @ w[1]])

    w, info = fixed_point_per_sample(Jt, b, 1e-10, 60)
    exact_good = torch.linalg.solve(torch.eye(6, dtype=b.dtype) - J_good.T, b_good)
    assert torch.allclose(w[0], exact_good, atol=1e-8)
    assert w[1].norm() < 10 * b_bad.norm() and info.status == Status.MAX_ITER
    whole, _ = fixed_point(Jt, b, 1e-10, 60)
    assert float((whole[0] - exact_good).norm()) > 1e-3  # the batch's best iterate is an early one for both


def test_ift_takes_the_jacobian_at_the_output_of_a_solve_stopped_short():
    """A fixed depth of 3 stops far from the fixed point: u* = u_3 and the output is T(u_3); the gradient is
    T_x(u_3)^T (I - J(T(u_3))^T)^{-1} dl/dout, with J at the output the layer reports (torchdeq's point), not at u_3."""
    g = torch.Generator().manual_seed(1)
    W = 0.9 * torch.randn(5, 5, generator=g, dtype=torch.float64) / 5**0.5
    x = torch.randn(1, 5, generator=g, dtype=torch.float64)

    def T(u, x):
        return torch.tanh(u @ W.T + x)

    layer = jfb.ImplicitLayer(T, backward="ift:gmres:tol=1e-13:max_iter=50", solver="picard", tol=None, max_iter=3)
    xg = x.clone().requires_grad_()
    out = layer(xg)
    (out**2).sum().backward()
    u = torch.zeros(1, 5, dtype=torch.float64)
    for _ in range(3):  # u* = u_3 (three Picard evaluations); the output is T(u_3)
        u = T(u, x)
    o = T(u, x)
    points = (("out", o), ("u", u))
    J_at = {name: torch.autograd.functional.jacobian(lambda v: T(v, x), p)[0, :, 0, :] for name, p in points}
    T_x = torch.autograd.functional.jacobian(lambda y: T(u, y), x)[0, :, 0, :]
    eye = torch.eye(5, dtype=torch.float64)
    want = {name: T_x.T @ torch.linalg.solve(eye - J.T, 2 * o[0]) for name, J in J_at.items()}
    assert torch.allclose(out, o, atol=1e-14)
    assert torch.allclose(xg.grad[0], want["out"], rtol=1e-10)
    assert float((want["out"] - want["u"]).norm()) > 1e-3 * float(want["out"].norm())  # the two points differ
