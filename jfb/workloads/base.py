"""What a workload is: a settings dataclass and four functions, so one training loop, one command and one
side-by-side benchmark serve them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import prepare_run_dir
from ..reports import Report, key_value_table, write_report
from .engines import EngineFactory, jfb_engine
from .loop import FitResult, Loss, Training, fit


@dataclass(frozen=True)
class Workload:
    """``build(config, engine) -> model``; ``batches(config) -> (step -> batch)`` (seeded, fresh data each step);
    ``loss(config) -> (model, batch) -> (loss, iterations)``; ``evaluate(model, config) -> (metrics, rows)``:
    the headline metrics (``metric`` names the one a table leads with) and per-case rows for a table or plot."""

    name: str
    help: str
    config: type
    build: Callable[[Any, EngineFactory], nn.Module]
    batches: Callable[[Any], Callable[[int], object]]
    loss: Callable[[Any], Loss]
    evaluate: Callable[[nn.Module, Any], tuple[dict[str, Any], list[dict[str, Any]]]]
    metric: str
    higher_is_better: bool = True
    plot: Callable[[Any, Path, list[dict[str, Any]]], None] | None = None

    def model(self, config: Any, engine: EngineFactory | None = None) -> nn.Module:
        """The model of ``config`` built from ``config.seed`` (the same weights whatever the engine)."""
        torch.manual_seed(config.seed)
        return self.build(config, engine or jfb_engine(config.engine, config.eval_tol))

    def training(self, model: nn.Module, config: Any) -> Training:
        return Training(model, self.batches(config), self.loss(config), config.steps, config.lr)

    def train(
        self, config: Any, engine: EngineFactory | None = None, progress: bool = False
    ) -> tuple[nn.Module, FitResult, dict[str, Any], list[dict[str, Any]]]:
        """Build, train and evaluate: the model, the training's measurements, the metrics and the rows."""
        model = self.model(config, engine)
        result = fit(model, self.batches(config), self.loss(config), config.steps, config.lr, progress, f"{self.name}")
        metrics, rows = self.evaluate(model, config)
        return model, result, metrics, rows

    def run(self, config: Any, out: Path, progress: bool = True) -> Report:
        """``jfb train NAME``: train, evaluate, write the weights, the metrics, the rows (and a plot)."""
        out = prepare_run_dir(out)
        model, result, metrics, rows = self.train(config, progress=progress)
        torch.save(model.state_dict(), out / "model.pt")
        summary = {
            "workload": self.name,
            "engine": config.engine,
            "final_train_loss": round(result.final_loss, 4),
            "train_seconds": round(result.seconds, 1),
            "ms_per_step": round(result.ms_per_step, 2),
            "forward_iterations": round(result.forward_iterations, 1),
            "saved_mib": round(result.saved_mib, 2),
            **metrics,
        }
        plot = (lambda plt, path: self.plot(plt, path, rows)) if self.plot else None
        report = write_report(out, self.name, rows or [summary], key_value_table(summary), plot, summary)
        report.files.append(out / "model.pt")
        return report
