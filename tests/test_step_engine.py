"""The step engine's settings: optimiser, schedule, clipping and the bad-batch policy (a non-finite loss or
gradient; today's defaults: Adam, cosine, clipping at 1, raise), checked on a linear model whose gradients are
known."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from jfb.errors import JfbError
from jfb.train.engine import StepSettings, Training
from jfb.train.optimization import MAX_BAD_BATCHES


def _training(
    steps: int = 4, bad: set[int] = frozenset(), bad_gradient: set[int] = frozenset(), **settings
) -> Training:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def loss(model: nn.Module, batch: int):
        value = 100.0 * model(torch.ones(1, 3)).sum()  # gradient norm 100 * sqrt(4) = 200 before clipping
        if batch in bad_gradient:  # adds 0, with the gradient inf * 0 = nan: a backward pass that overflowed
            value = value + torch.sqrt(0.0 * model.bias).sum()
        return (value * math.nan if batch in bad else value), 1.0

    return Training(model, lambda index: index, loss, steps, 0.1, StepSettings(**settings))


def test_the_defaults_are_adam_cosine_clipping_at_one_and_raise():
    training = _training()
    assert isinstance(training.optimizer, torch.optim.Adam) and training.settings.clip == 1.0
    rates = []
    for index in range(4):
        training.step(index)
        rates.append(training.schedule.get_last_lr()[0])
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(1, 5)])


def test_onecycle_rises_to_the_learning_rate_and_falls_far_below_it():
    training = _training(steps=20, schedule="onecycle")
    rates = [training.schedule.get_last_lr()[0]]
    for index in range(19):
        training.step(index)
        rates.append(training.schedule.get_last_lr()[0])
    peak = max(range(20), key=rates.__getitem__)
    assert rates[peak] == pytest.approx(0.1) and 0 < peak < 19  # one-cycle's default: the peak at 30% of the steps
    assert rates[0] < 0.01 and rates[-1] < 1e-4


def test_sgd_constant_and_no_clipping_take_the_plain_gradient_step():
    clipped, plain = (
        _training(optimizer="sgd", schedule="constant"),
        _training(optimizer="sgd", schedule="constant", clip=0),
    )
    before = plain.model.bias.detach().clone()
    clipped.step(0), plain.step(0)
    assert isinstance(plain.optimizer, torch.optim.SGD) and plain.schedule.get_last_lr() == [0.1]
    assert float(before - plain.model.bias.detach()) == pytest.approx(0.1 * 100.0)  # the whole gradient: no clipping
    clipped_step = float(before - clipped.model.bias.detach())
    assert clipped_step == pytest.approx(0.1 * 100.0 / 200.0, rel=1e-5)  # the gradient's norm clipped to 1


@pytest.mark.parametrize(
    ("kind", "what"),
    [("bad", r"a non-finite loss \(nan\)"), ("bad_gradient", r"a non-finite gradient \(of a finite loss, [0-9.-]+\)")],
)
def test_a_non_finite_loss_or_gradient_raises_by_default_and_is_skipped_on_request(kind, what):
    """Neither is ever applied: a skipped step leaves the weights and the schedule as they were."""
    with pytest.raises(JfbError, match=rf"{what} at step 1; .*--bad-batches skip"):
        training = _training(**{kind: {1}})
        for index in range(3):
            training.step(index)
    training = _training(**{kind: {1}}, bad_batches="skip")
    training.step(0)
    weights = [p.detach().clone() for p in training.model.parameters()]
    rate = training.schedule.get_last_lr()
    training.step(1)
    assert all(torch.equal(w, p) for w, p in zip(weights, training.model.parameters()))
    assert training.measured.skipped == 1 and training.schedule.get_last_lr() == rate  # no step, no schedule step
    training.step(2)
    assert training.result().skipped == 1 and len(training.result().losses) == 2
    assert all(torch.isfinite(p).all() for p in training.model.parameters())
    training = _training(steps=20, **{kind: set(range(20))}, bad_batches="skip")
    with pytest.raises(JfbError, match=f"{MAX_BAD_BATCHES} consecutive batches had {what}"):
        for index in range(20):
            training.step(index)


def test_a_gradient_non_finite_on_another_process_skips_the_step_here_too():
    training = _training(optimizer="sgd", schedule="constant")
    value, _ = training.loss(training.model, 0)
    before = training.model.bias.detach().clone()
    assert not training.optimization.apply(value, training.model, any_process=lambda flag: True)
    assert torch.equal(before, training.model.bias) and all(p.grad is None for p in training.model.parameters())
    value, _ = training.loss(training.model, 0)
    assert training.optimization.apply(value, training.model, any_process=lambda flag: flag)
    assert float(before - training.model.bias.detach()) == pytest.approx(0.1 * 100.0 / 200.0, rel=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0"),
        ({"clip": -1.0}, "clip must be a number >= 0"),
        ({"log_every": 0}, "log_every must be an integer >= 1"),
        ({"optimizer": 3}, "optimizer must be a string, got 3"),
        ({"optimizer": "adan"}, "unknown optimizer 'adan'; choose one of adam, adamw, sgd .did you mean 'adam'"),
        ({"preempt_signals": ("SIGKILL",)}, "'SIGKILL' is not a signal training can catch"),
    ],
)
def test_bad_settings_are_refused_in_one_line(change, message):
    with pytest.raises(JfbError, match=message):
        StepSettings(**change)


def test_metrics_rows_are_appended_and_the_files_rewritten_only_for_a_new_column(tmp_path, monkeypatch):
    """A long run's rows cost the same at the end as at the start (the files were rewritten whole on every row)."""
    import jfb.train.metrics as metrics_module
    from jfb.train.metrics import MetricsLog, StepRecord

    rewrites, real = [], metrics_module.atomic_write_text
    counted = lambda path, text: rewrites.append(path) or real(path, text)  # noqa: E731
    monkeypatch.setattr(metrics_module, "atomic_write_text", counted)
    log = MetricsLog(tmp_path, x="step")
    for step in range(1, 51):
        log.append(StepRecord(step, {"train_loss": 1.0 / step, **({"accuracy": 0.5} if step == 40 else {})}))
    assert len(rewrites) == 4  # the first row and the first row with "accuracy", each to both files
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 51)) and rows[39]["accuracy"] == 0.5
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,train_loss,accuracy" and len(lines) == 51 and lines[45].endswith(",")


def test_a_metrics_line_cut_by_a_crash_is_dropped_on_resume(tmp_path):
    from jfb.train.steps import _read_rows

    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "train_loss": 0.5}\n{"step": 4, "train_lo')
    assert [r.step for r in _read_rows(tmp_path)] == [2]
