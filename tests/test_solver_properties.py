"""Property-based tests: every solver on random contractive operators of random sizes and batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jfb import SolveOptions, solve
from jfb.solvers import solver_names
from jfb.state import per_sample_norm

TOL = 1e-7


def _contraction(dim: int, factor: float, seed: int):
    """T(u) = tanh(u W^T) + x with ||W||_2 = factor < 1: a contraction with Lipschitz constant <= factor."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    w = factor * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(1, dim, generator=generator, dtype=torch.float64)
    return lambda u, x_rows: torch.tanh(u @ w.T) + x_rows, x


@pytest.mark.parametrize("solver", sorted(solver_names()))
@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 40),
    batch=st.integers(1, 12),
    factor=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**31 - 1),
    freeze=st.booleans(),
    stop_mode=st.sampled_from(["abs", "rel"]),
)
def test_solvers_converge_on_random_contractions(solver, dim, batch, factor, seed, freeze, stop_mode):
    T, x_row = _contraction(dim, factor, seed)
    x = x_row * torch.linspace(0.5, 2.0, batch, dtype=torch.float64)[:, None]
    f = lambda u, index: T(u, x if index is None else x[index])  # noqa: E731
    u, state = solve(
        f,
        torch.zeros_like(x),
        SolveOptions(solver=solver, tol=TOL, max_iter=500, stop_mode=stop_mode, freeze_converged=freeze),
    )

    assert state.status == "converged"
    assert bool(state.converged.all()) and torch.isfinite(u).all()
    # per-sample statistics agree with each other and with the output
    assert int(state.iterations.min()) >= 1 and int(state.iterations.max()) <= state.t_evals <= 500
    measure = state.abs_residual if stop_mode == "abs" else state.rel_residual
    assert bool((measure <= TOL).all())
    assert torch.allclose(state.rel_residual * (per_sample_norm(u) + 1e-12), state.abs_residual, rtol=1e-9, atol=1e-15)
    # the returned point is T(u_k) for a u_k within tol: one more application moves it by <= factor * tol (scaled)
    true_residual = per_sample_norm(T(u, x) - u)
    bound = TOL * (1 if stop_mode == "abs" else per_sample_norm(u))
    assert bool((true_residual <= factor * bound * (1 + 1e-6) + 1e-14).all())
