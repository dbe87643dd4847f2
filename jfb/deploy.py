"""A trained implicit model out of Python: ``torch.export`` programs and ONNX files.

Every :class:`~jfb.ImplicitLayer` of the model is exported as it solves in eval mode, or at a fixed ``depth``:
a fixed depth is unrolled into the program; a tolerance becomes a loop inside it (``torch.while_loop``, an
ONNX ``Loop``: Picard iterations until the batch's largest residual meets it, see
:mod:`jfb.solvers.traced`), so the program stops where the eager model does. The batch dimension (and others
the model allows) stays dynamic.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import JfbError
from .layer import ImplicitLayer


def implicit_layers(model: nn.Module) -> list[tuple[str, ImplicitLayer]]:
    """The model's implicit layers with their names."""
    return [(name or "(the model)", m) for name, m in model.named_modules() if isinstance(m, ImplicitLayer)]


@contextmanager
def exported_solves(model: nn.Module, depth: int | None = None, solver: str | None = None) -> Iterator[nn.Module]:
    """Every implicit layer of ``model`` solves inside the block as it will in the exported program: ``depth``
    iterations and no tolerance when ``depth`` is given, else as in eval mode (a fixed depth, or Picard to the
    tolerance: a loop inside the program); with ``solver`` when given."""
    layers = implicit_layers(model)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise JfbError(f"depth must be an integer >= 1 (iterations of every implicit layer), got {depth!r}")
    with ExitStack() as stack:
        for _, layer in layers:
            if depth is not None:
                stack.enter_context(layer.solving(tol=None, max_iter=depth))
            if solver is not None:
                stack.enter_context(layer.solving(solver=solver))
        yield model


def _refuse_onnx_solvers(model: nn.Module) -> None:
    for name, layer in implicit_layers(model):
        solver = layer.active_options().method
        if solver.onnx_refusal:
            raise JfbError(
                f"layer {name} solves with {solver.name!r}, which does not export to ONNX: {solver.onnx_refusal}; "
                "export with another solver (solver='picard', jfb export --solver picard)"
            )


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The exporter's notes on what this package never uses (torchvision's operators) kept off the console."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _dynamic(model: nn.Module, example: tuple[Tensor, ...]) -> tuple[Any, ...]:
    """Every dimension may stay dynamic (``Dim.AUTO``): those the model fixes are specialised by the trace. (A
    ``forward(*inputs)`` takes the specification of its inputs as one tuple.)"""
    shapes = tuple({dim: torch.export.Dim.AUTO for dim in range(t.dim())} for t in example)
    parameters = inspect.signature(model.forward).parameters.values()
    return (shapes,) if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters) else shapes


def export_program(
    model: nn.Module, example: tuple[Tensor, ...], depth: int | None = None, solver: str | None = None
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode, without grad, its implicit layers as :func:`exported_solves`
    sets them.

    Dimensions stay dynamic where the model allows (the batch; a sequence or string length): give an example with
    at least 2 along each (a size of 1 is specialised). The model is left in eval mode."""
    model.eval()
    with torch.no_grad(), exported_solves(model, depth, solver), _quiet("torch._export"):
        return torch.export.export(model, example, dynamic_shapes=_dynamic(model, example))


def export_onnx(
    model: nn.Module, example: tuple[Tensor, ...], path: str | Path, depth: int | None = None, solver: str | None = None
) -> Path:
    """An ONNX file of ``model`` traced as :func:`export_program` does; it runs in ONNX Runtime
    (``pip install 'torch-jfb[deploy]'``). A solver ONNX cannot hold is refused before the trace (Anderson: give
    ``solver="picard"``). The model is left in eval mode."""
    model.eval()
    path = Path(path)
    with torch.no_grad(), exported_solves(model, depth, solver), warnings.catch_warnings(), _quiet("torch.onnx"):
        _refuse_onnx_solvers(model)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch's own deprecation, inside the exporter
        program = torch.onnx.export(model, example, dynamo=True, verbose=False, dynamic_shapes=_dynamic(model, example))
    program.save(str(path))
    return path
