"""The step loop: :func:`run_steps` drives a :class:`~jfb.train.engine.Training` from its next step to its last,
with checkpoints, resume, preemption, metrics rows, evaluation and a progress bar (see :mod:`jfb.train.engine`).

``last.pt`` holds the whole weights and optimiser state (gathered from every process under DDP or FSDP2 with
``torch.distributed.checkpoint``'s full state dicts), the schedule, the step, the RNG and the measurements so
far, plus ``workload``, ``config`` and ``metrics``, so ``jfb eval RUN/last.pt`` evaluates it like a finished run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConvergenceWarning, JfbError
from .checkpoint import load_resumable, previous_path, save_checkpoint
from .distributed import Processes
from .engine import FitResult, Stepped, Training
from .loop import run_loop
from .metrics import MetricsLog, StepRecord
from .preemption import PreemptionWatch, Watch

#: a resumed run may change these (where it runs, how often it writes); any other difference is refused
CHANGEABLE_ON_RESUME = ("device", "parallel", "checkpoint_every", "log_every", "eval_every", "preempt_signals")
Evaluation = Callable[[], dict[str, Any]]


@dataclass
class StepRun:
    """Where and how a step loop runs: ``out`` (None: no files), the ``name`` and ``config`` saved with each
    checkpoint, the processes, ``evaluate() -> metrics`` (None: none), the progress bar, the log."""

    out: Path | None
    name: str
    config: dict[str, Any]
    processes: Processes
    evaluate: Evaluation | None = None
    progress: bool = False
    log: Callable[[str], None] = print


def run_steps(training: Training, run: StepRun, resume: bool = False) -> tuple[FitResult, dict[str, Any]]:
    """Train to the last step through the one loop; the result and the final evaluation's metrics (empty without
    ``evaluate``)."""
    metrics = MetricsLog(run.out, write=run.processes.is_main, x="step") if run.out is not None else None
    if resume:
        _resume(training, run, metrics)
    task = _StepTask(training, run, metrics)
    with PreemptionWatch(training.settings.preempt_signals) as watch:
        run_loop(task, watch, run.progress, run.log)
    final = run.evaluate() if run.evaluate is not None else {}
    if metrics is not None:
        metrics.append(StepRecord(training.steps, {**task.window.take(), **final}))
    _warn_misses(training, run.name)
    return training.result(), final


class _StepTask:
    """A workload's :class:`Training` as the loop's task: a metrics row every ``log_every`` steps (with the
    evaluation every ``eval_every``), ``last.pt`` every ``checkpoint_every``."""

    def __init__(self, training: Training, run: StepRun, metrics: MetricsLog | None) -> None:
        self.training, self.run, self.metrics = training, run, metrics
        self.name, self.steps = run.name, training.steps
        self.window = _Window(training)

    @property
    def next_step(self) -> int:
        return self.training.next_step

    def step(self, index: int, watch: Watch) -> Stepped:
        return self.training.step(index, watch)

    def after(self, done: int) -> None:
        settings, run = self.training.settings, self.run
        if done == self.steps:  # a finished run resumes to its end at once; the final row is run_steps's
            save_last(self.training, run)
            return
        evaluate = run.evaluate is not None and settings.eval_every and done % settings.eval_every == 0
        if self.metrics is not None and (evaluate or done % settings.log_every == 0):
            self.metrics.append(StepRecord(done, {**self.window.take(), **(run.evaluate() if evaluate else {})}))
        if settings.checkpoint_every and done % settings.checkpoint_every == 0:
            save_last(self.training, run)

    def save_last(self) -> str:
        save_last(self.training, self.run)
        out = self.run.out
        return f"{out / 'last.pt'} written; rerun the same command with --resume" if out else "nothing written (no out)"

    def where(self) -> str:
        return f"step {self.training.next_step} of {self.training.steps}"


class _Window:
    """The measurements since the last metrics row: mean loss and iterations, ms per step, learning rate."""

    def __init__(self, training: Training) -> None:
        self.training, self.start = training, len(training.measured.losses)

    def take(self) -> dict[str, Any]:
        measured, start = self.training.measured, self.start
        self.start = len(measured.losses)
        losses, seconds = measured.losses[start:], measured.seconds[start:]
        if not losses:
            return {}
        return {
            "train_loss": sum(losses) / len(losses),
            "forward_iterations": sum(measured.iterations[start:]) / len(losses),
            "ms_per_step": 1000 * sum(seconds) / len(seconds),
            "lr": self.training.schedule.get_last_lr()[0],
            "skipped": measured.skipped,
            "backward_misses": measured.backward_misses,
        }


def save_last(training: Training, run: StepRun) -> None:
    """``last.pt`` (the previous one kept as ``last.prev.pt``): every process gathers, process 0 writes. Without
    ``out`` (the same on every process) nothing is gathered."""
    if run.out is None:
        return
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(_unwrapped(training.model), training.optimizer, options=options)
    if not run.processes.is_main:
        return
    payload = {
        "workload": run.name,
        "config": run.config,
        "model": model_state,
        "metrics": {},
        "optimizer": optimizer_state,
        "training": training.state(),
    }
    save_checkpoint(run.out / "last.pt", payload, keep_previous=True)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module under DDP (its state dict keys without ``module.``); FSDP2 shards a module in place."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _one_name_each(model: nn.Module, state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` under one name per tensor: a module held twice (a workload's ``block`` is also its implicit
    layer's ``operator``) is in the state dict under both names, and FSDP2's broadcast fails on the second.
    JfbError when a tensor of the model is missing."""
    saved = model.state_dict().keys()  # non-persistent buffers are not saved
    names = [name for name, _ in (*model.named_parameters(), *model.named_buffers()) if name in saved]
    missing = [name for name in names if name not in state]
    if missing:
        raise JfbError(f"{path} does not hold {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return {name: state[name] for name in names}


def _resume(training: Training, run: StepRun, metrics: MetricsLog | None) -> None:
    """Continue from ``out/last.pt`` (or ``last.prev.pt``) when there is one; start fresh otherwise (so a
    torchrun restart of a run that wrote nothing yet starts it)."""
    last = run.out / "last.pt" if run.out is not None else None
    if last is None or not (last.is_file() or previous_path(last).is_file()):
        return
    checkpoint, path = load_resumable(last, run.log)
    if "training" not in checkpoint:
        raise JfbError(f"{path} is not a resumable checkpoint of a step-based run (no optimiser state or step)")
    changed = [
        f"{key}: {checkpoint['config'].get(key)!r} -> {value!r}"
        for key, value in run.config.items()
        if key not in CHANGEABLE_ON_RESUME and checkpoint["config"].get(key) != value
    ]
    if checkpoint.get("workload") != run.name or changed:
        what = "; ".join(changed) or f"workload {checkpoint.get('workload')!r}"
        raise JfbError(f"{path} was written with other options ({what}); resume with those, or train into a new --out")
    model = _unwrapped(training.model)
    # under DDP or FSDP2 process 0's whole tensors are broadcast and each process keeps its shard
    set_state_dict(
        model,
        training.optimizer,
        model_state_dict=_one_name_each(model, checkpoint["model"], path),
        optim_state_dict=checkpoint["optimizer"],
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=run.processes.distributed, strict=False),
    )
    training.restore(checkpoint["training"])
    if metrics is not None:
        # the rows written up to the checkpoint; the final row (with the final evaluation) is written again
        rows = _read_rows(run.out)
        metrics.records = [r for r in rows if r.step <= training.next_step and r.step < training.steps]
    run.log(f"resumed from {path} at step {training.next_step} of {training.steps}")


def _read_rows(out: Path) -> list[StepRecord]:
    """The metrics rows written before the interruption (metrics.jsonl), to continue the files."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # the last line, cut by a crash mid-append: its row is written again after the resume
            break
    return [StepRecord(row.pop("step"), row) for row in rows]


def _warn_misses(training: Training, name: str) -> None:
    missed = training.measured.backward_misses
    if missed:
        message = f"{name}: the backward linear solve missed its tolerance in {missed} of {training.steps} steps"
        warnings.warn(ConvergenceWarning(message), stacklevel=3)
