"""How a workload's model finds its equilibrium: one small interface, so the same model and weights run
under torch-jfb's :class:`~jfb.ImplicitLayer` or under another library (the zoo benchmark plugs torchdeq in).

An engine is an ``nn.Module`` built around the operator ``T(u, x)``; called as ``engine(x, u0, depth)`` it
returns a :class:`Solved`: the state (with grad in training, the backward mode's attachment) and the mean
number of T evaluations the forward solve made. ``depth`` is the number of forward iterations; in eval
mode a tolerance may stop the solve earlier.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..backward import BACKWARD_MODES, get_backward
from ..errors import JfbError, unknown_name
from ..layer import ImplicitLayer

Operator = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Solved:
    """One solve: the state and the mean number of forward iterations over the batch."""

    value: Any
    iterations: float


#: the named engines of every workload's ``--engine``: torch-jfb's backward modes at a fixed training depth; IFT's
#: linear solve runs at most 40 iterations, as torchdeq's does by default (the side-by-side runs compare alike).
#: Any other backward mode by name is an engine too (``ift:anderson:tol=1e-3``, ``shine:refine=5``)
JFB_ENGINES = {"jfb": "jfb", "ift": "ift:max_iter=40", "unroll": "unroll"}


class JfbEngine(nn.Module):
    """torch-jfb: Picard (or the solver the backward mode needs: Broyden for ``shine``) at a fixed depth in
    training; in eval, stopped at ``eval_tol`` (relative).

    A backward linear solve that misses its tolerance does not warn at each step: the training loop counts
    the steps where one did (``FitResult.backward_misses``) and warns once at the end."""

    def __init__(self, operator: Operator, backward: str = "jfb", eval_tol: float | None = 1e-4) -> None:
        super().__init__()
        mode = get_backward(backward)
        solver = mode.forward_solver or "picard"
        self.layer = ImplicitLayer(operator, mode, solver=solver, tol=None, max_iter=1, on_failure="ignore")
        self.eval_tol = eval_tol

    def forward(self, x: Any, u0: Any, depth: int) -> Solved:
        tol = None if self.training else self.eval_tol
        result = self.layer.solve(x, u0, solve=dict(max_iter=depth, tol=tol, stop_mode="rel"))
        if tol is None:  # every sample made depth iterations (and a traced program reads no count)
            return Solved(result.value, float(depth))
        return Solved(result.value, float(result.stats.iterations.float().mean()))


EngineFactory = Callable[[Operator], nn.Module]


def without_tolerance(model: nn.Module) -> nn.Module:
    """``model`` with every torch-jfb engine solving to its full depth in eval mode too (for export)."""
    for module in model.modules():
        if isinstance(module, JfbEngine):
            module.eval_tol = None
    return model


class StackEngine(nn.Module):
    """The explicit baseline of a fixed depth without tied weights: ``blocks`` copies of the operator (the first
    the model's own, the others freshly initialised), each applied once; ``depth`` does not change it."""

    def __init__(self, operator: nn.Module, blocks: int) -> None:
        super().__init__()
        copies = [copy.deepcopy(operator) for _ in range(blocks - 1)]
        for module in (m for c in copies for m in c.modules()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.blocks = nn.ModuleList([operator, *copies])

    def forward(self, x: Any, u0: Any, depth: int) -> Solved:
        u = u0
        for block in self.blocks:
            u = block(u, x)
        return Solved(u, float(len(self.blocks)))


def jfb_engine(name: str, eval_tol: float | None = 1e-4, other_names: Sequence[str] = ()) -> EngineFactory:
    """The factory of a named torch-jfb engine (``jfb``, ``ift`` or ``unroll``), ``stack:K``, or any backward mode
    by name (``ift:gmres:tol=1e-3``); ``other_names``: engines a caller accepts besides, named if ``name`` is none."""
    if name.startswith("stack:"):
        blocks = name.removeprefix("stack:")
        if not blocks.isdigit() or int(blocks) < 1:
            raise JfbError(f"engine {name!r}: stack:K takes a number of blocks K >= 1")
        return lambda operator: StackEngine(operator, int(blocks))
    backward = JFB_ENGINES.get(name, name)
    try:
        get_backward(backward)
    except JfbError as error:
        if backward.split(":")[0] in BACKWARD_MODES.names():  # a known mode with a bad option: say which
            raise JfbError(f"engine {name!r}: {error}") from None
        raise unknown_name("engine", name, [*JFB_ENGINES, *other_names, "stack:K", "a backward mode by name"]) from None
    return lambda operator: JfbEngine(operator, backward, eval_tol)


def zeros_like_state(x: Tensor, width: int) -> Tensor:
    """A zero state with ``x``'s batch and trailing (length) shape and ``width`` channels at dim 1."""
    return torch.zeros(x.shape[0], width, *x.shape[2:], dtype=x.dtype, device=x.device)
