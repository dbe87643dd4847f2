"""Peak memory of one training step vs forward depth, one fresh subprocess per measurement.

Why a subprocess and RSS: CPU tensors are invisible to ``tracemalloc`` and a process's
allocator keeps freed memory around, so measurements in one process contaminate each other.
Each measurement runs in a new interpreter with glibc's mmap threshold fixed at 64 KiB (every
tensor larger than that is mapped on allocation and unmapped on free, so resident memory
tracks live tensors), resets the kernel's peak-RSS counter after a warm-up step
(``/proc/self/clear_refs``), runs one step and reports ``VmHWM - VmRSS_before``. Solves run
a fixed depth (``tol=None``): every one of the ``max_iter`` iterations runs (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import jfb

from ..files import prepare_run_dir
from ..reports import Report, markdown_table, save_figure, write_report
from ..settings import setting

MODELS = ("mnist", "elementwise")


class _ElementwiseOperator(nn.Module):
    """``tanh(w * u + b + x)`` with ``0.99 < w < 1``: cheap to evaluate, so memory, not compute, dominates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(0.99 + 0.009 * torch.rand(dim))  # slow: every iteration runs
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.w * u + self.b + x)


def _kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _step_function(model_name: str, backward: str, dim: int, batch: int, device: str = "cpu") -> Callable[[int], int]:
    """``step(depth)`` runs one training step with ``depth`` forward iterations and returns the depth run."""
    torch.manual_seed(0)
    if model_name == "mnist":
        from ..models import build_model

        model = build_model("mnist").to(device)
        operator, embed, head = model.operator, model.embedding, model.head
        inputs, targets = torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
    else:
        operator, embed, head = _ElementwiseOperator(dim).to(device), nn.Identity(), None
        inputs, targets = torch.randn(batch, dim, device=device), None
    params = [p for m in (operator, embed, head) if m is not None for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3)

    solver = jfb.backward.get_backward(backward).forward_solver or "picard"

    def step(depth: int) -> int:
        layer = jfb.ImplicitLayer(
            operator, solver=solver, backward=backward, tol=None, max_iter=depth, on_failure="ignore"
        )
        u = layer(embed(inputs))
        loss = nn.functional.cross_entropy(head(u), targets) if head is not None else u.square().mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return layer.last_stats.forward.t_evals

    return step


def _peak_of_one_step(
    step: Callable[[int], int], max_iter: int, reset: Callable[[], float], peak: Callable[[float], float]
) -> float:
    """Warm up, reset the peak counter (``reset`` returns the baseline), run one step of ``max_iter``
    iterations (checked), and return ``peak(baseline)`` in MiB."""
    step(2)  # warm-up: gradient buffers, optimiser state, autograd engine
    before = reset()
    depth = step(max_iter)
    if depth != max_iter:
        raise RuntimeError(
            f"the solve stopped after {depth} of {max_iter} iterations; the measurement needs all of them"
        )
    return peak(before)


def _reset_resident() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _kib("VmRSS") / 1024


def _reset_cuda() -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def _measure_in_this_process(model_name: str, backward: str, max_iter: int, dim: int, batch: int) -> dict:
    torch.set_num_threads(1)
    step = _step_function(model_name, backward, dim, batch)
    peak = _peak_of_one_step(step, max_iter, _reset_resident, lambda before: _kib("VmHWM") / 1024 - before)
    return {"model": model_name, "backward": backward, "max_iter": max_iter, "peak_mib": peak}


def peak_cuda_step_memory(backward: str, max_iter: int, dim: int, batch: int, model: str) -> float:
    """Peak extra GPU memory (MiB) of one training step: the CUDA allocator counts exactly, so in this process."""
    step = _step_function(model, backward, dim, batch, "cuda")
    return _peak_of_one_step(
        step, max_iter, _reset_cuda, lambda before: torch.cuda.max_memory_allocated() / 2**20 - before
    )


def peak_step_memory(
    backward: str, max_iter: int, dim: int = 1024, batch: int = 256, model: str = "elementwise", device: str = "cpu"
) -> float:
    """Peak extra memory (MiB) of one training step: resident memory in a fresh subprocess, or GPU memory."""
    if device == "cuda":
        return peak_cuda_step_memory(backward, max_iter, dim, batch, model)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "jfb.benchmarks.memory",
        "--child",
        model,
        backward,
        str(max_iter),
        str(dim),
        str(batch),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        reason = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
        raise RuntimeError(f"memory measurement failed: {reason}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


@dataclass(frozen=True)
class MemoryBenchSettings:
    out: str = setting("runs/bench-memory", "output folder")
    depths: tuple[int, ...] = setting((10, 50, 100, 200, 500), "forward depths, comma-separated")
    methods: tuple[str, ...] = setting(("jfb", "ift:cg", "neumann:4", "unroll"), "backward modes, comma-separated")
    model: str = setting("mnist", "the paper's MNIST model or an elementwise toy", choices=MODELS)
    batch_size: int = setting(100, "images per step")
    device: str = setting("cpu", "cpu: resident memory; cuda: GPU memory", choices=("cpu", "cuda"))


def memory_table(settings: MemoryBenchSettings, log=print) -> Report:
    """Peak memory for every (mode, depth); writes memory.csv, memory.md and a log-log memory.png."""
    out = prepare_run_dir(Path(settings.out))
    rows = []
    for mode in settings.methods:
        for depth in settings.depths:
            peak = peak_step_memory(
                mode, depth, batch=settings.batch_size, model=settings.model, device=settings.device
            )
            rows.append({"backward": mode, "max_iter": depth, "device": settings.device, "peak_mib": round(peak, 2)})
            log(f"{mode:>12} depth {depth:>4}: {rows[-1]['peak_mib']:.2f} MiB")
    headers = ["backward", *(f"depth {d}" for d in settings.depths), "ratio deepest/shallowest"]
    cells = []
    for mode in settings.methods:
        values = [r["peak_mib"] for r in rows if r["backward"] == mode]
        cells.append([mode, *(f"{v:.1f} MiB" for v in values), f"{values[-1] / values[0]:.2f}"])

    def plot(plt, path: Path) -> None:
        _plot(plt, path, rows, settings.methods)

    return write_report(out, "memory", rows, markdown_table(headers, cells), plot)


def _plot(plt, path: Path, rows: list[dict], modes: tuple[str, ...]) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    for mode in modes:
        points = [(r["max_iter"], r["peak_mib"]) for r in rows if r["backward"] == mode]
        ax.loglog(*zip(*points), marker="o", label=mode)
    ax.set_xlabel("forward iterations"), ax.set_ylabel("peak memory of a training step (MiB)"), ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=5, metavar=("MODEL", "BACKWARD", "MAX_ITER", "DIM", "BATCH"))
    args = parser.parse_args(argv)
    if args.child:
        model, backward, max_iter, dim, batch = args.child
        print(json.dumps(_measure_in_this_process(model, backward, int(max_iter), int(dim), int(batch))))


if __name__ == "__main__":
    main()
