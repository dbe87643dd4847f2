"""The DEQ toolbox beyond the paper: phantom gradients, the Jacobian penalty, fixed-point correction."""

from __future__ import annotations

import pytest
import torch
from operators import TIGHT, dense_implicit_gradient, flat, layer_gradient, tanh_problem
from torch import nn

import jfb
from jfb.errors import JfbError
from jfb.regularizers import evenly_spaced


def test_phantom_1_is_jfb_and_phantom_k_is_neumann_k_minus_1_at_an_exact_fixed_point():
    op, x, head = tanh_problem()
    jfb_grad, _, _ = layer_gradient(op, x, head, "jfb")
    assert torch.equal(layer_gradient(op, x, head, "phantom:1")[0], jfb_grad)
    for k in (2, 4):
        phantom, layer, _ = layer_gradient(op, x, head, f"phantom:{k}")
        neumann, _, _ = layer_gradient(op, x, head, f"neumann:{k - 1}")
        assert torch.allclose(phantom, neumann, rtol=1e-9, atol=1e-12)
        assert layer.last_stats.j_matvecs == k - 1 and layer.last_stats.backward.iterations == k


def test_phantom_approaches_the_implicit_gradient_as_k_grows():
    op, x, head = tanh_problem(contraction=0.6)
    _, _, u = layer_gradient(op, x, head, "jfb")
    dense = flat(dense_implicit_gradient(op, u, x, head))
    errors = [
        float((layer_gradient(op, x, head, f"phantom:{k}")[0] - dense).norm() / dense.norm()) for k in (1, 3, 9, 27)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5, errors


def test_damped_phantom_equals_autograd_through_the_same_damped_steps():
    op, x, head = tanh_problem()
    grad, layer, u_star = layer_gradient(op, x, head, jfb.backward.Phantom(3, tau=0.5))
    op.zero_grad()
    u = u_star.clone()
    for _ in range(3):
        u = 0.5 * u + 0.5 * op(u, x)
    (head * u).sum().backward()
    assert torch.allclose(grad, flat(p.grad for p in op.parameters()), rtol=1e-12, atol=1e-14)
    assert (
        repr(layer.backward_mode) == "phantom:3:tau=0.5"
        and layer.last_stats.t_evals == layer.last_stats.forward.t_evals + 3
    )


def test_phantom_updates_batchnorm_statistics_once_per_call():
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.norm = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, u, x):
            return 0.5 * torch.tanh(self.norm(self.linear(u) + x))

    op = Normed()
    layer = jfb.ImplicitLayer(op, "phantom:4", max_iter=10)
    layer(torch.randn(8, 6)).sum().backward()
    assert int(op.norm.num_batches_tracked) == 1


@pytest.mark.parametrize(("spec", "message"), [("phantom:0", "integer >= 1"), ("phantom:2:tau=1.5", r"\(0, 1\]")])
def test_bad_phantom_settings_are_refused(spec, message):
    with pytest.raises(JfbError, match=message):
        jfb.ImplicitLayer(lambda u, x: u, spec)


def _dense_penalty(op, u_star, x) -> torch.Tensor:
    total = 0.0
    for i in range(u_star.shape[0]):
        J = torch.autograd.functional.jacobian(
            lambda u, i=i: op(u[None], x[i : i + 1])[0], u_star[i], create_graph=True
        )
        total = total + J.pow(2).sum() / J.shape[0]
    return total / u_star.shape[0]


@pytest.mark.slow
def test_the_jacobian_penalty_is_an_unbiased_differentiable_estimate_of_the_frobenius_norm():
    op, x, _ = tanh_problem(dim=10, contraction=0.8, seed=3)
    layer = jfb.ImplicitLayer(op, jacobian_probes=1, **TIGHT)
    torch.manual_seed(0)
    estimates, grads = [], []
    for _ in range(400):
        op.zero_grad()
        result = layer.solve(x)
        estimates.append(result.jacobian_penalty.detach())
        result.jacobian_penalty.backward()
        grads.append(flat(p.grad for p in op.parameters()))
    u_star = result.fixed_point
    op.zero_grad()
    dense = _dense_penalty(op, u_star, x)
    dense.backward()
    dense_grad = flat(p.grad for p in op.parameters())
    assert abs(float(torch.stack(estimates).mean() / dense.detach()) - 1) < 0.05
    mean_grad = torch.stack(grads).mean(0)
    assert float((mean_grad - dense_grad).norm() / dense_grad.norm()) < 0.1
    assert layer.last_stats.regularizer_evals == 1


def test_the_penalty_and_correction_exist_only_for_training_calls_with_grad():
    op, x, _ = tanh_problem()
    layer = jfb.ImplicitLayer(op, jacobian_probes=2, correction=2, **TIGHT)
    result = layer.solve(x)
    assert result.jacobian_penalty is not None and result.jacobian_penalty.requires_grad
    assert len(result.correction_states) == 2
    with torch.no_grad():
        result = layer.solve(x)
    assert result.jacobian_penalty is None and result.correction_states is None
    layer.eval()
    result = layer.solve(x)
    assert result.jacobian_penalty is None and result.correction_states is None


def test_fixed_point_correction_hands_back_evenly_spaced_iterates_through_one_application_each():
    op, x, head = tanh_problem()
    layer = jfb.ImplicitLayer(op, solver="picard", tol=None, max_iter=6, correction=2)
    states = layer.solve(x).correction_states
    picard = [torch.zeros_like(x)]
    for _ in range(6):
        picard.append(op(picard[-1], x).detach())
    assert len(states) == 2 and layer.last_stats.regularizer_evals == 2
    assert torch.allclose(states[0], picard[3]) and torch.allclose(states[1], picard[5])  # T(u_2), T(u_4)
    op.zero_grad()
    (head * states[0]).sum().backward()
    reference = torch.autograd.grad((head * op(picard[2], x)).sum(), list(op.parameters()))
    assert torch.allclose(flat(p.grad for p in op.parameters()), flat(reference))


def test_evenly_spaced_iterates():
    iterates = [torch.tensor(float(i)) for i in range(1, 9)]  # u_1 .. u_8
    assert [int(t) for t in evenly_spaced(iterates, 3)] == [2, 4, 6]
    assert [int(t) for t in evenly_spaced(iterates, 1)] == [4]
    assert evenly_spaced(iterates[:1], 3) == []
    assert [int(t) for t in evenly_spaced(iterates[:3], 5)] == [1, 2]


@pytest.mark.parametrize("name", ["jacobian_probes", "correction"])
def test_regularizer_counts_must_be_non_negative_integers(name):
    with pytest.raises(JfbError, match=f"{name} must be an integer >= 0"):
        jfb.ImplicitLayer(lambda u, x: u, **{name: -1})
