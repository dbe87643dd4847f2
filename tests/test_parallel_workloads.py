"""The workloads on 2 processes (gloo on CPU): every workload x parallel mode trains or is refused in one line
before any work; DDP and FSDP2 agree; FSDP2 gathers T's parameters once per step however many solver
iterations run."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from processes import TORCHRUN, succeed

from jfb.errors import JfbError
from jfb.train.checkpoint import load_checkpoint
from jfb.workloads import WORKLOADS, get_workload

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WORKER = Path(__file__).with_name("workload_worker.py")
#: steps of a matrix cell: enough to move the weights, few enough for CI
CELL_STEPS = {"lm": 20, "prefix-sums": 10, "state-tracking": 10, "mazes": 10, "sudoku": 10}


def _run(out: Path, name: str, mode: str, **options) -> dict:
    folder = out / f"{name}-{mode}-{options.get('depth', 'default')}-{options.get('engine', 'jfb')}"
    folder.mkdir()
    succeed([*TORCHRUN, str(WORKER), name, mode, str(folder), json.dumps(options)])
    return torch.load(folder / f"{mode}.pt", weights_only=True)


def _initial(name: str) -> dict[str, torch.Tensor]:
    workload = get_workload(name)
    return workload.model(workload.config(**workload.smoke)).state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("parallel")
    cells = [(name, mode) for name in CELL_STEPS for mode in ("ddp", "fsdp")]
    return {(name, mode): _run(base, name, mode, steps=CELL_STEPS[name]) for name, mode in cells}


def test_every_workload_names_its_parallel_modes_and_the_matrix_covers_them():
    splitting = {name for name, workload in WORKLOADS.items() if workload.parallel != ("none",)}
    assert splitting == set(CELL_STEPS)  # each workload that claims ddp/fsdp runs below; the others are refused
    for name in set(WORKLOADS) - splitting:
        assert WORKLOADS[name].single_process_reason


@pytest.mark.parametrize("name", sorted(CELL_STEPS))
def test_ddp_and_fsdp_end_with_the_same_weights(runs, name):
    ddp, fsdp, initial = runs[(name, "ddp")]["state"], runs[(name, "fsdp")]["state"], _initial(name)
    assert ddp.keys() == fsdp.keys() == initial.keys()
    moved = max((ddp[k] - initial[k]).abs().max().item() for k in ddp)
    worst = max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp)
    assert moved > 1e-2  # training changed the weights
    assert worst < 1e-4  # float summation order only (measured in the results page)
    assert runs[(name, "ddp")]["metrics"].keys() == runs[(name, "fsdp")]["metrics"].keys()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_preempted_parallel_run_resumes_to_the_uninterrupted_weights(runs, tmp_path, mode):
    """SIGTERM to process 0 at step 8 of 20: every process stops after that step, last.pt holds the whole weights
    and optimiser state, and the resumed run (the same command with --resume) ends where the uninterrupted one did."""
    folder = tmp_path / mode
    folder.mkdir()
    succeed([*TORCHRUN, str(WORKER), "lm", mode, str(folder), json.dumps({"steps": 20, "sigterm_at": 8})])
    assert load_checkpoint(folder / "run" / "last.pt")["training"]["step"] == 9
    succeed([*TORCHRUN, str(WORKER), "lm", mode, str(folder), json.dumps({"steps": 20, "resume": True})])
    resumed, whole = torch.load(folder / f"{mode}.pt", weights_only=True), runs[("lm", mode)]
    assert resumed["losses"] == whole["losses"]
    assert all(torch.equal(resumed["state"][k], whole["state"][k]) for k in whole["state"])


@pytest.mark.parametrize("engine", ["ift", "unroll"])
def test_the_exact_gradient_engines_agree_under_ddp_and_fsdp(tmp_path, engine):
    """The other engines' torchrun cells (jfb's are the runs above): prefix sums, 4 steps."""
    ddp, fsdp = (_run(tmp_path, "prefix-sums", mode, steps=4, engine=engine) for mode in ("ddp", "fsdp"))
    assert max((ddp["state"][k] - fsdp["state"][k]).abs().max().item() for k in ddp["state"]) < 1e-4
    assert ddp["losses"] == pytest.approx(fsdp["losses"], rel=1e-4)


def test_fsdp_all_gathers_do_not_grow_with_solver_iterations(tmp_path):
    shallow = _run(tmp_path, "lm", "fsdp", steps=5, depth=4)
    deep = _run(tmp_path, "lm", "fsdp", steps=5, depth=16)
    assert shallow["gathers"] == deep["gathers"]
    assert shallow["gathers"] <= 5 * 4 + 4  # a handful per step (root and T), not one per iteration


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_workload_whose_batch_does_not_split_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: the refusal comes before any process group
    workload = get_workload("chains")
    config = dataclasses.replace(workload.config(**workload.smoke), parallel=mode)
    with pytest.raises(JfbError, match=rf"workload 'chains' does not train under --parallel {mode} \(a batch is one"):
        workload.run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_parallel_mode_outside_torchrun_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    workload = get_workload("lm")
    with pytest.raises(JfbError, match="runs under torchrun"):
        workload.train(workload.config(parallel="fsdp", **workload.smoke))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
