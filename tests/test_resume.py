"""Crash and resume: a run killed with SIGKILL mid-epoch and resumed equals an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from processes import JFB, finish, start, succeed, wait_for_checkpoint

from jfb.train import load_checkpoint

pytestmark = pytest.mark.slow

# 600 training images in batches of 100: 6 steps per epoch, a checkpoint every 2 steps
COMMAND = [
    "train",
    "mnist",
    "--epochs",
    "2",
    "--limit-train",
    "600",
    "--limit-test",
    "100",
    "--batch-size",
    "100",
    "--max-iter",
    "8",
    "--checkpoint-every",
    "2",
    "--deterministic",
    "--threads",
    "1",
    "--no-progress",
]
TIMING_KEYS = ("epoch_time_s", "samples_per_s")


def _jfb(run_dir: Path, *extra: str) -> list[str]:
    return [*JFB, *COMMAND, "--out", str(run_dir), *extra]


def _records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    uninterrupted = [base / "a", base / "b"]
    for run_dir in uninterrupted:
        succeed(_jfb(run_dir), timeout=600)
    crashed = base / "crashed"
    process = start(_jfb(crashed))
    wait_for_checkpoint(process, crashed / "last.pt", min_step=1)
    process.send_signal(signal.SIGKILL)
    killed_with, _, _ = finish(process)
    position = load_checkpoint(crashed / "last.pt")["position"]  # what the killed run left on disk
    metrics = crashed / "metrics.jsonl"  # written at the end of each epoch
    epochs_done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    resumed_stdout = succeed(_jfb(crashed, "--resume"), timeout=600)
    return uninterrupted, crashed, (position, epochs_done, resumed_stdout), killed_with


def test_the_run_was_killed_mid_epoch_and_resumed_from_the_step_it_wrote(runs):
    _, crashed, (position, epochs_done, resumed_stdout), killed_with = runs
    assert killed_with == -signal.SIGKILL
    assert epochs_done == 0 and position["epoch"] == 0 and position["step"] in (2, 4)  # --checkpoint-every 2
    assert f"resumed from {crashed / 'last.pt'} at epoch 1, step {position['step']}" in resumed_stdout


def test_deterministic_runs_give_bit_identical_metrics(runs):
    (a, b), _, _, _ = runs
    assert _records(a) == _records(b)
    assert len(_records(a)) == 2


def test_resumed_run_equals_the_uninterrupted_one(runs):
    (a, _), crashed, _, _ = runs
    assert _records(crashed) == _records(a)
    expected, resumed = load_checkpoint(a / "last.pt"), load_checkpoint(crashed / "last.pt")
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert resumed["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], resumed["optimizer"]["state"][index]["exp_avg"])
