"""In-process training helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jfb.solvers.options import option_names
from jfb.train import TrainConfig, TrainResult, fit, setup_run
from jfb.train.preemption import Preempted

#: a few hundred MNIST images, Picard at a fixed depth, one thread: seconds per epoch
SMALL = dict(limit_train=300, limit_test=100, batch_size=100, solver="picard", tol=None, threads=1)


def config_of(**values: Any) -> TrainConfig:
    """A TrainConfig from flat test settings: SolveOptions fields go to the ``solve`` table, ``eval_<field>``
    to ``eval_solve`` (how a command line spells them: ``--max-iter 4 --eval-max-iter 2``)."""
    solve = {k: values.pop(k) for k in list(values) if k in option_names()}
    evaluation = {k[5:]: values.pop(k) for k in list(values) if k.startswith("eval_") and k[5:] in option_names()}
    return TrainConfig(**values, solve=solve, eval_solve=evaluation)


def quiet(message: str) -> None:
    pass


def preempted_and_resumed(config: TrainConfig, run_dir: Path) -> TrainResult:
    """Train ``config`` in ``run_dir``, stopped after its first step as if by SIGTERM, then resumed to the end."""
    run = setup_run(config, run_dir, progress=False, log=quiet)
    with pytest.raises(Preempted):
        fit(run, watch=SimpleNamespace(received="SIGTERM"))
    return fit(setup_run(config, run_dir, resume=True, progress=False, log=quiet))
