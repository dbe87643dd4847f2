"""Evaluation: :func:`evaluate` measures a split in eval mode; ``jfb eval`` (:func:`evaluate_checkpoint`) the test
accuracy of a checkpoint, optionally with other evaluation solve settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data import Split, batches
from ..precision import CHOICES, autocast, resolve
from ..settings import setting
from .config import DEVICES, TrainConfig
from .distributed import Processes
from .records import EpochStats, PassSummary
from .setup import Log, load_data, memory_format, restore_model


@dataclass(frozen=True)
class EvalSettings:
    checkpoint: str = setting(
        help="a checkpoint written by jfb train or jfb import-reference, "
        "or a shipped one by name: mnist-default, prefix-sums, chains, lm",
        positional=True,
    )
    tol: float | None = setting(None, "evaluation tolerance (default: the checkpoint's evaluation solve)")
    max_iter: int | None = setting(None, "evaluation depth, or its cap with --tol (default: the checkpoint's)")
    solver: str | None = setting(None, "forward solver (default: the checkpoint's)")
    batch_size: int | None = setting(None, "evaluation batch size (default: the checkpoint's)")
    limit_test: int | None = setting(None, "evaluate on the first N test images only")
    data_dir: str | None = setting(None, "where the datasets are (default: the packaged/cached location)")
    device: str | None = setting(None, "default: the device the checkpoint was trained on", choices=DEVICES)
    precision: str | None = setting(
        None,
        "autocast precision; auto: bf16 where the device runs it natively (default: the checkpoint's)",
        choices=CHOICES,
    )
    set: str = setting(
        "",
        "a workload checkpoint's evaluation settings to change, KEY=VALUE separated by spaces "
        "(e.g. 'test_bits=32,512 test_depths=30,1920'): test sizes and iterations, for test-time compute curves",
    )
    out: str | None = setting(None, "a workload checkpoint: write the evaluation's per-case rows (eval.csv) here")

    def overrides(self) -> dict[str, Any]:
        """The configuration fields these settings change (``tol`` sets the evaluation tolerance)."""
        names = ("batch_size", "limit_test", "data_dir", "device")
        values = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        solve = {name: getattr(self, name) for name in ("solver", "tol", "max_iter") if getattr(self, name) is not None}
        if solve:
            values["eval_solve"] = solve
        if self.precision is not None:
            values["eval_precision"] = self.precision
        return values


def evaluate_checkpoint(settings: EvalSettings, progress: bool = True, log: Log = print) -> dict[str, Any]:
    model, config = restore_model(Path(settings.checkpoint), settings.overrides())
    evaluation = config.evaluation_options()
    data = load_data(config)
    test = data.test
    result = evaluate(model, test, config, data.normalize, progress=progress, desc="test")
    summary = {
        "checkpoint": settings.checkpoint,
        "samples": len(test),
        "test_acc": result.acc,
        "test_loss": result.loss,
        "forward_iters_mean": result.forward_iters_mean,
        "forward_iters_max": result.forward_iters_max,
        "tol": evaluation.tol,  # None: a fixed depth of max_iter
        "max_iter": evaluation.max_iter,
        "solver": evaluation.solver_name,
        "precision": resolve(config.evaluation_precision, config.device),
    }
    log(
        f"test accuracy {result.acc:.2f}% (loss {result.loss:.4f}) on {len(test)} images, "
        f"{result.forward_iters_mean:.1f} forward iterations on average (max {result.forward_iters_max}), "
        f"{summary['precision']}"
    )
    return summary


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    config: TrainConfig,
    normalize,
    progress: bool = False,
    desc: str = "eval",
    processes: Processes | None = None,
) -> PassSummary:
    """Accuracy and loss in eval mode (running BatchNorm statistics, no dropout), never augmented.

    In a distributed run each process evaluates every ``world_size``-th sample and the sums are combined.
    """
    processes = processes or Processes()
    model.eval()  # the layer solves with the evaluation options
    stats = EpochStats()
    shard = split.shard(processes.rank, processes.world_size)
    steps = math.ceil(len(shard) / config.batch_size)
    data = batches(shard, config.batch_size, normalize, device=config.device)
    for inputs, labels in tqdm(data, total=steps, desc=desc, disable=not progress, leave=False):
        with autocast(config.device, config.evaluation_precision):
            prediction = model(inputs.contiguous(memory_format=memory_format(config)), details=True)
        logits = prediction.logits.float()
        stats.add(nn.functional.cross_entropy(logits, labels), logits, labels, prediction.equilibrium)
    return stats.reduced(processes).summary()
