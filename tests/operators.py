"""Small test operators with a known contraction factor."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import jfb

#: a forward solve tight enough that every backward mode sees the exact fixed point (float64)
TIGHT = dict(solver="anderson", tol=1e-13, max_iter=300)


class TanhOperator(nn.Module):
    """``T(u, x) = tanh(W u + U x + b)`` with ``||W||_2 = contraction``: a contraction in u."""

    def __init__(self, dim: int, contraction: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(dim, dim, generator=g, dtype=dtype)
        W = W / torch.linalg.matrix_norm(W, ord=2) * contraction
        self.W = nn.Parameter(W)
        self.U = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=dtype) / dim**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(dim, generator=g, dtype=dtype))

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(u @ self.W.T + x @ self.U.T + self.b)


class SlowLinearOperator(nn.Module):
    """``T(u, x) = W u + x`` with W symmetric, eigenvalues spread over [-c, c]: Picard needs ~log(tol)/log(c) steps."""

    def __init__(self, dim: int, contraction: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
        spectrum = torch.linspace(-contraction, contraction, dim, dtype=dtype)
        self.W = nn.Parameter(Q @ torch.diag(spectrum) @ Q.T)

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        return u @ self.W.T + x


class ScalarLinearOperator(nn.Module):
    """``T(u, x) = a * u + c`` with ``x = [a, c]`` per sample: fixed point ``c / (1 - a)``.

    The contraction factor ``a`` travels with the input, so one batch can mix easy and hard
    samples (and a solver that evaluates only some rows still sees the right factors).
    """

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        return x[:, :1] * u + x[:, 1:]


def dense_implicit_gradient(op: nn.Module, u_star: Tensor, x: Tensor, grad_out: Tensor) -> list[Tensor]:
    """Exact gradient of ``<grad_out, u*>`` w.r.t. the operator's parameters, by dense solves of (I - J)."""
    ws = []
    for i in range(u_star.shape[0]):
        J = torch.autograd.functional.jacobian(lambda u, i=i: op(u[None], x[i : i + 1])[0], u_star[i])
        eye = torch.eye(J.shape[0], dtype=J.dtype)
        ws.append(torch.linalg.solve((eye - J).T, grad_out[i]))
    w = torch.stack(ws)
    out = op(u_star, x)
    return list(torch.autograd.grad(out, list(op.parameters()), w))


def flat(grads) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def tanh_problem(dim: int = 12, contraction: float = 0.7, seed: int = 0, batch: int = 4):
    """``(op, x, head)``: a float64 TanhOperator, an input batch and the weights of the loss ``sum(head * u*)``."""
    torch.manual_seed(seed)
    op = TanhOperator(dim, contraction, seed=seed)
    x = torch.randn(batch, dim, dtype=torch.float64)
    head = torch.randn(batch, dim, dtype=torch.float64)
    return op, x, head


def layer_gradient(op: nn.Module, x: Tensor, head: Tensor, backward, **options):
    """``(parameter gradient, layer, u*)`` of ``sum(head * layer(x))`` with a ``TIGHT`` solve (``options`` override)."""
    layer = jfb.ImplicitLayer(op, backward=backward, **{**TIGHT, **options})
    op.zero_grad()
    u = layer(x)
    (head * u).sum().backward()
    return flat(p.grad for p in op.parameters()), layer, u.detach()
