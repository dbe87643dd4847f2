"""Per-iteration cost of a tolerance-based solve's bookkeeping (the driver's Tracker), without T.

The MNIST model's state (batch 100, 32 x 7 x 7 = 1,568 features): for each stop mode, microseconds per
``record`` (the residual norm, in rel mode that of T(u) too; convergence, divergence and non-finite watch)
and per ``finished`` (the stop decision, one host synchronisation), medians of 7 repetitions of 2,000
calls. Usage:
python scripts/bookkeeping_cost.py
"""

from __future__ import annotations

import statistics
import timeit

import torch

import jfb
from jfb.solvers.driver import Tracker


def cost(stop_mode: str) -> tuple[float, float, float]:
    torch.manual_seed(0)
    x = torch.randn(100, 1568)
    fx = x + 1e-3 * torch.randn(100, 1568)
    options = jfb.SolveOptions(solver="picard", tol=1e-30, max_iter=10**9, stop_mode=stop_mode)
    tracker, step = Tracker(x, options, track_best=False), [0]

    def record() -> None:
        step[0] += 1
        tracker.record(x, fx, step[0], None)

    def norms() -> None:  # the residual, and in rel mode the norm of T(u) it is divided by
        torch.linalg.vector_norm(fx - x, dim=1)
        if stop_mode == "rel":
            torch.linalg.vector_norm(fx, dim=1)

    with torch.no_grad():
        per_call = [
            statistics.median(timeit.repeat(f, number=2000, repeat=7)) / 2000 * 1e6
            for f in (record, lambda: tracker.finished(None), norms)
        ]
    return per_call[0], per_call[1], per_call[2]


if __name__ == "__main__":
    for mode in ("abs", "rel"):
        record_us, finished_us, norms_us = cost(mode)
        print(f"{mode}: record {record_us:.1f} us, finished {finished_us:.1f} us (its norms: {norms_us:.1f} us)")
