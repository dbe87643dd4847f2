"""The new doors, fuzzed: calls under torch.func transforms and exports with any backward mode, solver, state
structure and batching give what a plain loop gives, or a JfbError in one line; never a different answer."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacfwd, jacrev, vmap

import jfb
from jfb.deploy import export_program, exported_solves
from jfb.errors import JfbError

EXAMPLES = int(os.environ.get("JFB_FUZZ_EXAMPLES", "30"))
F64 = torch.float64
W = 0.4 * torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=F64))[0]
MODES = ["jfb", "ift:tol=1e-13", "ift:gmres:tol=1e-13", "neumann:2", "phantom:2", "unroll", "auto", "reversible"]


def _operator(structure: str):
    def T(u, x):
        if structure == "tensor":
            return torch.tanh(u @ W.T + x)
        first = torch.tanh(u["a"] @ W.T + x)
        return {"a": first, "b": (0.5 * u["b"][0] + first,)}

    return T


def _solve(structure: str, backward: str, solver: str):
    def f(x):
        u0 = None if structure == "tensor" else {"a": torch.zeros_like(x), "b": (torch.zeros_like(x),)}
        eq = jfb.fixed_point(
            _operator(structure), x, u0=u0, backward=backward, solver=solver, tol=1e-12, max_iter=300, batched=False
        )
        return eq.value if structure == "tensor" else eq.value["b"][0]

    return f


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    backward=st.sampled_from(MODES),
    solver=st.sampled_from(["picard", "anderson", "broyden", "reversible"]),
    structure=st.sampled_from(["tensor", "nested"]),
    transform=st.sampled_from(["vmap", "jacrev", "jacfwd"]),
    seed=st.integers(0, 1000),
)
def test_a_transformed_call_gives_the_loops_answer_or_refuses_in_one_line(backward, solver, structure, transform, seed):
    xs = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    f = _solve(structure, backward, solver)
    try:
        if transform == "vmap":
            got, want = vmap(f)(xs), torch.stack([f(x) for x in xs])
        else:
            got = (jacrev if transform == "jacrev" else jacfwd)(f)(xs[0])
            x = xs[0].clone().requires_grad_()
            out = f(x)
            want = torch.stack([torch.autograd.grad(out[i], x, retain_graph=True)[0] for i in range(4)])
    except JfbError as error:
        assert "\n" not in str(error).strip()
        return
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-11), (backward, solver, structure, transform)


@pytest.mark.slow
@settings(max_examples=max(EXAMPLES // 6, 3), deadline=None)  # (each example is an export: seconds)
@given(
    depth=st.one_of(st.none(), st.integers(-1, 12)),
    eval_tol=st.sampled_from([None, 1e-6]),
    solver=st.sampled_from(["picard", "anderson", "broyden"]),
    batch=st.integers(2, 5),
)
def test_an_export_matches_eager_at_its_depth_or_refuses_in_one_line(depth, eval_tol, solver, batch):
    layer = jfb.ImplicitLayer(lambda u, x: torch.tanh(u @ W.T.float() + x), solver=solver, tol=eval_tol, max_iter=9)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), layer).eval()
    try:
        program = export_program(model, (torch.randn(2, 3),), depth)
    except JfbError as error:
        assert "\n" not in str(error).strip()
        assert (eval_tol is not None and depth is None) or (depth is not None and depth < 1)
        return
    x = torch.randn(batch, 3)
    with torch.no_grad(), exported_solves(model, depth):
        assert torch.equal(program.module()(x), model(x))


@pytest.mark.parametrize("shape", [(), (1,), (3, 2)])
def test_a_problem_of_any_shape_without_a_batch_dimension(shape):
    x = torch.full(shape, 0.2, dtype=F64)
    eq = jfb.fixed_point(lambda u, x: 0.5 * torch.cos(u) + x, x, batched=False, tol=1e-12, max_iter=100)
    assert eq.value.shape == shape and torch.allclose(eq.fixed_point, 0.5 * torch.cos(eq.fixed_point) + x)
