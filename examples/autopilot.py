"""backward="auto" at work: an operator that loses its contraction mid-training, and gets it back.

A DEQ regression model, u* = tanh(W u* + U x), is trained with ``backward="auto:every=10"``. At step
``--break-at`` W is multiplied so that T stops being a contraction (its spectral radius at u* passes 1);
at ``--repair-at`` W is projected back to spectral norm 0.5. Every tenth step the autopilot compares
the JFB direction with the implicit one; each check and each switch (JFB -> neumann:4 -> IFT and back)
is printed.

    python examples/autopilot.py
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import jfb
from jfb.backward import Autopilot


class TanhOperator(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.W = nn.Linear(dim, dim, bias=False)
        self.U = nn.Linear(dim, dim)
        self.set_norm(0.5)

    @torch.no_grad()
    def set_norm(self, norm: float) -> None:
        self.W.weight.mul_(norm / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W(u) + self.U(x))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--break-at", type=int, default=100)
    parser.add_argument("--repair-at", type=int, default=200)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    operator, autopilot = TanhOperator(args.dim), Autopilot(every=10)
    layer = jfb.ImplicitLayer(operator, autopilot, solver="anderson", tol=1e-6, max_iter=100, on_failure="ignore")
    head, teacher = nn.Linear(args.dim, 1), nn.Linear(args.dim, 1)
    optimizer = torch.optim.Adam([*operator.parameters(), *head.parameters()], lr=1e-3)
    generator, log = torch.Generator().manual_seed(1), []
    for step in range(1, args.steps + 1):
        if step == args.break_at:
            operator.set_norm(3.0)
        if step == args.repair_at:
            operator.set_norm(0.5)
        x = torch.randn(64, args.dim, generator=generator)
        result = layer.solve(x)
        loss = nn.functional.mse_loss(head(result.value).squeeze(1), torch.sin(teacher(x)).squeeze(1).detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for check in result.checks:  # made by this step's backward pass
            log.append({"step": step, **check.to_dict(), "loss": float(loss)})
            print(json.dumps(log[-1]), flush=True)
    return log


if __name__ == "__main__":
    main()
