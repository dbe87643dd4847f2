"""Forward solvers: convergence, per-sample statistics, failure statuses."""

from __future__ import annotations

import warnings

import pytest
import torch
from operators import ScalarLinearOperator, SlowLinearOperator, TanhOperator

import jfb

SOLVERS = ["picard", "anderson", "broyden"]


def _tanh_problem(contraction: float, dim: int = 32, batch: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return TanhOperator(dim, contraction, seed=seed), torch.randn(batch, dim, dtype=torch.float64)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_solvers_reach_tolerance_on_contractions(solver, stop_mode):
    op, x = _tanh_problem(0.8)
    layer = jfb.ImplicitLayer(op, solver=solver, tol=1e-8, max_iter=300, stop_mode=stop_mode)
    with torch.no_grad():
        u = layer(x)
    stats = layer.last_stats
    assert stats.status == "converged" and bool(stats.converged.all())
    residual = stats.abs_residual if stop_mode == "abs" else stats.rel_residual
    assert float(residual.max()) <= 1e-8
    with torch.no_grad():
        true_residual = (op(u, x) - u).norm(dim=1)
    assert float(true_residual.max()) <= 1e-7


def test_anderson_needs_far_fewer_evaluations_on_a_slow_contraction():
    torch.manual_seed(0)
    op, x = SlowLinearOperator(48, 0.95), torch.randn(8, 48, dtype=torch.float64)
    evals = {}
    for solver in ("picard", "anderson", "broyden"):
        layer = jfb.ImplicitLayer(op, solver=solver, tol=1e-6, max_iter=1000)
        with torch.no_grad():
            layer(x)
        assert layer.last_stats.status == "converged", solver
        evals[solver] = layer.last_stats.t_evals
    assert evals["anderson"] * 2 <= evals["picard"], evals
    assert evals["broyden"] * 2 <= evals["picard"], evals


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("freeze", [False, True])
def test_mixed_batch_reports_per_sample_iterations(solver, freeze):
    factors = torch.tensor([0.1, 0.5, 0.9, 0.1], dtype=torch.float64)
    c = torch.ones(4, 3, dtype=torch.float64)
    x = torch.cat([factors[:, None], c], dim=1)
    layer = jfb.ImplicitLayer(ScalarLinearOperator(), solver=solver, tol=1e-9, max_iter=500, freeze_converged=freeze)
    with torch.no_grad():
        u = layer(x, u0=torch.zeros(4, 3, dtype=torch.float64))
    iters = layer.last_stats.iterations
    assert layer.last_stats.status == "converged"
    assert torch.allclose(u, c / (1 - factors[:, None]), atol=1e-7)
    if solver == "picard":
        # residual of Picard on a*u + c from 0 is a^(k-1) * |c|: first k with that <= tol
        expected = [int(torch.ceil(torch.log(torch.tensor(1e-9 / 3**0.5)) / torch.log(a))) + 1 for a in factors]
        assert iters.tolist() == expected
    else:
        assert iters[0] == iters[3] and iters[0] <= iters[2]


def test_freezing_evaluates_only_unconverged_samples():
    calls = []

    def op(u, x):
        calls.append(u.shape[0])
        return x[:, :1] * u + x[:, 1:]

    x = torch.tensor([[0.1, 1.0], [0.9, 1.0]], dtype=torch.float64)
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-9, max_iter=500, freeze_converged=True)
    with torch.no_grad():
        layer(x, u0=torch.zeros(2, 1, dtype=torch.float64))
    iters = layer.last_stats.iterations.tolist()
    assert sum(calls) == sum(iters)  # every sample evaluated exactly until it converged
    assert calls.count(2) == min(iters)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_expansive_operator_is_reported_as_diverged(stop_mode):
    # in "rel" mode the relative residual of 2u + x stays near 1/2: only the absolute one shows it
    layer = jfb.ImplicitLayer(
        lambda u, x: 2.0 * u + x, solver="picard", tol=1e-6, max_iter=200, stop_mode=stop_mode, on_failure="ignore"
    )
    with torch.no_grad():
        layer(torch.ones(3, 4))
    assert layer.last_stats.status == "diverged"
    assert layer.last_stats.forward.t_evals < 30  # caught once the residual grew 1e4-fold, long before overflow
    assert not bool(layer.last_stats.converged.any())


def test_an_unrolled_solve_that_diverges_is_reported_not_raised():
    """Regression: the stop decision's noise floor (computed when the excess is positive) ran with grad enabled
    inside an unrolled solve, and writing it into the tracker's buffer raised."""
    T = lambda u, x: 2.0 * u + x  # noqa: E731
    layer = jfb.ImplicitLayer(T, "unroll", solver="picard", tol=1e-6, max_iter=50, on_failure="ignore")
    u = layer(torch.ones(3, 4, requires_grad=True))
    assert layer.last_stats.status == "diverged" and u.requires_grad


