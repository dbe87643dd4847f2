#!/usr/bin/env python3
"""Where the host bookkeeping stops paying: a tolerance solve of ``u = tanh(W u + x)`` timed with the host tracker
and with the device tracker forced, at several batch sizes and two dimensions, interleaved, medians.

usage: scripts/host-batch-threshold.py OUT_CSV [REPEATS]

The library keeps a solve's bookkeeping on the host up to ``jfb.solvers.host_tracker.HOST_BATCH`` samples; this
measures the ratio of the two trackers' times that the constant was chosen from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import jfb
from jfb.benchmarks.overhead import median_ms_interleaved, tanh_problem
from jfb.reports import csv_text
from jfb.solvers import host_tracker


def _solve_with(limit: int, T, x) -> None:
    host_tracker.HOST_BATCH = limit
    jfb.fixed_point(T, x, solver="picard", tol=1e-6, max_iter=100, stop_mode="abs")


def main() -> None:
    out, repeats = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
    chosen, rows = host_tracker.HOST_BATCH, []
    for dim in (10, 100):
        for batch in (1, 8, 16, 32, 64, 128, 256):
            T, x = tanh_problem(dim, batch)
            calls = {"host": lambda T=T, x=x: _solve_with(10**9, T, x), "device": lambda T=T, x=x: _solve_with(0, T, x)}
            with torch.no_grad():
                ms = median_ms_interleaved(calls, repeats, group=10)
            rows.append(dict(dim=dim, batch=batch, host_ms=f"{ms['host']:.4f}", device_ms=f"{ms['device']:.4f}",
                             host_over_device=f"{ms['host'] / ms['device']:.3f}"))  # fmt: skip
            print(rows[-1], flush=True)
    host_tracker.HOST_BATCH = chosen
    Path(out).write_text(csv_text(rows))


if __name__ == "__main__":
    main()
