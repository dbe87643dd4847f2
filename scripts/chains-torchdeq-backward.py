"""What torchdeq's IFT backward solve does on the chains workload: train ``torchdeq-ift`` as ``jfb bench zoo`` does
(one seed, the workload's defaults) and record, at every training step, the statistics torchdeq's backward
fixed-point solve reports (its ``backward_writer``): the step of its lowest residual (``nstep``) and that residual.
Then the workload's evaluation.

torchdeq stops its backward solve when the absolute residual falls below ``b_tol`` (1e-6 by default); a second
argument replaces that tolerance (0: never stop early, always 40 iterations, keeping the lowest-residual one).

Usage: python scripts/chains-torchdeq-backward.py SEED [B_TOL]
"""

from __future__ import annotations

import dataclasses
import statistics
import sys

from torchdeq import get_deq

from jfb.benchmarks.torchdeq_engine import TorchdeqEngine
from jfb.benchmarks.zoo import engine_factory
from jfb.workloads import get_workload
from jfb.workloads.engines import Solved

BACKWARD_ITERS = 40


def recording_forward(records: list[dict[str, float]]):
    """``TorchdeqEngine.forward`` with a backward writer that appends each training step's statistics."""

    def forward(self: TorchdeqEngine, x, u0, depth: int) -> Solved:
        self.deq.f_tol = self.eval_tol if not self.training and self.eval_tol is not None else 0.0
        writer = None
        if self.training:
            writer = lambda info: records.append({k: float(info[k].float().mean()) for k in ("nstep", "abs_lowest")})  # noqa: E731
        states, info = self.deq(
            lambda u: self.operator(u, x), u0, solver_kwargs={"f_max_iter": depth}, backward_writer=writer
        )
        return Solved(states[-1], float(info["nstep"].float().mean()))

    return forward


def main() -> None:
    seed = int(sys.argv[1])
    records: list[dict[str, float]] = []
    TorchdeqEngine.forward = recording_forward(records)
    workload = get_workload("chains")
    config = dataclasses.replace(workload.config(), seed=seed, engine="torchdeq-ift")
    model = workload.model(config, engine_factory("torchdeq-ift", config.eval_tol))
    if len(sys.argv) > 2:  # the same engine, another backward tolerance
        for module in model.modules():
            if isinstance(module, TorchdeqEngine):
                module.deq = get_deq(
                    core="indexing", f_solver="fixed_point_iter", f_tol=0.0, f_stop_mode="rel", ift=True, grad=1,
                    b_solver="fixed_point_iter", b_max_iter=BACKWARD_ITERS, b_tol=float(sys.argv[2]),
                )  # fmt: skip
    training = workload.training(model, config)
    for step in range(config.steps):
        training.step(step)
    steps = [r["nstep"] for r in records]
    print(f"seed {seed}, b_tol {sys.argv[2] if len(sys.argv) > 2 else '1e-6 (default)'}, {len(records)} steps")
    early = sum(s < BACKWARD_ITERS for s in steps)
    print(f"backward solves whose lowest residual came before iteration {BACKWARD_ITERS}: {early}")
    for first in range(0, len(steps), 50):
        window = records[first : first + 50]
        iteration = statistics.median(r["nstep"] for r in window)
        residual = statistics.median(r["abs_lowest"] for r in window)
        print(f"steps {first}-{first + 49}, medians: lowest residual at iteration {iteration} ({residual:.2e})")
    metrics, _ = workload.evaluate(model, config)
    print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    main()