@pytest.mark.parametrize("solver", SOLVERS)
def test_operator_without_fixed_point_never_reports_converged(solver):
    layer = jfb.ImplicitLayer(lambda u, x: u + x + u * u, solver=solver, tol=1e-6, max_iter=200, on_failure="ignore")
    with torch.no_grad():
        layer(torch.ones(3, 4))
    assert layer.last_stats.status in ("diverged", "non_finite", "max_iter")
    assert not bool(layer.last_stats.converged.any())


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_accelerated_solvers_find_repelling_fixed_points(solver):
    """2u + x is expansive but has the fixed point -x, which Anderson and Broyden find."""
    x = torch.randn(3, 4, dtype=torch.float64)
    layer = jfb.ImplicitLayer(lambda u, x: 2.0 * u + x, solver=solver, tol=1e-9, max_iter=200)
    with torch.no_grad():
        u = layer(x)
    assert layer.last_stats.status == "converged"
    assert torch.allclose(u, -x, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_input_gives_non_finite_and_is_not_hidden(solver):
    op, x = _tanh_problem(0.5)
    x[2, 0] = float("nan")
    layer = jfb.ImplicitLayer(op, solver=solver, tol=1e-6, max_iter=50)
    with pytest.warns(jfb.ConvergenceWarning, match="non_finite"), torch.no_grad():
        u = layer(x)
    assert layer.last_stats.status == "non_finite"
    assert not bool(torch.isfinite(u[2]).all())  # the NaN is visible, not replaced by a stale iterate


def test_on_failure_raise():
    layer = jfb.ImplicitLayer(lambda u, x: 3.0 * u + x, solver="picard", tol=1e-6, max_iter=100, on_failure="raise")
    with pytest.raises(jfb.FixedPointError, match="diverged"):
        layer(torch.ones(2, 2))


def test_max_iter_status_and_history():
    op, x = _tanh_problem(0.95)
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-12, max_iter=5, keep_history=True)
    with pytest.warns(jfb.ConvergenceWarning, match="stopped at max_iter=5 without meeting tol=1e-12"), torch.no_grad():
        layer(x)
    stats = layer.last_stats
    assert stats.status == "max_iter" and stats.t_evals == 5
    assert stats.history.abs.shape == stats.history.rel.shape == (5, x.shape[0])  # per sample, every iteration
    assert stats.iterations.tolist() == [5] * x.shape[0]
    assert bool((stats.history.abs[-1] < stats.history.abs[0]).all())
    assert torch.equal(stats.history.abs[-1], stats.abs_residual)  # Picard returns the last iterate


def _tolerance_not_reached(**settings):
    return jfb.ImplicitLayer(lambda u, x: 0.99 * u + x, solver="picard", tol=1e-8, max_iter=5, **settings)


def test_a_tolerance_not_reached_is_a_failure_warned_once_per_layer_and_call_site():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    assert jfb.Status.MAX_ITER.failed and not jfb.Status.FIXED_DEPTH.failed and not jfb.Status.MAX_ITER.no_fixed_point
    first, second = _tolerance_not_reached(), _tolerance_not_reached()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            first(x)  # one call site: one warning for three calls
        first(x)  # another call site
        second(x)  # another layer
        fixed = jfb.ImplicitLayer(lambda u, x: 0.99 * u + x, solver="picard", tol=None, max_iter=5)
        fixed(x)  # a fixed depth ends at max_iter by design
        _tolerance_not_reached(on_failure="ignore")(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, jfb.ConvergenceWarning)]
    assert len(messages) == 3 and {w.filename for w in caught} == {__file__}
    assert "8 of 8 samples (100%) not converged" in messages[0]
    assert first.last_stats.status == "max_iter" and fixed.last_stats.status == "fixed_depth"
    with pytest.raises(jfb.FixedPointError, match=r"stopped at max_iter=5 without meeting tol=1e-08 \(abs\)"):
        _tolerance_not_reached(on_failure="raise")(x)
    with pytest.raises(jfb.FixedPointError, match="8 of 8 samples"):
        jfb.fixed_point(lambda u, x: 0.99 * u + x, x, solver="picard", tol=1e-8, max_iter=5, on_failure="raise")


def test_warm_start_saves_iterations():
    op, x = _tanh_problem(0.9)
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-8, max_iter=500)
    with torch.no_grad():
        u = layer(x)
        cold = layer.last_stats.t_evals
        layer(x, u0=u)
    assert layer.last_stats.t_evals <= 2 < cold


@pytest.mark.parametrize("solver", SOLVERS)
def test_solving_past_the_rounding_floor_stays_finite_and_is_not_divergence(solver):
    """Regressions: with residuals at (or exactly) zero Anderson's least-squares system became
    singular and returned NaN, and float noise after an exact zero was called divergence."""
    x = torch.rand(128, 1, generator=torch.Generator().manual_seed(0)) - 0.5
    layer = jfb.ImplicitLayer(lambda u, x: 0.5 * u + x, solver=solver, tol=1e-30, max_iter=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "fixed-point solve stopped at max_iter")  # tol 1e-30 may not be met
        with torch.no_grad():
            u = layer(x)
    assert layer.last_stats.status in ("converged", "max_iter")  # an exact zero residual meets any tol
    assert torch.allclose(u, 2 * x, atol=1e-6)


