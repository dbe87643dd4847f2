"""jfb.nn: dropout masks and normalised weights that keep T one map for a whole layer call; initial states."""

from __future__ import annotations

import pytest
import torch
from operators import dense_implicit_gradient, flat
from torch import nn

import jfb
from jfb.nn import VariationalDropout, VariationalDropout2d, spectral_norm, weight_norm


class Recording(nn.Module):
    """Records the tensor it passes through at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.detach().clone())
        return t


class DropoutOperator(nn.Module):
    """``tanh(W drop(u) + x)``, W of spectral norm 0.6, with a probe on the mask the dropout applies."""

    def __init__(self, dim: int = 6, p: float = 0.3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        W = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.W = nn.Parameter(0.6 * W / torch.linalg.matrix_norm(W, 2))
        self.drop = VariationalDropout(p)
        self.probe = Recording()

    def forward(self, u, x):
        mask = self.probe(self.drop(torch.ones_like(u)))
        return torch.tanh((u * mask) @ self.W.T + x)


def _x(batch: int = 4, dim: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_dropout_mask_is_one_per_call_and_reused_by_the_backward_pass() -> None:
    op = DropoutOperator().train()
    layer = jfb.ImplicitLayer(op, "ift:gmres:tol=1e-12", solver="anderson", tol=1e-12, max_iter=100)
    u = layer(_x())
    u.sum().backward()
    first_call = op.probe.seen
    assert len(first_call) > 10  # the solve, the output's application, the backward linearisation
    assert all(torch.equal(m, first_call[0]) for m in first_call)
    assert 0 < float((first_call[0] == 0).float().mean()) < 1  # some entries dropped, some kept
    op.probe.seen = []
    layer(_x())
    assert not torch.equal(op.probe.seen[0], first_call[0])  # the next call draws its own


def test_dropout_is_off_in_eval_mode() -> None:
    op = DropoutOperator().eval()
    with torch.no_grad():
        jfb.ImplicitLayer(op)(_x())
    assert all(torch.equal(m, torch.ones_like(m)) for m in op.probe.seen)


@pytest.mark.parametrize("backward", ["jfb", "ift:gmres:tol=1e-12"])
def test_gradients_are_those_of_the_masked_operator(backward: str) -> None:
    torch.manual_seed(3)
    op, x = DropoutOperator().train(), _x()
    head = torch.randn(4, 6, dtype=torch.float64)
    layer = jfb.ImplicitLayer(op, backward, solver="anderson", tol=1e-13, max_iter=200)
    u = layer(x)
    (got,) = torch.autograd.grad((head * u).sum(), [op.W])
    mask = op.probe.seen[0]

    class Masked(nn.Module):  # the same T with the call's mask fixed
        def __init__(self) -> None:
            super().__init__()
            self.W = op.W

        def forward(self, v, x):
            return torch.tanh((v * mask) @ self.W.T + x)

    masked, u_star = Masked(), u.detach()
    if backward == "ift:gmres:tol=1e-12":  # the dense implicit solve on the whole batch (the mask is per sample)
        J = torch.autograd.functional.jacobian(lambda v: masked(v.reshape(4, 6), x).reshape(-1), u_star.reshape(-1))
        head = torch.linalg.solve((torch.eye(24, dtype=J.dtype) - J).T, head.reshape(-1)).reshape(4, 6)
    (expected,) = torch.autograd.grad((head * masked(u_star, x)).sum(), [op.W])
    assert float((got - expected).norm() / expected.norm()) < 1e-9


def test_dropout_refuses_a_batch_that_changes_within_a_call() -> None:
    op = DropoutOperator().train()
    x = torch.cat([_x(2), 5 * torch.ones(2, 6, dtype=torch.float64)])  # rows converge at different speeds
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-6, max_iter=100, freeze_converged=True)
    with pytest.raises(jfb.JfbError, match="freeze_converged=False"), torch.no_grad():
        layer(x)


def test_dropout_2d_masks_whole_channels() -> None:
    drop = VariationalDropout2d(0.5).train()
    out = drop(torch.ones(3, 8, 4, 4))
    per_channel = out.flatten(2)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2))  # each channel kept or dropped as a whole
    for p in (-0.1, 1.0, True):
        with pytest.raises(jfb.JfbError, match="p must be in"):
            VariationalDropout(p)


class NormedOperator(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 6, dtype=torch.float64)
        if norm == "weight":
            weight_norm(self.linear, clip=0.4)
        else:
            spectral_norm(self.linear, scale=0.7, learn_scale=True, clip=0.8)
        self.probe = Recording()

    def forward(self, u, x):
        self.probe(self.linear.weight)
        return torch.tanh(self.linear(u) + x)


@pytest.mark.parametrize("norm", ["weight", "spectral"])
def test_normalised_weights_stay_fixed_within_a_call_and_follow_the_parameters(norm: str) -> None:
    op = NormedOperator(norm).train()
    layer = jfb.ImplicitLayer(op, "ift:gmres:tol=1e-10", solver="anderson", tol=1e-10, max_iter=100)
    optimizer = torch.optim.SGD(op.parameters(), lr=0.5)
    layer(_x()).square().sum().backward()
    seen = op.probe.seen
    assert len(seen) > 10 and all(torch.equal(w, seen[0]) for w in seen)  # T is one map for the whole call
    raw = op.linear.parametrizations.weight
    assert raw.original.grad is not None and raw.original.grad.abs().sum() > 0
    assert raw[0].scale.grad is not None  # the learnable scale is trained too
    optimizer.step()
    op.probe.seen = []
    layer(_x())
    assert not torch.equal(op.probe.seen[0], seen[0])  # recomputed from the new parameters


def test_the_scale_is_clipped() -> None:
    weight_normed = NormedOperator("weight").linear
    rows = torch.linalg.vector_norm(weight_normed.weight.detach(), dim=1)
    assert float(rows.max()) <= 0.4 + 1e-12  # every row's norm is the clipped g
    spectral = NormedOperator("spectral").linear
    sigma = torch.linalg.matrix_norm(spectral.weight.detach(), 2)
    assert abs(float(sigma) - 0.7) < 1e-6  # g = 0.7 (under the clip), sigma after 15 power steps


def test_the_normalised_weight_is_computed_once_per_solve() -> None:
    op = NormedOperator("weight").train()
    calls = []
    op.linear.parametrizations.weight[0].register_forward_hook(lambda *args: calls.append(1))
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-10, max_iter=100)
    with torch.no_grad():
        layer(_x())
    assert layer.last_stats.t_evals > 10 and len(calls) == 1


@pytest.mark.parametrize("kind", ["random", "mixed"])
def test_initial_states_by_name(kind: str) -> None:
    torch.manual_seed(0)
    op = DropoutOperator(p=0.0)
    seen: list[torch.Tensor] = []

    def recording(u, x):
        if not seen:
            seen.append(u.detach().clone())
        return op(u, x)

    with torch.no_grad():
        eq = jfb.fixed_point(recording, _x(64, 6), u0=kind, solver="anderson", tol=1e-10, max_iter=100)
        zeros = jfb.fixed_point(op, _x(64, 6), solver="anderson", tol=1e-10, max_iter=100)
    start = seen[0]
    zero_share = float((start == 0).double().mean())
    assert (zero_share == 0.0) if kind == "random" else (0.4 < zero_share < 0.6)
    assert 0.8 < float(start[start != 0].std()) < 1.2
    torch.testing.assert_close(eq.value, zeros.value, atol=1e-9, rtol=0)  # the same fixed point
    with pytest.raises(jfb.JfbError, match="did you mean 'mixed'"):
        jfb.fixed_point(op, _x(), u0="mixd")


def test_dense_reference_helper_agrees_with_itself() -> None:
    """(guards the reference used above: dense IFT equals IFT by GMRES on an unmasked operator)"""
    op = DropoutOperator(p=0.0)
    x, head = _x(), torch.randn(4, 6, dtype=torch.float64)
    layer = jfb.ImplicitLayer(op, "ift:gmres:tol=1e-12", solver="anderson", tol=1e-13, max_iter=200)
    u = layer(x)
    got = torch.autograd.grad((head * u).sum(), [op.W])
    expected = dense_implicit_gradient(op, u.detach(), x, head)
    assert float((flat(got) - flat(expected)).norm() / flat(expected).norm()) < 1e-9


def test_a_learned_initial_state_starts_the_solve_and_is_trained_towards_u_star() -> None:
    from jfb.models import build_model

    torch.manual_seed(0)
    options = jfb.SolveOptions(solver="picard", tol=1e-3, stop_mode="rel", max_iter=100)
    model = build_model("mnist", init="learned", options=options).train()
    d = torch.randn(16, 1, 28, 28)
    starts: list[torch.Tensor] = []
    model.operator.register_forward_pre_hook(lambda module, args: starts.append(args[0].detach().clone()))
    optimizer = torch.optim.Adam(model.initial.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        starts.clear()
        prediction = model(d, details=True)
        with torch.no_grad():
            guess = model.initial(model.embedding(d))
        torch.testing.assert_close(starts[0], guess)  # the solve started from g(q)
        optimizer.zero_grad()
        prediction.initial_state_loss.backward()
        optimizer.step()
        losses.append(float(prediction.initial_state_loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.grad is None for p in model.embedding.parameters())  # g sees q detached
    with torch.no_grad():
        assert model(d, details=True).initial_state_loss is None  # no loss without grad


def test_init_is_checked() -> None:
    from jfb.models.networks import ImplicitClassifier
    from jfb.train.config import TrainConfig

    with pytest.raises(jfb.JfbError, match="unknown init 'learnt'"):
        TrainConfig(init="learnt")
    with pytest.raises(jfb.JfbError, match="init needs model 'implicit'"):
        TrainConfig(init="mixed", model="explicit")
    with pytest.raises(jfb.JfbError, match="unknown init 'ones'"):
        ImplicitClassifier(nn.Identity(), nn.Identity(), nn.Identity(), init="ones")


def test_latent_options_reach_the_operator_and_are_checked() -> None:
    from jfb.models import build_model
    from jfb.train.config import TrainConfig

    model = build_model("mnist", latent_dropout=0.2, latent_norm="spectral")
    block = model.operator.blocks[0]
    assert isinstance(block.drop, VariationalDropout2d) and block.drop.p == 0.2
    assert torch.nn.utils.parametrize.is_parametrized(block.conv1, "weight")
    with pytest.raises(jfb.JfbError, match="unknown latent_norm 'batch'"):
        TrainConfig(latent_norm="batch")
    with pytest.raises(jfb.JfbError, match=r"latent_dropout must be in \[0, 1\)"):
        TrainConfig(latent_dropout=1.0)
