"""Bad batches (non-finite loss or gradient, diverged or non-finite fixed point) are skipped, counted, and stop training
when they persist."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from training import config_of

import jfb.train.classifier as loop
import jfb.train.optimization as optimization
import jfb.train.records as records
import jfb.train.setup as setup
from jfb.train import TrainingStopped, load_checkpoint, train

pytestmark = pytest.mark.slow

CONFIG = dict(epochs=1, limit_train=500, limit_test=100, max_iter=10)


def _poisoned_batches(bad_indices):
    original = loop.batches

    def batches(split, batch_size, normalize, **kwargs):
        for i, (inputs, *rest) in enumerate(original(split, batch_size, normalize, **kwargs)):
            if kwargs.get("shuffle_seed") is not None and (bad_indices is None or i in bad_indices):
                inputs = inputs.clone()
                inputs[0, 0, 0, 0] = float("nan")
            yield inputs, *rest

    return batches


def test_nan_batches_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "batches", _poisoned_batches({1, 3}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(config_of(**CONFIG), tmp_path, progress=False, log=lambda m: None)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_batches"] == 2
    assert all(
        torch.isfinite(p).all()
        for p in load_checkpoint(tmp_path / "last.pt")["model"].values()
        if p.is_floating_point()
    )
    assert result.test_acc_last > 20  # 3 good steps of 5 still train


def test_persistent_nan_stops_training_and_saves_the_good_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "batches", _poisoned_batches(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            TrainingStopped,
            match=r"3 consecutive batches had a non-finite loss or a diverged or non-finite fixed point.*stopped.pt",
        ):
            train(config_of(**CONFIG, max_bad_batches=3), tmp_path, progress=False, log=lambda m: None)
    saved = load_checkpoint(tmp_path / "stopped.pt")["model"]
    assert all(torch.isfinite(p).all() for p in saved.values() if p.is_floating_point())


class _Expansive(torch.nn.Module):
    """T'(u) = 2u + T(u): Picard iterates double every step, the solve diverges (finite values)."""

    def __init__(self, operator: torch.nn.Module) -> None:
        super().__init__()
        self.operator = operator

    def forward(self, u, x):
        return 2 * u + self.operator(u, x)


def test_an_expansive_operator_is_reported_diverged_and_never_trained_on(tmp_path, monkeypatch):
    original = setup.build_from_config

    def expansive_model(config):
        model = original(config)
        model.implicit.operator = _Expansive(model.implicit.operator)
        return model

    monkeypatch.setattr(setup, "build_from_config", expansive_model)
    statuses = []
    monkeypatch.setattr(records.EpochStats, "add", lambda self, *a: statuses.append("trained"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingStopped, match="3 consecutive batches"):
            train(
                config_of(**{**CONFIG, "solver": "picard", "max_iter": 20}, max_bad_batches=3),
                tmp_path,
                progress=False,
                log=lambda m: None,
            )
    assert statuses == []  # no optimiser step was taken
    assert any("diverged" in str(w.message) for w in caught)
    _assert_initial_weights_saved(tmp_path)


def test_a_non_finite_gradient_is_never_applied_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(optimization, "gradients_finite", lambda model: False)  # every backward pass overflowed
    monkeypatch.setattr(records.EpochStats, "add", lambda self, *a: pytest.fail("a batch was trained on"))
    message = r"3 consecutive batches had a non-finite gradient \(of a finite loss, [0-9.]+\) \(last: epoch 1, step"
    with pytest.raises(TrainingStopped, match=message):
        train(config_of(**CONFIG, max_bad_batches=3), tmp_path, progress=False, log=lambda m: None)
    _assert_initial_weights_saved(tmp_path)


def _assert_initial_weights_saved(run_dir) -> None:
    """``stopped.pt`` holds the initial weights and BatchNorm statistics, untouched: no step was ever applied."""
    before = torch.manual_seed(0) and setup.build_from_config(config_of(**CONFIG)).state_dict()
    saved = load_checkpoint(run_dir / "stopped.pt")["model"]
    for name, tensor in saved.items():
        assert torch.equal(tensor, before[name]), name
