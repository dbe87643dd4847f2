"""Run folders cannot be clobbered: one run at a time (a lock naming its holder), a folder that holds a run is not
started afresh without --resume or --overwrite, and the temporary files of a killed write are removed at the next
start. The language of torchtitan and Lightning's run folders, for the paper models and the workloads alike."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from jfb.cli.main import main
from jfb.errors import JfbError
from jfb.train.checkpoint import load_checkpoint
from jfb.train.run_folder import LOCK, claimed_run_folder
from jfb.workloads import get_workload


def _write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": "then"}))


def test_a_folder_in_use_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, holder.pid)
        refused = pytest.raises(JfbError, match=rf"in use by another run \(PID {holder.pid} on {socket.gethostname()}")
        with refused, claimed_run_folder(tmp_path, resume=True):
            pass
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == holder.pid  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    _write_lock(tmp_path, 1, host="elsewhere")
    with pytest.raises(JfbError, match=r"PID 1 on elsewhere.*delete it"), claimed_run_folder(tmp_path, resume=True):
        pass


def test_a_restart_of_the_same_torchrun_job_takes_the_lock_over_from_another_node(tmp_path, monkeypatch):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 7, "host": "node-0", "since": "then", "job": "job-42"}))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-42")
    said = []
    with claimed_run_folder(tmp_path, resume=True, log=said.append):
        assert json.loads((tmp_path / LOCK).read_text())["host"] == socket.gethostname()
    assert said == [f"{tmp_path}: took over the stale lock of PID 7 on node-0 (no longer running)"]


def test_a_stale_lock_and_killed_writes_are_cleared_and_said(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    (tmp_path / "last.ptx8k2z1.tmp").write_bytes(b"half a checkpoint")
    said = []
    with claimed_run_folder(tmp_path, resume=True, log=said.append):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        assert not (tmp_path / "last.ptx8k2z1.tmp").exists()
    assert not (tmp_path / LOCK).exists()  # released
    assert any(f"took over the stale lock of PID {dead.pid}" in line for line in said)
    assert any("removed 1 temporary file(s) of an interrupted write: last.ptx8k2z1.tmp" in line for line in said)


def test_resume_and_overwrite_together_are_refused_before_anything_is_touched(tmp_path):
    with pytest.raises(JfbError, match="give one of them"), claimed_run_folder(tmp_path / "new", True, True):
        pass
    assert not (tmp_path / "new").exists()


def test_a_finished_mnist_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["train", "mnist", "--limit-train", "200", "--limit-test", "100", "--batch-size", "100", "--epochs", "1"]
    flags += ["--solver", "picard", "--tol", "none", "--max-iter", "2", "--depth-start", "none", "--no-progress"]
    flags += ["--out", str(out)]
    assert main(flags) == 0
    first = load_checkpoint(out / "best.pt")["model"]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a run already (last.pt, best.pt, metrics.jsonl, metrics.csv): --resume continues it" in err
    assert main([*flags, "--resume"]) == 0  # finished: nothing more to train, the same weights
    assert all(torch.equal(first[k], v) for k, v in load_checkpoint(out / "best.pt")["model"].items())
    assert main([*flags, "--overwrite", "--seed", "1"]) == 0
    assert "--overwrite removed the earlier run's" in capsys.readouterr().out
    again = load_checkpoint(out / "best.pt")["model"]
    assert not all(torch.equal(first[k], v) for k, v in again.items())  # a fresh run (another seed)
    assert not (out / LOCK).exists()


def test_a_finished_workload_resumes_to_its_end_without_training_again(tmp_path):
    workload = get_workload("prefix-sums")
    config = dataclasses.replace(workload.config(**workload.smoke), steps=6, checkpoint_every=4, log_every=2)
    whole = workload.train(config, out=tmp_path, log=lambda _: None)
    with pytest.raises(JfbError, match=r"holds a run already \(last.pt, last.prev.pt, metrics.jsonl"):
        workload.train(config, out=tmp_path, log=lambda _: None)
    said = []
    again = workload.train(config, out=tmp_path, resume=True, log=said.append)
    assert said == [f"resumed from {tmp_path / 'last.pt'} at step 6 of 6"]
    assert again.result.losses == whole.result.losses and again.metrics == whole.metrics
    rows = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [2, 4, 6]  # the final row once
