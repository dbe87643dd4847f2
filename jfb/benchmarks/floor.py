"""The floor of ``jfb bench step``: a JFB training step written by hand in plain PyTorch.

No code of this library: ``iterations`` applications of R under no_grad, one application with
grad, the head, the loss, backward and the optimiser step. Nothing a JFB step can skip, so the
least time a step with these layers can take; ``jfb bench step`` reports ours / this. With ``tol``,
the hand-written loop of a tolerance-based solve: after each application, every sample's residual
``||R(u) - u||`` and a stop when the largest meets ``tol`` (one host synchronisation), the least
work a solve that stops at a tolerance does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def floor_step(
    embedding: nn.Module,
    operator: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    iterations: int,
    tol: float | None = None,
) -> Tensor:
    q = embedding(images)
    with torch.no_grad():
        u = torch.zeros_like(q)
        for _ in range(iterations):
            u, previous = operator(u, q), u
            if tol is not None and bool(torch.linalg.vector_norm((u - previous).flatten(1), dim=1).max() <= tol):
                break
    loss = nn.functional.cross_entropy(head(operator(u, q)), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
