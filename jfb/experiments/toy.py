"""The paper's implicit toy problem: y = d + y^5 for d in [-1/2, 1/2].

A small operator ``T(y, d)`` is trained with JFB so that its fixed point matches the true
solution, which is computed by bisection: ``g(y) = y - y^5 - d`` is increasing on
``[-r, r]`` with ``r = 5^(-1/4)`` and ``g(r) = 0.8 r > 1/2 >= d``, so the root there is unique.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..files import prepare_run_dir
from ..layer import ImplicitLayer
from ..reports import Report, key_value_table, save_figure, write_report
from ..settings import setting

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


@dataclass(frozen=True)
class ToySettings:
    out: str = setting("runs/toy", "output folder")
    steps: int = setting(1500, "training steps")
    seed: int = setting(0, "seed")
    batch: int = setting(128, "samples of d per step")


def run_toy(settings: ToySettings, progress: bool = True, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    torch.manual_seed(settings.seed)
    layer = ImplicitLayer(ToyOperator(), solver="anderson", backward="jfb", tol=1e-6, max_iter=100)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    for _ in tqdm(range(settings.steps), desc="toy", disable=not progress):
        d = torch.rand(settings.batch, 1) - 0.5
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
    rows = [
        {"d": float(a), "true_y": float(b), "learned_y": float(c)}
        for a, b, c in zip(grid[:, 0], truth[:, 0], learned[:, 0])
    ]
    summary = {
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
        "forward_status": str(layer.last_stats.status),
        "forward_iters_max": int(layer.last_stats.iterations.max()),
        "steps": settings.steps,
    }

    def plot(plt, path: Path) -> None:
        _plot(plt, path, grid, truth, learned)

    return write_report(out, "toy", rows, key_value_table(summary), plot, summary=summary)


def _plot(plt, path: Path, grid: Tensor, truth: Tensor, learned: Tensor) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(grid[:, 0], truth[:, 0], label="true y(d): y = d + y^5")
    ax.plot(grid[:, 0], learned[:, 0], "--", label="fixed point of learned T")
    ax.set_xlabel("d"), ax.set_ylabel("y"), ax.legend()
    save_figure(fig, path)
