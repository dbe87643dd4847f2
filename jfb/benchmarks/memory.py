"""Peak memory of one training step vs forward depth, one fresh subprocess per measurement.

Why a subprocess and RSS: CPU tensors are invisible to ``tracemalloc`` and a process's
allocator keeps freed memory around, so measurements in one process contaminate each other.
Each measurement runs in a new interpreter with glibc's mmap threshold fixed at 64 KiB (every
tensor larger than that is mapped on allocation and unmapped on free, so resident memory
tracks live tensors), resets the kernel's peak-RSS counter after a warm-up step
(``/proc/self/clear_refs``), runs one step and reports ``VmHWM - VmRSS_before``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional

import torch
from torch import nn

import jfb


class _ElementwiseOperator(nn.Module):
    """``tanh(w * u + b + x)`` with ``0.99 < w < 1``: cheap to evaluate, so memory, not compute, dominates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(0.99 + 0.009 * torch.rand(dim))  # slow: every iteration runs
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.w * u + self.b + x)


def _kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_in_this_process(backward: str, max_iter: int, dim: int, batch: int) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    op = _ElementwiseOperator(dim)
    opt = torch.optim.SGD(op.parameters(), lr=1e-3)
    x = torch.randn(batch, dim)
    solver = "picard"

    def step(depth: int) -> None:
        layer = jfb.ImplicitLayer(op, solver=solver, backward=backward, tol=1e-30, max_iter=depth, on_failure="ignore")
        opt.zero_grad(set_to_none=False)
        layer(x).square().mean().backward()
        opt.step()
        layer_depth[0] = layer.last_stats.forward.t_evals

    layer_depth = [0]
    step(2)  # warm-up: gradient buffers, optimiser state, autograd engine
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _kib("VmRSS")
    step(max_iter)
    depth = layer_depth[0]
    if depth != max_iter:
        raise RuntimeError(f"the solve stopped after {depth} of {max_iter} iterations; the measurement needs all of them")
    return {"backward": backward, "max_iter": max_iter, "peak_mib": (_kib("VmHWM") - before) / 1024}


def peak_step_memory(backward: str, max_iter: int, dim: int = 1024, batch: int = 256) -> float:
    """Peak extra resident memory (MiB) of one training step, measured in a fresh subprocess."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jfb.benchmarks.memory", "--child", backward, str(max_iter), str(dim), str(batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("BACKWARD", "MAX_ITER", "DIM", "BATCH"))
    args = parser.parse_args(argv)
    if args.child:
        backward, max_iter, dim, batch = args.child
        print(json.dumps(_measure_in_this_process(backward, int(max_iter), int(dim), int(batch))))


if __name__ == "__main__":
    main()
