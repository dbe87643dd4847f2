"""Deep supervision in the step engine (``--segments N``): each batch in N segments, each from the previous one's
state detached, with its own loss and optimiser step; checked against the segments written by hand (float64)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import jfb
from jfb.errors import JfbError
from jfb.train.engine import StepSettings, Training
from jfb.train.supervision import DeepSupervision, from_start
from jfb.workloads import get_workload


class _Operator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 4)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.5 * self.mix(u) + x)


class _Looped(nn.Module):
    """``d -> head(u*)`` with 3 Picard iterations a solve, from ``u0`` (default zeros)."""

    def __init__(self) -> None:
        super().__init__()
        self.inject, self.head = nn.Linear(3, 4), nn.Linear(4, 1)
        self.layer = jfb.ImplicitLayer(_Operator(), "jfb", solver="picard", tol=None, max_iter=3)

    def forward(self, d: torch.Tensor, u0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inject(d)
        u = self.layer(x, torch.zeros_like(x) if u0 is None else u0)
        return self.head(u), u


def _segment_loss(model: nn.Module, batch, state):
    d, y = batch
    out, reached = model(d, state)
    return ((out - y) ** 2).mean(), 3.0, reached


def _setup():
    torch.manual_seed(0)
    model = _Looped().double()
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))
    return model, batch


def test_each_segment_takes_its_own_step_from_the_last_state_detached_as_by_hand():
    model, batch = _setup()
    by_hand = copy.deepcopy(model)
    settings = StepSettings(optimizer="sgd", schedule="constant", clip=0)
    training = Training(model, lambda index: batch, DeepSupervision(_segment_loss, 3), 1, 0.1, settings)
    training.step(0)
    optimizer, state, losses = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9), None, []
    for _ in range(3):
        loss, _, state = _segment_loss(by_hand, batch, state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state, losses = state.detach(), [*losses, loss.item()]
    for mine, theirs in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert training.measured.losses == [pytest.approx(losses[-1], rel=1e-12)]  # the last segment's loss
    assert training.measured.iterations == [9.0]  # the forward iterations of all three segments
    assert losses[2] < losses[1] < losses[0]  # the later segments start nearer and after more steps


def test_the_schedule_spans_every_segments_step_and_memory_is_one_segments():
    model, batch = _setup()
    one = Training(copy.deepcopy(model), lambda index: batch, from_start(_segment_loss), 2, 0.1)
    three = Training(model, lambda index: batch, DeepSupervision(_segment_loss, 3), 2, 0.1)
    for index in range(2):
        one.step(index), three.step(index)
    assert three.optimizer.state_dict()["state"][0]["step"] == 6  # two batches of three segments: six Adam steps
    assert three.schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the cosine reached 0 at the 6th
    assert three.measured.saved == one.measured.saved > 0  # one segment's graph at a time


def test_a_bad_segment_skips_the_rest_of_its_batch():
    model, batch = _setup()

    def bad_second(model, batch, state):
        loss, iterations, reached = _segment_loss(model, batch, state)
        return (loss * math.nan if state is not None else loss), iterations, reached

    skip = StepSettings(bad_batches="skip")
    training = Training(model, lambda index: batch, DeepSupervision(bad_second, 3), 2, 0.1, skip)
    before = [p.detach().clone() for p in model.parameters()]
    training.step(0)
    assert training.measured.skipped == 1 and training.measured.losses == []
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # segment 1 stepped
    with pytest.raises(JfbError, match="segments must be an integer >= 1, got 0"):
        DeepSupervision(_segment_loss, 0)


def test_a_workload_trains_in_segments_and_one_without_a_start_refuses_in_one_line():
    workload = get_workload("prefix-sums")
    config = workload.config(**{**workload.smoke, "steps": 3, "segments": 2, "test_depths": (16,)})
    trained = workload.train(config)
    assert trained.result.forward_iterations == 2 * config.depth  # two segments of depth each per batch
    chains = get_workload("chains")
    with pytest.raises(JfbError, match="takes --segments 1 only"):
        chains.train(chains.config(**{**chains.smoke, "segments": 2}))
    with pytest.raises(JfbError, match="segments must be an integer >= 1, got 0"):
        chains.config(segments=0)
