"""Run by test_parallel_workloads.py under torchrun: a workload (smoke size) with DDP or FSDP2, into OUT/run
(with ``sigterm_at``: preempted as that step starts; with ``resume``: continued from OUT/run/last.pt).

Every process counts the all-gathers it launches; process 0 saves the whole final weights, the losses and
the all-gathers per training step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from jfb.train.engine import Training
from jfb.train.preemption import Preempted
from jfb.workloads import get_workload

GATHERS = [0]


def _counting(function):
    def counted(*args, **kwargs):
        GATHERS[0] += 1
        return function(*args, **kwargs)

    return counted


def dist_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _signal_at(step: int) -> None:
    """Process 0 sends itself SIGTERM as step ``step`` starts; the step engine stops every process after it."""
    original = Training.step

    def step_then_signal(self: Training, index: int, watch=None):
        if index == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index, watch)

    Training.step = step_then_signal


def main(name: str, mode: str, out: Path, options: dict) -> None:
    for gather in ("all_gather_single", "all_gather_into_tensor"):  # FSDP2's all-gather, by torch version
        if hasattr(dist, gather):
            setattr(dist, gather, _counting(getattr(dist, gather)))
    sigterm_at, resume = options.pop("sigterm_at", None), options.pop("resume", False)
    if sigterm_at is not None and dist_rank() == 0:
        _signal_at(sigterm_at)
    workload = get_workload(name)
    config = dataclasses.replace(workload.config(**workload.smoke), parallel=mode, **options)
    try:
        trained = workload.train(config, out=out / "run", resume=resume, log=lambda _: None)
    except Preempted:
        return
    if trained.main:
        gathers_per_step = GATHERS[0] / config.steps  # evaluation is one forward after training: counted apart
        record = {"state": trained.state, "losses": trained.result.losses, "gathers": GATHERS[0]}
        record["metrics"] = trained.metrics
        torch.save({**record, "gathers_per_step": gathers_per_step}, out / f"{mode}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
