"""Implicit and explicit classifiers N(d) = S(u*), u* = T(u*, Q(d))."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import JfbError
from ..layer import ImplicitLayer


class ImplicitClassifier(nn.Module):
    """Embedding ``Q`` once per batch, fixed point of ``R`` by an :class:`ImplicitLayer`, head ``S``.

    With fixed-point correction on the layer, ``correction_logits`` holds ``S`` of each correction state
    of the last training call (empty otherwise).
    """

    def __init__(
        self,
        embedding: nn.Module,
        operator: nn.Module,
        head: nn.Module,
        input_shape: tuple[int, ...] | None = None,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        self.embedding, self.head, self.input_shape = embedding, head, input_shape
        self.implicit = ImplicitLayer(operator, **layer_options)
        self.correction_logits: list[Tensor] = []

    @property
    def operator(self) -> nn.Module:
        return self.implicit.operator

    def forward(self, d: Tensor, u0: Tensor | None = None) -> Tensor:
        check_input_shape(d, self.input_shape)
        u_star = self.implicit(self.embedding(d), u0)
        self.correction_logits = [self.head(u) for u in self.implicit.correction_states]
        return self.head(u_star)


class ExplicitClassifier(nn.Module):
    """The explicit twin: the same layers, R applied ``depth`` times with ordinary backprop."""

    def __init__(
        self,
        embedding: nn.Module,
        operator: nn.Module,
        head: nn.Module,
        depth: int,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise JfbError(f"explicit depth must be >= 1, got {depth!r}")
        self.embedding, self.operator, self.head, self.depth = embedding, operator, head, depth
        self.input_shape = input_shape

    def forward(self, d: Tensor) -> Tensor:
        check_input_shape(d, self.input_shape)
        q = self.embedding(d)
        u = torch.zeros_like(q)
        for _ in range(self.depth):
            u = self.operator(u, q)
        return self.head(u)


def check_input_shape(d: Tensor, expected: tuple[int, ...] | None) -> None:
    """A clear ValueError instead of a convolution's shape error deep inside the embedding."""
    if not isinstance(d, Tensor):
        raise JfbError(f"expected an image tensor, got {type(d).__name__}")
    if expected is not None and (
        d.dim() != len(expected) + 1 or tuple(d.shape[1:]) != tuple(expected) or d.shape[0] == 0
    ):
        raise JfbError(
            f"expected input of shape (N, {', '.join(map(str, expected))}) with N >= 1, got {tuple(d.shape)}"
        )
    if not d.is_floating_point():
        raise JfbError(f"expected a floating-point input (normalised images), got {d.dtype}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
