"""Implicit and explicit classifiers N(d) = S(u*), u* = T(u*, Q(d))."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..binding import INITIAL_STATES
from ..equilibrium import Equilibrium
from ..errors import JfbError, unknown_name
from ..layer import ImplicitLayer
from ..solvers import SolveOptions


@dataclass
class Prediction:
    """What one call of a classifier produced (``model(d, details=True)``).

    ``equilibrium``: the implicit layer's result of this call (None for an explicit network);
    ``correction_logits``: the head ``S`` on each fixed-point correction state (empty without correction).
    """

    logits: Tensor
    equilibrium: Equilibrium | None = None
    correction_logits: list[Tensor] = field(default_factory=list)
    #: with a learned initial state, a call with grad: ``mean((g(q) - u*)^2)``, the predictor's loss
    initial_state_loss: Tensor | None = None


class ImplicitClassifier(nn.Module):
    """Embedding ``Q`` once per batch, fixed point of ``R`` by an :class:`ImplicitLayer`, head ``S``.

    ``model(d)`` returns the logits; ``model(d, details=True)`` a :class:`Prediction` with this call's
    equilibrium (statistics, fixed point, Jacobian penalty) and the correction states' logits.

    ``init``: where each solve starts when the call gives no ``u0``: ``"zeros"``, ``"random"``, ``"mixed"``
    (see :func:`jfb.binding.initial_state`), or a module ``g`` (a **learned initial state**, Skip-DEQ): the
    solve starts from ``g(Q(d))`` and the prediction carries ``initial_state_loss`` to train ``g`` towards u*.
    """

    def __init__(
        self,
        embedding: nn.Module,
        operator: nn.Module,
        head: nn.Module,
        input_shape: tuple[int, ...] | None = None,
        init: str | nn.Module = "zeros",
        **layer_options: Any,
    ) -> None:
        super().__init__()
        self.embedding, self.head, self.input_shape = embedding, head, input_shape
        self.implicit = ImplicitLayer(operator, **layer_options)
        if isinstance(init, nn.Module):
            self.initial, self.init = init, None
        elif init in INITIAL_STATES:
            self.initial, self.init = None, init
        else:
            raise unknown_name("init", init, (*INITIAL_STATES, "a module g(q)"))

    @property
    def operator(self) -> nn.Module:
        return self.implicit.operator

    def forward(
        self,
        d: Tensor,
        u0: Tensor | None = None,
        *,
        solve: SolveOptions | Mapping[str, Any] | None = None,
        details: bool = False,
    ) -> Tensor | Prediction:
        """Logits of ``S(u*)``, ``u* = R(u*, Q(d))`` from ``u0`` (default: ``init``); ``solve``: options for this
        call only."""
        check_input_shape(d, self.input_shape)
        q = self.embedding(d)
        guess = self.initial(q) if self.initial is not None else None
        start = u0 if u0 is not None else guess.detach() if guess is not None else self.init
        equilibrium = self.implicit.solve(q, start, solve)
        logits = self.head(equilibrium.value)
        if not details:
            return logits
        corrections = [self.head(u) for u in equilibrium.correction_states or []]
        miss = None
        if guess is not None and torch.is_grad_enabled():
            miss = (guess - equilibrium.fixed_point).square().mean()
        return Prediction(logits, equilibrium, corrections, miss)


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

    def forward(self, d: Tensor, *, details: bool = False) -> Tensor | Prediction:
        check_input_shape(d, self.input_shape)
        q = self.embedding(d)
        u = torch.zeros_like(q)
        for _ in range(self.depth):
            u = self.operator(u, q)
        logits = self.head(u)
        return Prediction(logits) if details else logits


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
