"""Looped models called as ``model(inputs, depth, u0) -> (logits, iterations, state reached)`` (prefix sums, mazes):
their deep-supervision loss and their test-time compute curves (accuracy against the iteration budget, one solve per
test set for all budgets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..train.supervision import SegmentLoss


def cross_entropy_segments(depth: int) -> SegmentLoss:
    """The segment loss of such a model: ``depth`` iterations from ``u0``, cross-entropy of the logits (classes at
    dim 1) against the targets, the state reached handed on."""

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor], u0: Tensor | None) -> tuple[Tensor, float, Tensor]:
        inputs, targets = batch
        logits, iterations, reached = model(inputs, depth, u0)
        return nn.functional.cross_entropy(logits, targets), iterations, reached

    return loss


@torch.no_grad()
def accuracy_over_budgets(model: nn.Module, inputs: Tensor, targets: Tensor, budgets: tuple[int, ...]) -> list[dict]:
    """Per budget: the fraction of cases whose every position is right (``targets`` ``(N, ...)``, the logits'
    classes at dim 1) and the mean iterations spent. ``model(inputs, depth, u0) -> (logits, iterations, state)``.

    The budgets are visited in increasing order, each continuing from the state the previous one reached (the same
    Picard iterates as a fresh solve of that many iterations; a solve that met the tolerance stops at once), so the
    whole curve costs one solve of the largest budget."""
    state, done, iterations, rows = None, 0, 0.0, []
    for depth in sorted(set(budgets)):
        logits, more, state = model(inputs, depth - done, state)
        done, iterations = depth, iterations + more
        right = (logits.argmax(1) == targets).flatten(1).all(1)
        rows.append({"max_iter": depth, "accuracy": right.float().mean().item(), "iterations": round(iterations, 1)})
    return rows


def plot_budget_curves(plt, path: Path, rows: list[dict[str, Any]], size: str, unit: str, title: str) -> None:
    """Accuracy against test-time iterations, one line per problem size (the rows' ``size`` key, in ``unit``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for value in sorted({r[size] for r in rows}):
        mine = [r for r in rows if r[size] == value]
        ax.plot([r["max_iter"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=f"{value} {unit}")
    ax.set_xscale("log"), ax.set_xlabel("most iterations at test time"), ax.set_ylabel("all right")
    ax.set_title(title), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
