"""Every workload trains through the one step engine: preempted by SIGTERM at about half its steps and resumed
with ``--resume``, it ends with the weights, losses, metrics and metrics rows of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch

from jfb.cli.main import main
from jfb.train.checkpoint import load_checkpoint
from jfb.train.engine import Training
from jfb.train.preemption import EXIT_PREEMPTED, Preempted
from jfb.workloads import WORKLOADS, get_workload

pytestmark = pytest.mark.slow

STEPS, STOP_AT = 12, 5  # SIGTERM arrives while step STOP_AT trains: last.pt is written after it, at STOP_AT + 1


def _smoke(name: str, **changes):
    workload = get_workload(name)
    return workload, workload.config(
        **{**workload.smoke, "steps": STEPS, "checkpoint_every": 4, "log_every": 2, **changes}
    )


def _sigterm_at(workload, step: int):
    """The workload with a batch source that sends this process SIGTERM when batch ``step`` is drawn."""
    original = workload.batches

    def batches(config):
        source = original(config)

        def batch(index: int):
            if index == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return source(index)

        return batch

    return dataclasses.replace(workload, batches=batches)


def _rows(folder) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "ms_per_step"} for row in rows]  # times differ


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, name):
    workload, config = _smoke(name)
    whole = workload.train(config, out=tmp_path / "whole", log=lambda _: None)
    folder = tmp_path / "interrupted"
    with pytest.raises(Preempted, match=f"step {STOP_AT + 1} of {STEPS}"):
        _sigterm_at(workload, STOP_AT).train(config, out=folder, log=lambda _: None)
    last = load_checkpoint(folder / "last.pt")
    assert last["training"]["step"] == STOP_AT + 1 and last["workload"] == name
    said = []
    resumed = workload.train(config, out=folder, resume=True, log=said.append)
    assert said == [f"resumed from {folder / 'last.pt'} at step {STOP_AT + 1} of {STEPS}"]
    assert whole.state.keys() == resumed.state.keys()
    assert all(torch.equal(whole.state[k], resumed.state[k]) for k in whole.state)  # bit for bit, one machine
    assert whole.result.losses == resumed.result.losses and len(resumed.result.losses) == STEPS
    assert whole.metrics == resumed.metrics
    assert _rows(tmp_path / "whole") == _rows(folder) and [r["step"] for r in _rows(folder)] == [2, 4, 6, 8, 10, 12]


def test_a_resume_with_other_options_is_refused_in_one_line(tmp_path):
    workload, config = _smoke("prefix-sums")
    with pytest.raises(Preempted):
        _sigterm_at(workload, 2).train(config, out=tmp_path, log=lambda _: None)
    with pytest.raises(Exception, match=r"written with other options \(lr: 0.002 -> 0.1\)"):
        workload.train(dataclasses.replace(config, lr=0.1), out=tmp_path, resume=True, log=lambda _: None)


def test_the_command_line_resumes_and_jfb_eval_reads_last_pt(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    flags = ["--steps", "6", "--width", "8", "--test-bits", "8", "--test-depths", "4", "--test-strings", "4"]
    common = ["train", "prefix-sums", *flags, "--checkpoint-every", "2", "--out", str(out), "--no-progress"]
    step = Training.step

    def signalled_step(self, index: int, watch=None):
        if index == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, index, watch)

    monkeypatch.setattr(Training, "step", signalled_step)
    assert main(common) == EXIT_PREEMPTED
    assert "rerun the same command with --resume" in capsys.readouterr().out
    assert main(["eval", str(out / "last.pt"), "--json"]) == 0
    assert "hardest_accuracy" in capsys.readouterr().out
    monkeypatch.undo()
    assert main([*common, "--resume", "--json"]) == 0
    assert "resumed from" in capsys.readouterr().out and (out / "model.pt").is_file()
    assert main(["train", "prefix-sums", "--resume", "--steps", "1"]) == 2
    assert "--resume continues a run folder: give it with --out" in capsys.readouterr().err
