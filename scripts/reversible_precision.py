"""How exact is backward="reversible" in float32? Its gradient and its reconstruction error against a float64
autograd run of the same coupled iteration, for several relaxations and depths.

A tanh operator of 32 features whose weight has spectral norm 0.8, batch 8, loss sum(T(z_N)).
Usage: python scripts/reversible_precision.py [OUT.csv]
"""

from __future__ import annotations

import csv
import sys

import torch

import jfb


def coupled_reference(linear: torch.nn.Linear, x: torch.Tensor, depth: int, beta: float) -> torch.Tensor:
    """d sum(T(z_N)) / dW in float64, by autograd through the coupled iteration."""
    twin = torch.nn.Linear(32, 32).double()
    twin.load_state_dict({k: v.double() for k, v in linear.state_dict().items()})
    op = lambda u, x: torch.tanh(twin(u) + x)  # noqa: E731
    x = x.double()
    y = z = torch.zeros_like(x)
    for _ in range(depth // 2):
        y = (1 - beta) * y + beta * op(z, x)
        z = (1 - beta) * z + beta * op(y, x)
    return torch.autograd.grad(op(z, x).sum(), [twin.weight])[0]


def main(out: str | None) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 32)
    with torch.no_grad():
        linear.weight.mul_(0.8 / torch.linalg.matrix_norm(linear.weight, 2))
    x = torch.randn(8, 32)
    rows = []
    for beta in (0.5, 0.8, 1.2):
        for depth in (10, 20, 40, 80):
            eq = jfb.fixed_point(
                lambda u, x: torch.tanh(linear(u) + x),
                x,
                solver=f"reversible:beta={beta}",
                tol=None,
                max_iter=depth,
                backward="reversible",
                on_failure="ignore",
            )
            (grad,) = torch.autograd.grad(eq.value.sum(), [linear.weight])
            reference = coupled_reference(linear, x, depth, beta)
            rows.append(
                {
                    "beta": beta,
                    "t_evals": depth,
                    "gradient_rel_error": float((grad.double() - reference).norm() / reference.norm()),
                    "reconstruction_error": eq.stats.backward.reconstruction_error,
                    "forward_residual": float(eq.stats.abs_residual.max()),
                }
            )
            print(", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items()))
    if out:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
