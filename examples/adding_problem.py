"""A sequence DEQ on the adding problem: JFB vs phantom gradients vs IFT when the task needs memory.

Each input is L steps of (value in [0, 1], marker in {0, 1}) with exactly two markers; the target is the sum
of the two marked values (predicting the mean, 1.0, gives a mean squared error of 1/6 = 0.167). The state
holds one hidden vector per step, u = (u_1 .. u_L), and

    T(u, x)_t = tanh(A u_{t-1} + B x_t + b),   u_0 = 0,

so the fixed point is a recurrent network's hidden states and its output head reads u_L. J = dT/du is
strictly block-lower-triangular (nilpotent): Picard reaches u* exactly in L iterations, and the implicit
gradient is backpropagation through time. JFB backpropagates through one application of T only: no
gradient reaches the weights through the earlier steps, so it can only exploit what the recurrence
happens to carry forward; phantom:K follows K steps back, IFT all of them.

    python examples/adding_problem.py                       # all three modes, the README's numbers
    python examples/adding_problem.py --backward ift       # one mode
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import jfb


def adding_batch(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(n, length, generator=generator)
    first = torch.randint(0, length // 2, (n,), generator=generator)
    second = torch.randint(length // 2, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    markers[torch.arange(n), first] = 1.0
    markers[torch.arange(n), second] = 1.0
    return torch.stack([values, markers], dim=2), (values * markers).sum(1)


class RecurrentOperator(nn.Module):
    """T(u, x)_t = tanh(A u_{t-1} + B x_t + b) on states of shape (batch, length, hidden)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.recurrent.weight)
        self.input = nn.Linear(2, hidden)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        previous = nn.functional.pad(u, (0, 0, 1, 0))[:, :-1]  # u_{t-1}, with u_0 = 0
        return torch.tanh(self.recurrent(previous) + self.input(x))


class SequenceDEQ(nn.Module):
    def __init__(self, length: int, hidden: int, backward: str) -> None:
        super().__init__()
        self.implicit = jfb.ImplicitLayer(
            RecurrentOperator(hidden),
            backward,
            latent_shape=(length, hidden),
            solver="picard",
            tol=1e-6,
            max_iter=length + 1,
            stop_mode="abs",
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.implicit(x)[:, -1]).squeeze(1)


def train_mode(backward: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = SequenceDEQ(args.length, args.hidden, backward)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed)
    test_x, test_y = adding_batch(2000, args.length, torch.Generator().manual_seed(12345))
    started = time.perf_counter()
    for _ in range(args.steps):
        x, y = adding_batch(args.batch_size, args.length, data)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        model.eval()
        test_mse = float(nn.functional.mse_loss(model(test_x), test_y))
    return {"backward": backward, "test_mse": test_mse, "train_s": seconds, "steps": args.steps}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backward", default="jfb,phantom:5,ift", help="modes, comma-separated")
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = []
    for backward in args.backward.split(","):
        results.append(train_mode(backward, args))
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
