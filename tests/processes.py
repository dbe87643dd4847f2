"""Subprocess helpers for tests that launch ``jfb`` (alone or under torchrun) and send it signals.

Every launch runs in its own session with a bounded wait; on a hang the whole process group
(launcher and workers) is killed and the test fails showing the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from jfb.errors import JfbError
from jfb.train import load_checkpoint

JFB = [sys.executable, "-m", "jfb"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def start(command: list[str]) -> subprocess.Popen:
    """``command`` in its own session, marked so that every process it starts can be found and killed
    (torchrun starts its workers in sessions of their own)."""
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "JFB_TEST_LAUNCH": marker}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    process.marker = marker
    return process


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process that carries its marker (orphaned workers included)."""
    needle = f"JFB_TEST_LAUNCH={process.marker}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def finish(process: subprocess.Popen, timeout: float = 300, hang_ok: bool = False) -> tuple[int | None, str, str]:
    """``(returncode, stdout, stderr)``. When it did not end in ``timeout`` every process it started is
    killed, and the returncode is None with ``hang_ok``; otherwise an AssertionError shows the output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(process)
        stdout, stderr = process.communicate(timeout=30)
        if hang_ok:
            return None, stdout, stderr
        raise AssertionError(f"hung for {timeout} s\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}") from None
    return process.returncode, stdout, stderr


def succeed(command: list[str], timeout: float = 300) -> str:
    """The stdout of ``command``, which must exit 0 and print no warning raised from the package's code."""
    code, stdout, stderr = finish(start(command), timeout)
    assert code == 0, f"exit status {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    warned = re.findall(r"/jfb/\S+\.py:\d+: \w*Warning.*", stderr)  # how warnings.warn prints one
    assert not warned, warned
    return stdout


def wait_for_checkpoint(process: subprocess.Popen, path: Path, min_step: int, timeout: float = 300) -> dict:
    """Poll until ``path`` holds a mid-epoch position with ``step >= min_step``; that position."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            position = load_checkpoint(path)["position"] if path.exists() else None
        except JfbError:  # replaced between the check and the read
            position = None
        if position is not None and position["epoch"] == 0 and position["step"] >= min_step:
            return position
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    raise AssertionError(
        f"no checkpoint at step >= {min_step} appeared\nstdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}"
    )


def workers_of(launcher: int) -> list[int]:
    """The child processes of ``launcher`` (torchrun's workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            children.append(int(stat.parent.name))
    return sorted(children)


def same_metrics(a: Path, b: Path) -> bool:
    """Whether two run dirs' metrics.jsonl agree in every column but the timing ones (NaN equals NaN)."""

    def records(run_dir: Path) -> str:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        timing = ("epoch_time_s", "samples_per_s", "gradient_check_s")
        return json.dumps([{k: v for k, v in r.items() if k not in timing} for r in rows], sort_keys=True)

    return records(a) == records(b)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical model weights and buffers."""
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
