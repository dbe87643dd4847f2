"""In-process training helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from jfb.train import TrainConfig, TrainResult, setup_run
from jfb.train.loop import fit
from jfb.train.preemption import Preempted

#: a few hundred MNIST images, Picard at a fixed depth, one thread: seconds per epoch
SMALL = dict(limit_train=300, limit_test=100, batch_size=100, solver="picard", fixed_depth=True, threads=1)


def quiet(message: str) -> None:
    pass


def preempted_and_resumed(config: TrainConfig, run_dir: Path) -> TrainResult:
    """Train ``config`` in ``run_dir``, stopped after its first step as if by SIGTERM, then resumed to the end."""
    run = setup_run(config, run_dir, progress=False, log=quiet)
    run.preemption = SimpleNamespace(received="SIGTERM")
    with pytest.raises(Preempted):
        fit(run)
    return fit(setup_run(config, run_dir, resume=True, progress=False, log=quiet))
