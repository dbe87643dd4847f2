"""torch.compile: a compiled operator works with every backward mode, and a fixed-depth solve compiles once."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from operators import TanhOperator, flat

import jfb

MODES = ["jfb", "neumann:3", "phantom:3", "ift", "ift:cg", "ift:gmres", "unroll", "auto:every=1"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _gradient(op, x, backward: str, compiled: bool, **extra):
    layer = jfb.ImplicitLayer(
        torch.compile(op, backend="aot_eager") if compiled else op,
        backward,
        solver="picard",
        max_iter=30,
        tol=1e-10,
        on_failure="ignore",
        **extra,
    )
    op.zero_grad()
    result = layer.solve(x)
    loss = result.value.square().sum() + (result.jacobian_penalty if result.jacobian_penalty is not None else 0)
    loss.backward()
    return flat(p.grad for p in op.parameters())


@pytest.mark.parametrize("backward", MODES)
def test_a_compiled_operator_gives_the_eager_gradient_in_every_backward_mode(backward):
    op = TanhOperator(8, 0.6, seed=2, dtype=torch.float32)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    eager, compiled = _gradient(op, x, backward, False), _gradient(op, x, backward, True)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-6)


def test_the_jacobian_penalty_works_on_a_compiled_operator():
    op = TanhOperator(8, 0.6, seed=2, dtype=torch.float32)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    eager = _gradient(op, x, "jfb", False, jacobian_probes=2)
    torch.manual_seed(0)
    compiled = _gradient(op, x, "jfb", True, jacobian_probes=2)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-6)


def test_a_fixed_depth_training_step_compiles_once_and_never_again():
    op = TanhOperator(16, 0.6, seed=3, dtype=torch.float32)
    layer = jfb.ImplicitLayer(torch.compile(op, backend="aot_eager"), solver="picard", tol=None, max_iter=6)
    optimizer = torch.optim.SGD(op.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        optimizer.zero_grad()
        layer(torch.randn(32, 16, generator=generator)).square().mean().backward()
        optimizer.step()

    step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(5):
            step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


class _Classifier(torch.nn.Module):
    """An implicit layer inside a model, as deployed: the operator a module, the evaluation at a fixed depth."""

    def __init__(self, solver: str) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.layer = jfb.ImplicitLayer(
            TanhOperator(16, 0.6, seed=4, dtype=torch.float32), solver=solver, tol=None, max_iter=12
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)))


@pytest.mark.parametrize("solver", ["picard", "anderson"])
@pytest.mark.slow
def test_a_fixed_depth_solve_compiles_as_one_graph(solver):
    """fullgraph=True: no graph break from the solve, its bookkeeping or the layer (dynamo's own count is 0)."""
    model = _Classifier(solver).eval()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(x), model(x), atol=1e-6)
