"""Gradients of every backward mode against a dense solve of (I - J) (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
from operators import dense_implicit_gradient, flat, layer_gradient, tanh_problem

import jfb


def _dense_gradient(op, u_star, x, head):
    return flat(dense_implicit_gradient(op, u_star, x, head))


@pytest.mark.parametrize("dim", [8, 24, 64])
@pytest.mark.parametrize("backward", ["ift", "ift:cg", "ift:fixed_point", "ift:gmres"])
def test_ift_matches_dense_solve(dim, backward):
    op, x, head = tanh_problem(dim, 0.8, seed=dim)
    mode = jfb.get_backward(f"{backward}:tol=1e-12:max_iter=500")  # "ift": the default linear solver
    assert repr(mode.linear_solver) == (backward.partition(":")[2] or jfb.backward.DEFAULT_LINEAR_SOLVER)
    grad, layer, u = layer_gradient(op, x, head, mode)
    dense = _dense_gradient(op, u, x, head)
    assert layer.last_stats.backward.status == "converged"
    assert (grad - dense).norm() / dense.norm() < 1e-6


def test_neumann_error_decreases_geometrically_and_k0_is_jfb():
    op, x, head = tanh_problem(16, 0.7, seed=3)
    jfb_grad, _, u = layer_gradient(op, x, head, "jfb")
    dense = _dense_gradient(op, u, x, head)
    errors = []
    for k in range(7):
        grad, _, _ = layer_gradient(op, x, head, f"neumann:{k}")
        if k == 0:
            assert torch.equal(grad, jfb_grad)
        errors.append(float((grad - dense).norm() / dense.norm()))
    ratios = [b / a for a, b in itertools.pairwise(errors)]
    # the truncation error is a tail of sum J^i with ||J|| <= 0.7: each extra term shrinks it
    assert all(r < 0.75 for r in ratios), ratios
    assert errors[-1] < 0.7**6 * errors[0] * 1.5


@pytest.mark.parametrize("seed", range(40))
def test_jfb_is_a_descent_direction(seed):
    dim = 8 + (seed * 7) % 40
    op, x, head = tanh_problem(dim, 0.5 + 0.4 * (seed % 5) / 4, seed=seed)
    jfb_grad, _, u = layer_gradient(op, x, head, "jfb")
    dense = _dense_gradient(op, u, x, head)
    assert float(jfb_grad @ dense) > 0


def test_unroll_equals_autograd_through_the_same_loop():
    op, x, head = tanh_problem(12, 0.9, seed=5)
    layer = jfb.ImplicitLayer(op, solver="picard", backward="unroll", tol=1e-30, max_iter=25)
    (head * layer(x)).sum().backward()
    unrolled = flat(p.grad for p in op.parameters())
    op.zero_grad()
    u = torch.zeros_like(x)
    for _ in range(25 + 1):  # 25 solver iterations, then the layer's final application
        u = op(u, x)
    (head * u).sum().backward()
    reference = flat(p.grad for p in op.parameters())
    assert torch.allclose(unrolled, reference, rtol=1e-12, atol=1e-14)
    assert layer.last_stats.j_matvecs == 25


class CountingVJP(torch.autograd.Function):
    """Identity whose backward counts how often a gradient flows through it."""

    calls = 0

    @staticmethod
    def forward(ctx, u):
        return u.view_as(u)

    @staticmethod
    def backward(ctx, grad):
        CountingVJP.calls += 1
        return grad


@pytest.mark.parametrize("backward", ["jfb", "neumann:1", "neumann:3", "ift:fixed_point", "ift:gmres"])
def test_j_matvec_counts_match_independent_count(backward):
    """Count backward passes through T w.r.t. u with an autograd probe on T's u input."""
    op, x, head = tanh_problem(10, 0.6, seed=1)
    probed = lambda u, x_: op(CountingVJP.apply(u), x_)  # noqa: E731
    layer = jfb.ImplicitLayer(probed, backward=backward, tol=1e-12, max_iter=200)
    u = layer(x)
    CountingVJP.calls = 0
    (head * u).sum().backward()
    stats = layer.last_stats
    assert stats.j_matvecs == CountingVJP.calls
    expected = {"jfb": 0, "neumann:1": 1, "neumann:3": 3}
    if backward in expected:
        assert stats.j_matvecs == expected[backward]
    if backward == "ift:fixed_point":
        assert stats.j_matvecs == stats.backward.iterations


def test_cg_counts_two_products_per_iteration():
    """CGNR: one J^T and one J product per iteration, plus the J^T-graph set-up for J products."""
    op, x, head = tanh_problem(10, 0.6, seed=2)
    layer = jfb.ImplicitLayer(op, backward="ift:cg", tol=1e-12, max_iter=200)
    (head * layer(x)).sum().backward()
    b = layer.last_stats.backward
    assert b.status == "converged"
    assert b.j_matvecs == 2 * b.iterations + 1


def test_ift_max_iter_follows_the_forward_max_iter_and_a_missed_tolerance_is_warned():
    op, x, head = tanh_problem(10, 0.95, seed=4)
    layer = jfb.ImplicitLayer(op, backward="ift:fixed_point", tol=1e-12, max_iter=7)
    with pytest.warns(
        jfb.ConvergenceWarning, match=r"backward linear solve \(ift:fixed_point\) max_iter after 7 iterations"
    ):
        (head * layer(x)).sum().backward()
    assert layer.last_stats.backward.iterations == 7
    assert layer.last_stats.backward.status == jfb.Status.MAX_ITER
    layer.options = layer.options.replace(max_iter=9)  # a later change reaches the backward cap too
    with pytest.warns(jfb.ConvergenceWarning):
        (head * layer(x)).sum().backward()
    assert layer.last_stats.backward.iterations == 9


@pytest.mark.parametrize("on_failure", ["raise", "ignore"])
def test_backward_solve_failures_follow_on_failure(on_failure, recwarn):
    op, x, head = tanh_problem(10, 0.95, seed=4)
    layer = jfb.ImplicitLayer(
        op, backward="ift:gmres:tol=1e-12:max_iter=3", tol=1e-12, max_iter=200, on_failure=on_failure
    )
    loss = (head * layer(x)).sum()
    if on_failure == "raise":
        with pytest.raises(jfb.FixedPointError, match=r"ift:gmres\) max_iter after 3 iterations"):
            loss.backward()
    else:
        loss.backward()
        assert layer.last_stats.backward.status == "max_iter" and not [
            w for w in recwarn if w.category is jfb.ConvergenceWarning
        ]


def test_backward_options_by_name():
    mode = jfb.get_backward("ift:cg:tol=1e-8:max_iter=100")
    assert (repr(mode.linear_solver), mode.tol, mode.max_iter) == ("cg", 1e-8, 100)
    assert repr(jfb.get_backward("ift").linear_solver) == jfb.backward.DEFAULT_LINEAR_SOLVER == "fixed_point"
    with pytest.raises(jfb.JfbError, match=r"bad backward mode 'ift:1e-8'.*unknown IFT linear solver"):
        jfb.get_backward("ift:1e-8")
