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

from jfb.benchmarks.torchdeq_engine import TorchdeqEngine
from jfb.workloads import get_workload

BACKWARD_ITERS = 40


def main() -> None:
    seed = int(sys.argv[1])
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-6  # torchdeq's default backward tolerance
    records: list[dict[str, float]] = []
    workload = get_workload("chains")
    config = dataclasses.replace(workload.config(), seed=seed, engine="torchdeq-ift")
    model = workload.model(
        config, lambda op: TorchdeqEngine(op, True, config.eval_tol, backward_iters=BACKWARD_ITERS, backward_tol=tol)
    )
    model.engine.backward_writer = lambda info: records.append(
        {key: float(info[key].float().mean()) for key in ("nstep", "abs_lowest")}
    )
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
