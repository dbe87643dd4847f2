"""The paper's implicit toy problem: y = d + y^5 for d in [-1/2, 1/2].

A small operator ``T(y, d)`` is trained with JFB so that its fixed point matches the true
solution, which is computed by bisection: ``g(y) = y - y^5 - d`` is increasing on
``[-r, r]`` with ``r = 5^(-1/4)`` and ``g(r) = 0.8 r > 1/2 >= d``, so the root there is unique.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..layer import ImplicitLayer
from ..plotting import pyplot
from ..tables import csv_text

ROOT_BOUND = 5 ** (-0.25)


def true_solution(d: Tensor, steps: int = 60) -> Tensor:
    """The root of ``y = d + y^5`` in ``[-5^(-1/4), 5^(-1/4)]``, by bisection (float64)."""
    d = d.double()
    lo, hi = torch.full_like(d, -ROOT_BOUND), torch.full_like(d, ROOT_BOUND)
    for _ in range(steps):
        mid = (lo + hi) / 2
        below = mid - mid**5 - d < 0
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


class ToyOperator(nn.Module):
    """``T(y, d) = d + gamma * tanh(MLP(y))``: its fixed point can represent y = d + y^5."""

    def __init__(self, hidden: int = 32, gamma: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.gamma = gamma

    def forward(self, y: Tensor, d: Tensor) -> Tensor:
        return d + self.gamma * torch.tanh(self.net(y))


def run_toy(out_dir: Path, steps: int = 1500, batch: int = 128, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layer = ImplicitLayer(ToyOperator(), solver="anderson", backward="jfb", tol=1e-6, max_iter=100)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(steps), desc="toy", disable=not progress):
        d = torch.rand(batch, 1) - 0.5
        loss = (layer(d) - true_solution(d).float()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    grid = torch.linspace(-0.5, 0.5, 201)[:, None]
    with torch.no_grad():
        learned = layer(grid)
    truth = true_solution(grid).float()
    error = (learned - truth).abs()
    rows = [{"d": float(a), "true_y": float(b), "learned_y": float(c)} for a, b, c in zip(grid[:, 0], truth[:, 0], learned[:, 0])]
    (out_dir / "toy.csv").write_text(csv_text(rows))
    result = {
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "forward_status": layer.last_stats.status,
        "forward_iters_max": int(layer.last_stats.iterations.max()),
        "steps": steps,
    }
    table = "| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in result.items())
    (out_dir / "toy.md").write_text(table)
    (out_dir / "toy.json").write_text(json.dumps(result))
    _plot(out_dir / "toy.png", grid, truth, learned)
    return result


def _plot(path: Path, grid: Tensor, truth: Tensor, learned: Tensor) -> Optional[Path]:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(grid[:, 0], truth[:, 0], label="true y(d): y = d + y^5")
    ax.plot(grid[:, 0], learned[:, 0], "--", label="fixed point of learned T")
    ax.set_xlabel("d"), ax.set_ylabel("y"), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
