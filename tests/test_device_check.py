"""scripts/device-check.sh --dry-run: every step of the GPU check runs on CPU at tiny sizes, so it never rots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device-check.sh"


def test_the_device_check_dry_run_completes_and_writes_what_the_device_tool_brings_back(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert result.returncode == 0, summary + result.stdout[-2000:] + (tmp_path / "out" / "log.txt").read_text()[-3000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [
        "epoch.csv",
        "log.txt",
        "memory.csv",
        "mnist-epoch.csv",
        "step.csv",
        "summary.md",
        "zoo.csv",
    ]
    assert len(files) <= 8 and summary.count("| ok |") == 14 and "failed" not in summary
    headings = ("Training step vs the floor", "synthetic CIFAR-10-shaped data", "Peak memory", "MNIST training")
    workloads = ("prefix-sums", "chains", "lm", "state-tracking", "mazes", "sudoku")
    for heading in (*headings, *(f"Workload {w}, side by side" for w in workloads), "nvidia-smi"):
        assert heading in summary
    step_rows = (tmp_path / "out" / "step.csv").read_text().splitlines()
    assert (
        step_rows[0].startswith("K,backward,operator,solve,batch,device,precision") and len(step_rows) == 1 + 7
    )  # small (module and function operators, fixed and tolerance solves), large, fp32 + bf16
    zoo_rows = (tmp_path / "out" / "zoo.csv").read_text().splitlines()
    assert zoo_rows[0].startswith("workload,engine,metric,value") and len(zoo_rows) == 1 + 6 * 5  # torchdeq too
