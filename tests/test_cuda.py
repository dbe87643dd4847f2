"""CUDA correctness (marked ``cuda``; skipped without a GPU): the same numbers as on the CPU, no host
synchronisation in the solver loop beyond the checks, BatchNorm paths, channels-last, moving a run
between devices, nccl. ``scripts/device-check.sh`` runs these on a GPU machine."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from operators import TanhOperator, flat
from torch import nn

import jfb
from jfb.train import load_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BACKWARDS = ["jfb", "neumann:2", "ift", "ift:cg:tol=1e-10", "ift:gmres:tol=1e-10", "unroll"]


def _gradient(device: str, backward: str, solver: str = "picard"):
    torch.manual_seed(0)
    op = TanhOperator(24, 0.8).to(device)
    x = torch.randn(6, 24, dtype=torch.float64, device=device)
    head = torch.randn(6, 24, dtype=torch.float64, device=device)
    layer = jfb.ImplicitLayer(op, backward=backward, solver=solver, tol=1e-12, max_iter=300)
    (head * layer(x)).sum().backward()
    return flat(p.grad for p in op.parameters()).cpu(), layer.last_stats


@pytest.mark.parametrize("backward", BACKWARDS)
def test_gradients_on_cuda_equal_the_cpu_ones(backward):
    cpu, _ = _gradient("cpu", backward)
    cuda, stats = _gradient("cuda", backward)
    assert stats.backward.status == "converged"
    assert (cuda - cpu).norm() / cpu.norm() < 1e-9


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_solvers_reach_the_same_fixed_points_on_cuda(solver):
    torch.manual_seed(0)
    op, x = TanhOperator(32, 0.9), torch.randn(8, 32, dtype=torch.float64)
    with torch.no_grad():
        cpu = jfb.ImplicitLayer(op, solver=solver, tol=1e-11, max_iter=500)(x)
        cuda = jfb.ImplicitLayer(op.cuda(), solver=solver, tol=1e-11, max_iter=500)(x.cuda())
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-9)


class _Damped(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, u, x):
        return 0.5 * torch.tanh(self.block(u)) + x


@pytest.mark.parametrize("as_function", [False, True])
def test_running_statistics_update_once_per_step_on_cuda(as_function):
    torch.manual_seed(0)
    operator = _Damped(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))).cuda()
    norm = operator.block[1]
    layer = jfb.ImplicitLayer(
        (lambda u, x: operator(u, x)) if as_function else operator, solver="picard", tol=1e-6, max_iter=50
    )
    layer(torch.randn(16, 8, device="cuda")).sum().backward()
    assert int(norm.num_batches_tracked) == 1 and layer.last_stats.t_evals > 5


def test_channels_last_gives_the_same_outputs_on_cuda():
    from jfb.models import build_model

    torch.manual_seed(0)
    model = (
        build_model("mnist", solver="picard", tol=None, max_iter=8).cuda().eval()
    )  # a fixed depth: no tolerance to straddle
    images = torch.randn(32, 1, 28, 28, device="cuda")
    with torch.no_grad():
        plain = model(images)
        nhwc = model.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, nhwc, atol=1e-3)


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
@pytest.mark.parametrize("check_every, tol", [(1, 1e-9), (4, 1e-9), (1, None)])
def test_host_synchronisations_in_the_solver_loop_on_cuda(solver, check_every, tol):
    torch.manual_seed(0)
    op, x = TanhOperator(64, 0.9).cuda(), torch.randn(32, 64, dtype=torch.float64, device="cuda")
    layer = jfb.ImplicitLayer(op, solver=solver, tol=tol, max_iter=40, check_every=check_every)
    with torch.no_grad():
        layer(x)  # warm-up: first-call allocations
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                layer(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    evaluations = layer.last_stats.t_evals
    limit = 1 if tol is None else math.ceil((evaluations - 1) / check_every) + 1  # the checks, and the final status
    assert syncs <= limit, (syncs, evaluations, [str(w.message)[:120] for w in caught][:5])


def _train(run_dir: Path, device: str, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "jfb",
        "train",
        "mnist",
        "--epochs",
        "2",
        "--limit-train",
        "1024",
        "--limit-test",
        "256",
        "--checkpoint-every",
        "2",
        "--no-progress",
        "--device",
        device,
        "--out",
        str(run_dir),
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_resumes_on_the_other_device(tmp_path, first, then):
    from test_resume import _kill_at_first_mid_epoch_checkpoint

    process = _train(tmp_path, first)
    position = _kill_at_first_mid_epoch_checkpoint(process, tmp_path / "last.pt")
    assert position["epoch"] == 0
    resumed = _train(tmp_path, then, "--resume", "--json")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["epochs"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["config"]["device"] == then


def test_torchrun_with_nccl_trains_a_few_steps(tmp_path):
    worker = Path(__file__).with_name("distributed_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(worker),
        "nccl",
        str(tmp_path),
        "{}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert saved["sync_norms"] > 0 and saved["steps"] == 4 and math.isfinite(saved["accuracy"])
    assert saved["moved"] > 1e-4  # the optimiser stepped


def test_a_fixed_depth_solve_replays_as_a_cuda_graph():
    """The fixed-depth solve has no host synchronisation, so it captures into a CUDA graph and replays exactly."""
    torch.manual_seed(0)
    layer = jfb.ImplicitLayer(TanhOperator(24, 0.8).cuda(), solver="picard", tol=None, max_iter=20).eval()
    static_x = torch.randn(6, 24, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(static_x)  # warm up off the default stream, as capture needs
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = layer(static_x)
        fresh = torch.randn(6, 24, dtype=torch.float64, device="cuda")
        static_x.copy_(fresh)
        graph.replay()
        assert torch.allclose(static_out, layer(fresh), rtol=0, atol=1e-12)