def _mixed_operator(x: torch.Tensor):
    """T on the rows of ``x``: row 0 contracts, row 1 reaches an exact zero residual, row 2 diverges, row 3
    drifts and turns NaN past 5 (before row 2 diverged)."""
    scale = torch.tensor([0.5, 0.0, 3.0, 1.0], dtype=x.dtype)[: x.shape[0], None]
    limit = torch.tensor([torch.inf, torch.inf, torch.inf, 5.0], dtype=x.dtype)[: x.shape[0], None]

    def T(u: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        rows = slice(None) if index is None else index
        out = scale[rows] * u + x[rows]
        return torch.where(out.abs() < limit[rows], out, torch.nan)

    return T


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rows", [2, 3, 4])
@pytest.mark.parametrize("freeze", [False, True])
def test_the_lazy_noise_floor_gives_the_statistics_of_the_precise_one(solver, rows, freeze):
    """Abs mode with a check every iteration leaves the rounding-noise floor out until the excess is positive
    (``Tracker._settle``); keeping the history computes it every iteration. Both give the same outcome."""
    x = torch.linspace(0.5, 2.0, rows * 3, dtype=torch.float64).reshape(rows, 3)
    outcomes = []
    for keep_history in (False, True):
        options = jfb.SolveOptions(
            solver=solver, tol=1e-30, max_iter=40, keep_history=keep_history, freeze_converged=freeze
        )
        _, stats = jfb.solve(_mixed_operator(x), 0 * x, options)
        outcomes.append((str(stats.status), stats.iterations.tolist(), stats.converged.tolist(), stats.t_evals))
    assert outcomes[0] == outcomes[1]
    if solver == "picard":
        assert outcomes[0][0] == {2: "max_iter", 3: "diverged", 4: "non_finite"}[rows]


@pytest.mark.parametrize("solver", SOLVERS)
def test_channels_last_iterates_give_the_same_fixed_point_and_stay_channels_last(solver):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(0.5 / conv.weight.abs().sum(dim=(1, 2, 3)).max())  # a contraction in the max norm
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    seen = []

    def T(u, index):
        seen.append(u.is_contiguous(memory_format=torch.channels_last))
        return torch.tanh(conv(u)) + (x if index is None else x[index])

    options = jfb.SolveOptions(solver=solver, tol=1e-10, max_iter=200)
    plain, _ = jfb.solve(T, torch.zeros_like(x), options)
    seen.clear()
    nhwc, state = jfb.solve(T, torch.zeros_like(x).contiguous(memory_format=torch.channels_last), options)
    assert state.status == "converged" and all(seen)
    assert torch.allclose(plain, nhwc, atol=1e-9)


@pytest.mark.parametrize(
    "solver, options",
    [
        ("anderson", {"memory": 1}),
        ("anderson", {"memory": 2.5}),
        ("anderson", {"beta": 0.0}),
        ("anderson", {"ridge": -1e-3}),
        ("broyden", {"memory": 0}),
    ],
)
def test_invalid_solver_options_fail_when_the_options_are_built(solver, options):
    with pytest.raises(jfb.JfbError, match=solver):
        jfb.SolveOptions(solver=solver, solver_options=options)


@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_anderson_updates_its_gram_matrix_one_row_at_a_time_exactly(beta):
    """The kept G G^T equals a fresh one after the memory wrapped around, and the steps equal those of the
    textbook form (points X and images F, the whole Gram matrix recomputed each step)."""
    from jfb.solvers import Anderson

    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(6, 6, generator=g, dtype=torch.float64) / 6**0.5
    T = lambda x: torch.tanh(x @ A.T + 1.0)  # noqa: E731
    solver = Anderson(memory=3, beta=beta, ridge=1e-6)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    state, points, images = solver.init(x), [], []
    for _ in range(7):
        fx = T(x)
        points.append(x), images.append(fx)
        x_next = solver.update(state, x, fx)
        X, F = torch.stack(points[-3:], 1), torch.stack(images[-3:], 1)
        G = F - X
        gram = G @ G.transpose(1, 2)
        n = G.shape[1]
        if n > 1:
            scale = gram.diagonal(dim1=1, dim2=2).mean(1)
            H = torch.zeros(4, n + 1, n + 1, dtype=torch.float64)
            H[:, 0, 1:] = H[:, 1:, 0] = 1
            H[:, 1:, 1:] = gram + 1e-6 * scale[:, None, None] * torch.eye(n, dtype=torch.float64)
            rhs = torch.zeros(4, n + 1, 1, dtype=torch.float64)
            rhs[:, 0] = 1
            alpha = torch.linalg.solve(H, rhs)[:, 1:, 0]
            expected = beta * (alpha[:, None] @ F)[:, 0] + (1 - beta) * (alpha[:, None] @ X)[:, 0]
            assert torch.allclose(x_next, expected, rtol=1e-9, atol=1e-12)
        x = x_next
    order = [(i % 3) for i in range(4, 7)]  # slots of the last three residuals
    kept = state.gram[:, order][:, :, order]
    assert torch.allclose(kept, gram, rtol=1e-12, atol=1e-14)
