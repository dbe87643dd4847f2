"""How exact is backward="reversible" in float32? Its gradient against a float64 autograd run of the same coupled
iteration, the reconstruction error, and the gradient error the backward pass estimates, for several problems,
relaxations and depths.

Problems: "tanh32", a tanh operator of 32 features whose weight has spectral norm 0.8, batch 8; "affine200",
jaxopt's fixed-point test problem u = M u + b with ||M||_2 = 0.9, 200 features, batch 1. Loss sum(T(z_N)).
Usage: python scripts/reversible_precision.py [OUT.csv]
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable

import torch

import jfb

Operator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def coupled_reference(op: Operator, weight: torch.Tensor, x: torch.Tensor, depth: int, beta: float) -> torch.Tensor:
    """d sum(T(z_N)) / d weight in float64, by autograd through the coupled iteration."""
    weight, x = weight.detach().double().requires_grad_(), x.double()
    y = z = torch.zeros_like(x)
    for _ in range(depth // 2):
        y = (1 - beta) * y + beta * op(z, x, weight)
        z = (1 - beta) * z + beta * op(y, x, weight)
    return torch.autograd.grad(op(z, x, weight).sum(), [weight])[0]


def problems() -> dict[str, tuple[Operator, torch.Tensor, torch.Tensor]]:
    """name -> (op(u, x, weight), float32 weight, float32 input)."""
    g = torch.Generator().manual_seed(0)
    tanh_weight = torch.randn(32, 32, generator=g)
    affine_weight = torch.randn(200, 200, generator=g, dtype=torch.float64)
    return {
        "tanh32": (
            lambda u, x, w: torch.tanh(u @ w.T + x),
            0.8 * tanh_weight / torch.linalg.matrix_norm(tanh_weight, 2),
            torch.randn(8, 32, generator=g),
        ),
        "affine200": (
            lambda u, x, w: u @ w.T + x,
            (0.9 * affine_weight / torch.linalg.matrix_norm(affine_weight, 2)).float(),
            torch.randn(1, 200, generator=g),
        ),
    }


def measure(name: str, op: Operator, weight: torch.Tensor, x: torch.Tensor, beta: float, depth: int) -> dict:
    weight = weight.clone().requires_grad_()
    eq = jfb.fixed_point(
        lambda u, x: op(u, x, weight),
        x,
        solver=f"reversible:beta={beta}",
        tol=None,
        max_iter=depth,
        backward="reversible",
        on_failure="ignore",
    )
    (grad,) = torch.autograd.grad(eq.value.sum(), [weight])
    reference = coupled_reference(op, weight, x, depth, beta)
    return {
        "problem": name,
        "beta": beta,
        "t_evals": depth,
        "gradient_rel_error": float((grad.double() - reference).norm() / reference.norm()),
        "gradient_error_estimate": eq.stats.backward.gradient_error_estimate,
        "status": str(eq.stats.backward.status),
        "reconstruction_error": eq.stats.backward.reconstruction_error,
        "forward_residual": float(eq.stats.abs_residual.max()),
    }


def main(out: str | None) -> None:
    rows = []
    for name, (op, weight, x) in problems().items():
        for beta in (0.5, 0.8, 1.2):
            for depth in (10, 20, 40, 80, 160):
                rows.append(measure(name, op, weight, x, beta, depth))
                print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()))
    if out:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
