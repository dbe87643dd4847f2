"""``jfb bench step``: milliseconds per training step, ours vs the hand-written floor.

The paper's MNIST model, batch 100 by default, a fixed depth of exactly K forward iterations
(Picard, ``tol=None``, checked). For each K and backward mode, our step (ImplicitClassifier
forward, loss, backward, Adam step) and the floor's (:mod:`jfb.benchmarks.floor`) run
alternately on their own copies of the same model, so machine noise hits both; the ratio is
of the medians of ``repeats`` timed steps after ``warmup`` untimed ones.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..models import build_model
from ..tables import csv_text
from .floor import floor_step


def _our_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def compare_steps(iterations: int, backward: str, batch: int, repeats: int, warmup: int, seed: int = 0) -> dict:
    """Median ms per step for ours and the floor, interleaved step by step."""
    torch.manual_seed(seed)
    ours = build_model("mnist", solver="picard", backward=backward, tol=None, max_iter=iterations, on_failure="raise")
    floor = copy.deepcopy(ours)
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    our_opt, floor_opt = torch.optim.Adam(ours.parameters(), 1e-3), torch.optim.Adam(floor.parameters(), 1e-3)
    ours.train(), floor.train()
    run_ours = lambda: _our_step(ours, our_opt, images, labels)  # noqa: E731
    run_floor = lambda: floor_step(floor.embedding, floor.operator, floor.head, floor_opt, images, labels, iterations)  # noqa: E731
    times: dict[str, list[float]] = {"ours": [], "floor": []}
    for i in range(warmup + repeats):
        pair = (("ours", run_ours), ("floor", run_floor)) if i % 2 == 0 else (("floor", run_floor), ("ours", run_ours))
        for name, step in pair:
            elapsed = _timed(step)
            if i >= warmup:
                times[name].append(elapsed)
    stats = ours.implicit.last_stats
    if stats.forward.t_evals != iterations or stats.status != "fixed_depth":
        raise RuntimeError(f"expected a fixed depth of {iterations} forward iterations, ran {stats.forward.t_evals} ({stats.status})")
    ours_ms, floor_ms = 1000 * statistics.median(times["ours"]), 1000 * statistics.median(times["floor"])
    return {"K": iterations, "backward": backward, "batch": batch, "repeats": repeats,
            "ours_ms": ours_ms, "floor_ms": floor_ms, "ratio": ours_ms / floor_ms}


def step_table(out: Path, ks: list[int], modes: list[str], batch: int, repeats: int, warmup: int, log=print) -> list[dict]:
    rows = []
    for k in ks:
        for mode in modes:
            row = compare_steps(k, mode, batch, repeats, warmup)
            log(json.dumps(row))
            rows.append(row)
    (out / "step.csv").write_text(csv_text(rows))
    lines = ["| K | backward | ours (ms) | floor (ms) | ours / floor |", "|---|---|---|---|---|"]
    lines += [f"| {r['K']} | {r['backward']} | {r['ours_ms']:.1f} | {r['floor_ms']:.1f} | {r['ratio']:.3f} |" for r in rows]
    (out / "step.md").write_text("\n".join(lines) + f"\n\nbatch {batch}, medians of {repeats} steps after {warmup} warm-up steps, "
                                 f"{torch.get_num_threads()} threads\n")
    return rows
