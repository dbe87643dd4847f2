"""Looped models called as ``model(inputs, depth, u0) -> (logits, iterations, state reached)`` (prefix sums, mazes):
their deep-supervision loss and their test-time compute curves (accuracy against the iteration budget, one solve per
test set for all budgets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..reports import save_figure
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


@dataclass(frozen=True)
class BudgetCurves:
    """How a looped workload's per-case rows plot: accuracy against the test-time iterations (``max_iter``), one
    line per problem size (the rows' ``size`` key, each line labelled ``"{size} {unit}"``)."""

    size: str
    unit: str
    title: str
    accuracy: str = "all right"

    def draw(self, ax: Any, rows: list[dict[str, Any]]) -> None:
        """The curves on one matplotlib axis (a panel of a larger figure)."""
        for value in sorted({r[self.size] for r in rows}):
            mine = [r for r in rows if r[self.size] == value]
            ax.plot(
                [r["max_iter"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=f"{value} {self.unit}"
            )
        budgets = sorted({r["max_iter"] for r in rows})
        ax.set_xscale("log"), ax.set_xlabel("most iterations at test time")
        ax.set_xticks(budgets, [str(b) for b in budgets], fontsize=8), ax.minorticks_off()  # the budgets, no 10^k

    def plot(self, plt: Any, path: Path, rows: list[dict[str, Any]]) -> None:
        """One run's curves in a figure of their own, saved to ``path``."""
        fig, ax = plt.subplots(figsize=(5.5, 4))
        self.draw(ax, rows)
        ax.set_ylabel(self.accuracy), ax.set_title(self.title), ax.legend()
        save_figure(fig, path)
