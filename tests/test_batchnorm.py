"""BatchNorm inside T: running statistics change exactly once per training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jfb


class BNOperator(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, u, x):
        return 0.5 * torch.tanh(self.bn(self.linear(u))) + x


@pytest.mark.parametrize("backward", ["jfb", "neumann:3", "ift"])
@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_running_stats_updated_once_per_step(solver, backward):
    torch.manual_seed(0)
    op = BNOperator()
    layer = jfb.ImplicitLayer(op, solver=solver, backward=backward, tol=1e-6, max_iter=30)
    opt = torch.optim.SGD(op.parameters(), lr=0.01)
    for step in range(1, 4):
        x = torch.randn(16, 6)
        before = op.bn.running_mean.clone()
        out = layer(x)
        with torch.no_grad():
            pre_activation_mean = op.linear(out).mean(0)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert layer.last_stats.t_evals > 3  # T ran many times in the solve ...
        assert int(op.bn.num_batches_tracked) == step  # ... but the statistics moved once
        # the one update is the momentum update with the batch statistics at the fixed point
        # (the output T(u*) equals u* within tol; the step changed the weights, so use the old ones)
        expected = 0.9 * before + 0.1 * pre_activation_mean
        assert torch.allclose(op.bn.running_mean, expected, atol=1e-4)


def test_no_update_without_grad_and_none_in_eval():
    torch.manual_seed(0)
    op = BNOperator()
    layer = jfb.ImplicitLayer(op, solver="picard", tol=1e-6, max_iter=30)
    with torch.no_grad():
        layer(torch.randn(8, 6))  # train mode, no grad: the final application is skipped
    assert int(op.bn.num_batches_tracked) == 0
    layer.eval()
    layer(torch.randn(8, 6)).sum().backward()
    assert int(op.bn.num_batches_tracked) == 0
    assert op.bn.track_running_stats  # restored after the solve


def test_frozen_context_restores_state_after_an_exception():
    op = BNOperator()
    with pytest.raises(RuntimeError), jfb.frozen_running_stats(op):
        assert not op.bn.track_running_stats
        raise RuntimeError("boom")
    assert op.bn.track_running_stats
