"""Core API v3: one call's outcome is a returned value; one way to extend solvers, backward modes, linear solvers."""

from __future__ import annotations

import warnings

import pytest
import torch
from operators import TIGHT, dense_implicit_gradient, flat, tanh_problem

import jfb
from jfb.backward import LinearSolveInfo, LinearSolver
from jfb.status import Status


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fixed_point_returns_the_solution_its_statistics_and_the_gradient_of_the_backward_mode():
    op, x, head = tanh_problem()
    result = jfb.fixed_point(op, x, backward="ift", **TIGHT)
    assert isinstance(result, jfb.Equilibrium) and result.stats.status == Status.CONVERGED
    assert torch.allclose(result.fixed_point, op(result.fixed_point, x), atol=1e-12)
    assert not result.fixed_point.requires_grad and result.value.requires_grad
    assert result.stats.backward.status == Status.NOT_RUN  # filled in when the backward pass runs
    (head * result.value).sum().backward()
    assert result.stats.backward.status == Status.CONVERGED and result.stats.backward.mode == "ift:fixed_point"
    dense = flat(dense_implicit_gradient(op, result.fixed_point, x, head))
    assert _relative_error(flat(p.grad for p in op.parameters()), dense) < 1e-5  # IFT tol 1e-6
    assert result.jacobian_penalty is None and result.correction_states is None and result.checks == []


def test_fixed_point_under_no_grad_returns_u_star_as_the_value():
    op, x, _ = tanh_problem()
    with torch.no_grad():
        result = jfb.fixed_point(op, x, options=jfb.SolveOptions(**TIGHT))
    assert torch.equal(result.value, result.fixed_point) and not result.stats.attached
    assert not result.value.requires_grad


def test_one_layer_called_twice_in_one_step_keeps_both_results_and_both_backward_statistics():
    op, x, head = tanh_problem()
    layer = jfb.ImplicitLayer(op, "ift", **TIGHT)
    first, second = layer.solve(x), layer.solve(2 * x)
    assert layer.last_stats is second.stats  # the documented convenience: the last call's statistics
    ((head * first.value).sum() + (head * second.value).square().sum()).backward()
    for result in (first, second):
        assert result.stats.backward.status == Status.CONVERGED and result.stats.backward.j_matvecs > 0
    assert first.stats.backward is not second.stats.backward
    assert not torch.allclose(first.fixed_point, second.fixed_point)
    u1, u2 = first.fixed_point, second.fixed_point  # each call's gradient, through its own linear solve
    dense = [
        a + b
        for a, b in zip(
            dense_implicit_gradient(op, u1, x, head), dense_implicit_gradient(op, u2, 2 * x, 2 * head**2 * u2)
        )
    ]
    assert _relative_error(flat(p.grad for p in op.parameters()), flat(dense)) < 1e-5  # IFT tol 1e-6


def test_forward_is_solve_value_and_the_layer_drops_into_sequential():
    op, x, _ = tanh_problem()
    layer = jfb.ImplicitLayer(op, **TIGHT)
    model = torch.nn.Sequential(layer, torch.nn.Linear(12, 3, dtype=torch.float64))
    assert torch.equal(model[0](x), layer.solve(x).value) and model(x).shape == (4, 3)


class CountingGMRES(LinearSolver):
    """A user's linear solver: GMRES from the library, counting its calls."""

    name = "counting"

    def __init__(self, restart: int = 30) -> None:
        self.calls, self.inner = 0, jfb.backward.GMRES(restart)

    def solve(self, products, b, tol, max_iter) -> tuple[torch.Tensor, LinearSolveInfo]:
        self.calls += 1
        return self.inner.solve(products, b, tol, max_iter)


@pytest.fixture
def counting_solver():
    made: list[CountingGMRES] = []

    def factory(restart: int = 30) -> CountingGMRES:
        made.append(CountingGMRES(restart))
        return made[-1]

    jfb.register_linear_solver("counting", factory, "counting[:restart=N]", replace=True)
    return made


def test_a_registered_linear_solver_is_used_by_ift_by_name_with_its_options(counting_solver):
    op, x, head = tanh_problem()
    result = jfb.fixed_point(op, x, backward="ift:counting:restart=5:tol=1e-10", **TIGHT)
    (head * result.value).sum().backward()
    (solver,) = counting_solver
    assert solver.calls == 1 and solver.inner.restart == 5 and result.stats.backward.mode == "ift:counting:tol=1e-10"
    dense = flat(dense_implicit_gradient(op, result.fixed_point, x, head))
    assert _relative_error(flat(p.grad for p in op.parameters()), dense) < 1e-8


def test_a_registered_linear_solver_is_used_by_the_autopilot_for_its_checks_and_its_top_level(counting_solver):
    op, x, head = tanh_problem()
    layer = jfb.ImplicitLayer(op, "auto:every=1:linear_solver=counting", **TIGHT)
    result = layer.solve(x)
    (head * result.value).sum().backward()
    (solver,) = counting_solver
    assert solver.calls == 1 and len(result.checks) == 1 and result.checks[0].cosine > 0.9
    assert repr(layer.backward_mode.levels[-1]) == "ift:counting"


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        ("solver", "andersen", r"unknown solver 'andersen'; choose one of .*\(did you mean 'anderson'\?\)"),
        ("solver", "anderson:memroy=3", r"unknown option of solver 'anderson' 'memroy'.*did you mean 'memory'"),
        ("backward", "ift:gmres:restrat=3", r"unknown option of IFT linear solver 'gmres' 'restrat'.*'restart'"),
        ("backward", "neumman:2", r"unknown backward mode 'neumman'.*did you mean 'neumann:K'"),
        ("backward", "auto:linear_solver=qr", r"unknown IFT linear solver 'qr'"),
    ],
)
def test_every_registry_names_the_closest_valid_choice(kind, spec, message):
    with pytest.raises(jfb.JfbError, match=message):
        if kind == "solver":
            jfb.SolveOptions(solver=spec)
        else:
            jfb.get_backward(spec)


def test_a_solver_is_configured_by_keywords_or_by_the_same_spec_string():
    by_keywords = jfb.SolveOptions(solver="anderson", solver_options={"memory": 3})
    by_spec = jfb.SolveOptions(solver="anderson:memory=3")
    assert by_keywords.method == by_spec.method and by_spec.solver_name == "anderson"


def test_the_old_spellings_work_for_one_release_with_a_deprecation_warning():
    op, x, _ = tanh_problem()
    with pytest.warns(DeprecationWarning, match=r"jfb\.SolverState is deprecated.*jfb\.SolveStats"):
        assert jfb.SolverState is jfb.SolveStats
    with pytest.warns(DeprecationWarning, match=r"jacobian_penalty=N\) is deprecated.*jacobian_probes=N"):
        layer = jfb.ImplicitLayer(op, jacobian_penalty=2, **TIGHT)
    assert layer.jacobian_probes == 2
    layer(x)
    with pytest.warns(DeprecationWarning, match=r"layer\.jacobian_penalty is deprecated"):
        assert layer.jacobian_penalty.requires_grad
    with pytest.warns(DeprecationWarning, match=r"layer\.last_fixed_point is deprecated"):
        assert layer.last_fixed_point.shape == x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer.last_stats is not None  # the documented convenience is not deprecated
