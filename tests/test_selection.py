"""--no-test-every-epoch: the test set is looked at only for the last and the validation-selected epoch."""

from __future__ import annotations

import json
import math

import pytest
from training import config_of

from jfb.train import train

pytestmark = pytest.mark.slow

# lr 1e-9: the weights do not move, so epoch 2 ties epoch 1 on validation and epoch 1 stays selected
CONFIG = dict(epochs=2, limit_train=300, limit_test=200, lr=1e-9, max_iter=10, deterministic=True)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_selected_and_last_epochs_are_tested_with_the_same_numbers(tmp_path):
    every = train(config_of(**CONFIG), tmp_path / "every", progress=False, log=lambda m: None)
    once = train(config_of(**CONFIG, test_every_epoch=False), tmp_path / "once", progress=False, log=lambda m: None)
    assert every.best_epoch == once.best_epoch == 1
    assert once.test_acc_best_val == every.test_acc_best_val and once.test_acc_last == every.test_acc_last
    assert [r["test_acc"] for r in _records(tmp_path / "once")] == [r["test_acc"] for r in _records(tmp_path / "every")]


def test_untested_epochs_are_recorded_as_nan(tmp_path):
    config = config_of(**{**CONFIG, "epochs": 3, "lr": 3e-3}, test_every_epoch=False)
    result = train(config, tmp_path, progress=False, log=lambda m: None)
    records = _records(tmp_path)
    tested = [r["epoch"] for r in records if not math.isnan(r["test_acc"])]
    assert tested == sorted({result.best_epoch, 3})
