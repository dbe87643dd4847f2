"""The chaos soak (scripts/chaos.py) at a small scale: many faults in one job, bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chaos.py"


@pytest.mark.slow
def test_a_job_through_many_faults_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    argv = [
        sys.executable,
        str(SCRIPT),
        "--faults",
        "9",
        "--limit-train",
        "500",
        "--epochs",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["identical"] and result["faults_survived"] == result["faults_injected"] >= 6
    assert result["nan_batches"] >= 1 and result["restarts"] >= 5


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_under_torchrun_through_many_faults_end_bit_identical(tmp_path):
    argv = [sys.executable, str(SCRIPT), "--faults", "7", "--limit-train", "600", "--processes", "2"]
    done = subprocess.run([*argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["identical"] and result["faults_survived"] == result["faults_injected"] >= 5


@pytest.mark.slow
@pytest.mark.distributed
def test_a_workload_under_torchrun_through_many_faults_ends_bit_identical(tmp_path):
    """The one loop's checkpoints, resume and preemption under torchrun (DDP, 2 gloo processes) for a workload:
    SIGKILLed workers, SIGTERM, damaged checkpoints and a full disk, then the same weights and metrics rows."""
    argv = [sys.executable, str(SCRIPT), "--workload", "prefix-sums", "--steps", "40", "--faults", "6"]
    argv += ["--processes", "2"]
    done = subprocess.run([*argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["job"] == "prefix-sums" and result["processes"] == 2
    assert result["identical"] and result["faults_survived"] == result["faults_injected"] >= 4
