"""Implicit and explicit classifiers N(d) = S(u*), u* = T(u*, Q(d))."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..layer import ImplicitLayer


class ImplicitClassifier(nn.Module):
    """Embedding ``Q`` once per batch, fixed point of ``R`` by an :class:`ImplicitLayer`, head ``S``."""

    def __init__(self, embedding: nn.Module, operator: nn.Module, head: nn.Module, **layer_options: Any) -> None:
        super().__init__()
        self.embedding, self.head = embedding, head
        self.implicit = ImplicitLayer(operator, **layer_options)

    @property
    def operator(self) -> nn.Module:
        return self.implicit.operator

    def forward(self, d: Tensor, u0: Optional[Tensor] = None) -> Tensor:
        return self.head(self.implicit(self.embedding(d), u0))


class ExplicitClassifier(nn.Module):
    """The explicit twin: the same layers, R applied ``depth`` times with ordinary backprop."""

    def __init__(self, embedding: nn.Module, operator: nn.Module, head: nn.Module, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"explicit depth must be >= 1, got {depth!r}")
        self.embedding, self.operator, self.head, self.depth = embedding, operator, head, depth

    def forward(self, d: Tensor) -> Tensor:
        q = self.embedding(d)
        u = torch.zeros_like(q)
        for _ in range(self.depth):
            u = self.operator(u, q)
        return self.head(u)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
