"""The DEQ language model on 2 processes (gloo on CPU): DDP and FSDP2 agree, and FSDP2 gathers T's
parameters once per step however many solver iterations run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from processes import TORCHRUN, succeed

from jfb.errors import JfbError
from jfb.workloads import get_workload

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("workload_worker.py")


def _run(out: Path, mode: str, **options) -> dict:
    folder = out / f"{mode}-{options.get('depth', 'default')}"
    folder.mkdir()
    succeed([*TORCHRUN, str(WORKER), mode, str(folder), json.dumps(options)])
    return torch.load(folder / f"{mode}.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("parallel")
    return {mode: _run(base, mode, steps=20) for mode in ("ddp", "fsdp")}


def test_ddp_and_fsdp_end_with_the_same_weights(runs):
    ddp, fsdp, initial = runs["ddp"]["state"], runs["fsdp"]["state"], get_initial()
    assert ddp.keys() == fsdp.keys() == initial.keys()
    moved = max((ddp[k] - initial[k]).abs().max().item() for k in ddp)
    worst = max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp)
    assert moved > 1e-2  # training changed the weights
    assert worst < 1e-4  # float summation order only (measured in the results page)


def get_initial() -> dict[str, torch.Tensor]:
    workload = get_workload("lm")
    return workload.model(workload.config(**workload.smoke)).state_dict()


def test_fsdp_all_gathers_do_not_grow_with_solver_iterations(tmp_path):
    shallow = _run(tmp_path, "fsdp", steps=5, depth=4)
    deep = _run(tmp_path, "fsdp", steps=5, depth=16)
    assert shallow["gathers"] == deep["gathers"]
    assert shallow["gathers"] <= 5 * 4 + 4  # a handful per step (root and T), not one per iteration


def test_a_parallel_mode_outside_torchrun_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    workload = get_workload("lm")
    with pytest.raises(JfbError, match="runs under torchrun"):
        workload.train(workload.config(parallel="fsdp", **workload.smoke))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
