"""A trained implicit model out of Python: ``torch.export`` programs and ONNX files at a fixed depth.

An exported program is a static graph: it cannot stop a solve when a tolerance is met (the stop is a
data-dependent decision, and ONNX has no loop that ``torch.export`` can lower to it). Exporting therefore
unrolls every :class:`~jfb.ImplicitLayer` of the model to a fixed number of iterations: ``depth``, or the
layer's own evaluation depth where it already solves at one (``tol=None``, as the shipped MNIST model does).
A layer asked to export with a tolerance is refused in one line. The batch dimension stays dynamic.
"""

from __future__ import annotations

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
def fixed_depth(model: nn.Module, depth: int | None = None, solver: str | None = None) -> Iterator[nn.Module]:
    """Every implicit layer of ``model`` solves with ``depth`` iterations and no tolerance inside the block
    (``depth=None``: each layer's own evaluation depth, which must be fixed already), with ``solver`` if given."""
    layers = implicit_layers(model)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise JfbError(f"depth must be an integer >= 1 (iterations of every implicit layer), got {depth!r}")
    with ExitStack() as stack:
        for name, layer in layers:
            if depth is None:
                options = layer.eval_options or layer.options
                if options.tol is not None:
                    raise JfbError(
                        f"layer {name} solves to tol={options.tol:g} in eval mode; an exported program runs a fixed "
                        "number of iterations: give depth=K (jfb export --depth K)"
                    )
                continue
            stack.enter_context(layer.solving(tol=None, max_iter=depth))
        if solver is not None:
            for _, layer in layers:
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


def _dynamic(example: tuple[Tensor, ...]) -> tuple[dict[int, Any], ...]:
    """Every dimension may stay dynamic (``Dim.AUTO``): those the model fixes are specialised by the trace."""
    return tuple({dim: torch.export.Dim.AUTO for dim in range(t.dim())} for t in example)


def export_program(
    model: nn.Module, example: tuple[Tensor, ...], depth: int | None = None, solver: str | None = None
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode, without grad, its implicit layers at a fixed ``depth``.

    Dimensions stay dynamic where the model allows (the batch; a sequence or string length): give an example with
    at least 2 along each (a size of 1 is specialised). The model is left in eval mode."""
    model.eval()
    with torch.no_grad(), fixed_depth(model, depth, solver), _quiet("torch._export"):
        return torch.export.export(model, example, dynamic_shapes=_dynamic(example))


def export_onnx(
    model: nn.Module, example: tuple[Tensor, ...], path: str | Path, depth: int | None = None, solver: str | None = None
) -> Path:
    """An ONNX file of ``model`` traced as :func:`export_program` does; it runs in ONNX Runtime
    (``pip install 'torch-jfb[deploy]'``). A solver ONNX cannot hold is refused before the trace (Anderson: give
    ``solver="picard"``). The model is left in eval mode."""
    model.eval()
    path = Path(path)
    with torch.no_grad(), fixed_depth(model, depth, solver), warnings.catch_warnings(), _quiet("torch.onnx"):
        _refuse_onnx_solvers(model)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch's own deprecation, inside the exporter
        program = torch.onnx.export(model, example, dynamo=True, verbose=False, dynamic_shapes=_dynamic(example))
    program.save(str(path))
    return path
