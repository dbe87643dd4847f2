"""A trained workload model after its training: its checkpoint recognised, rebuilt with its weights, evaluated
again, and wrapped as a function of its inputs for export."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import JfbError
from ..files import prepare_run_dir
from ..reports import key_value_table, write_report
from ..train.checkpoint import load_weights
from .base import Workload
from .engines import EngineFactory


def is_workload_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return "workload" in checkpoint


def restore_workload(
    path: Path, checkpoint: dict[str, Any], workloads: dict[str, Workload], engine: EngineFactory | None = None
) -> tuple[Workload, nn.Module, Any]:
    """The workload of ``checkpoint`` (loaded from ``path``), its model rebuilt on the CPU with the saved weights
    (``engine``: another way to solve, e.g. without a tolerance for export), and its configuration."""
    name = checkpoint["workload"]
    if name not in workloads:
        raise JfbError(f"{path}: a checkpoint of workload {name!r}, which this version does not know")
    workload = workloads[name]
    fields = {f.name: f for f in dataclasses.fields(workload.config)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in checkpoint["config"].items() if k in fields}
    config = dataclasses.replace(workload.config(**values), device="cpu", parallel="none")
    model = workload.model(config, engine)
    load_weights(model, checkpoint["model"], path)
    return workload, model, config


def evaluate_saved(
    path: Path,
    checkpoint: dict[str, Any],
    workloads: dict[str, Workload],
    changes: dict[str, Any] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Rebuild the workload model of ``checkpoint`` (loaded from ``path``), load its weights and evaluate it
    again, with ``changes`` to its configuration (test sizes, iterations): the metrics now and when saved. With
    ``out``, the per-case rows are written there (``eval.csv``, ``eval.md``, and the workload's plot)."""
    workload, model, config = restore_workload(path, checkpoint, workloads)
    if changes:
        config = dataclasses.replace(config, **changes)
    metrics, rows = workload.evaluate(model, config)
    result = {"workload": workload.name, "checkpoint": str(path), "metrics": metrics}
    result |= {"saved_metrics": checkpoint["metrics"], "changes": dict(changes or {})}
    if out is not None:
        plot = None if workload.curves is None else (lambda plt, file: workload.curves.plot(plt, file, rows))
        write_report(prepare_run_dir(out), "eval", rows, key_value_table(metrics), plot=plot)
        result["out"] = str(out)
    return result


class Predictor(nn.Module):
    """A workload model as a function of its input tensors: the logits at ``depth`` iterations (for export)."""

    def __init__(self, model: nn.Module, depth: int) -> None:
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs, self.depth)[0]


def model_inputs(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """A workload batch's inputs (all but its targets, the last), a sparse one made dense (``torch.export`` traces
    dense tensors only: the exported program takes chains' adjacency matrix dense)."""
    return tuple(t.to_dense() if t.is_sparse else t for t in batch[:-1])
