"""Contraction helpers: Lipschitz estimate, gamma scaling, spectral normalisation."""

from __future__ import annotations

import torch
from operators import TanhOperator
from torch import nn

import jfb


def test_lipschitz_estimate_matches_dense_jacobian_norm():
    torch.manual_seed(0)
    op = TanhOperator(20, 0.9)
    x = torch.randn(5, 20, dtype=torch.float64)
    u = torch.randn(5, 20, dtype=torch.float64)
    estimate = jfb.lipschitz_estimate(op, u, x, iters=200)
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda v, i=i: op(v[None], x[i : i + 1])[0], u[i])
        assert abs(float(estimate[i]) - float(torch.linalg.matrix_norm(J, ord=2))) < 1e-6
    assert float(estimate.max()) < 0.9  # tanh' <= 1 and ||W|| = 0.9


def test_lipschitz_estimate_takes_a_tuple_state_and_matches_the_joint_jacobian_norm():
    """Regression: a tuple state raised ('tuple' object has no attribute 'detach')."""
    g = torch.Generator().manual_seed(1)
    A, B = (
        0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64),
        0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64),
    )

    def op(u, x):  # a two-part state: (a, b) -> (tanh(a A^T + x), tanh(a B^T) + 0.5 b)
        a, b = u
        return torch.tanh(a @ A.T + x), torch.tanh(a @ B.T) + 0.5 * b

    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    u = (torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64))
    estimate = jfb.lipschitz_estimate(op, u, x, iters=300)
    for i in range(3):

        def flat(v, i=i):
            a, b = op((v[None, :4], v[None, 4:]), x[i : i + 1])
            return torch.cat([a[0], b[0]])

        J = torch.autograd.functional.jacobian(flat, torch.cat([u[0][i], u[1][i]]))
        assert abs(float(estimate[i]) - float(torch.linalg.matrix_norm(J, ord=2))) < 1e-6


def test_gamma_scaled_takes_a_tuple_state_and_its_estimate_scales_by_gamma():
    def branch(u, x):
        return torch.tanh(u[0] + x), 0.5 * u[1]

    x = torch.randn(3, 4, dtype=torch.float64)
    u = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64))
    scaled = jfb.GammaScaled(branch, gamma=0.5)
    assert all(torch.equal(a, 0.5 * b) for a, b in zip(scaled(u, x), branch(u, x)))
    whole = jfb.lipschitz_estimate(branch, u, x, iters=200)
    assert torch.allclose(jfb.lipschitz_estimate(scaled, u, x, iters=200), 0.5 * whole, rtol=1e-6)


def test_gamma_scaled_spectrally_normalised_operator_is_a_gamma_contraction():
    torch.manual_seed(0)
    branch_linear = jfb.spectral_normalize(
        nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16)), n_power_iterations=50
    )
    branch_linear.train()
    for _ in range(5):  # let the power iteration converge
        branch_linear(torch.randn(2, 16))
    op = jfb.GammaScaled(lambda u, x: branch_linear(u) + x, gamma=0.8)
    u, x = torch.randn(8, 16), torch.randn(8, 16)
    with jfb.frozen_running_stats(branch_linear):
        estimate = jfb.lipschitz_estimate(op, u, x, iters=50)
    assert float(estimate.max()) <= 0.8 * 1.01


class SpectralOperator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = jfb.spectral_normalize(nn.Linear(8, 8))

    def forward(self, u, x):
        return 0.9 * torch.tanh(self.net(u)) + x


def test_spectral_norm_takes_one_power_step_per_layer_call():
    torch.manual_seed(0)
    op = SpectralOperator().train()
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-5, max_iter=50)
    norm = op.net.parametrizations.weight[0]
    steps, step = [], norm._power_step
    norm._power_step = lambda matrix: (steps.append(1), step(matrix))
    with torch.no_grad():
        layer(torch.randn(4, 8))
    assert layer.last_stats.t_evals > 5 and len(steps) == 1  # at the first evaluation, none after it
    layer(torch.randn(4, 8)).sum().backward()
    assert len(steps) == 2  # the next call's; its output application and backward pass take none


class _LinearWithNorm(torch.nn.Module):
    """T(u, x) = W u + x, plus a BatchNorm on the side whose statistics must stay untouched."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 16, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(gain * torch.linalg.qr(torch.randn(16, 16))[0])  # an orthogonal matrix times gain
        self.norm = torch.nn.BatchNorm1d(16)

    def forward(self, u, x):
        self.norm(u)
        return self.linear(u) + x


def test_rescale_to_lipschitz_brings_the_ratio_to_gamma_and_leaves_contractions_alone():
    torch.manual_seed(0)
    op = _LinearWithNorm(gain=2.0)
    u, x = torch.zeros(256, 16), torch.randn(256, 16)
    ratio, factor = jfb.contraction.rescale_to_lipschitz(op, u, x, 0.5, [op.linear])
    assert abs(ratio - 2.0) < 1e-4 and abs(factor - 0.25) < 1e-4  # an orthogonal map times 2 stretches every vector 2x
    again, unchanged = jfb.contraction.rescale_to_lipschitz(op, u, x, 0.5, [op.linear])
    assert abs(again - 0.5) < 1e-4 and unchanged == 1.0
    assert int(op.norm.num_batches_tracked) == 0


def test_the_latent_operator_rescales_every_conv_by_the_root_over_blocks():
    from jfb.models.blocks import LatentOperator

    torch.manual_seed(0)
    op = LatentOperator(8, blocks=2, gamma=0.5, batch_norm=False)
    before = [conv.weight.clone() for block in op.blocks for conv in (block.conv1, block.conv2)]
    q = torch.randn(4, 8, 5, 5)
    ratio, factor = op.rescale_to_lipschitz(torch.zeros_like(q), q)
    assert ratio > 0.5 and abs(factor - (0.5 / ratio) ** 0.5) < 1e-6
    after = [conv.weight for block in op.blocks for conv in (block.conv1, block.conv2)]
    assert all(torch.allclose(a, factor * b) for a, b in zip(after, before))
