"""What training measures: running sums over one pass, one typed record per epoch, the run's result."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ..equilibrium import Equilibrium
from .distributed import Processes


@dataclass(frozen=True)
class PassSummary:
    """Means over one pass of a split (training or evaluation)."""

    loss: float
    acc: float
    forward_iters_mean: float
    forward_iters_max: int
    rel_residual_mean: float


@dataclass
class EpochStats:
    """Running sums over the batches of one pass."""

    loss: float = 0.0
    correct: int = 0
    samples: int = 0
    batches: int = 0
    forward_iterations: float = 0.0
    max_forward_iterations: int = 0
    residual: float = 0.0
    j_matvecs: int = 0
    skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    backward_statuses: dict[str, int] = field(default_factory=dict)
    gradient_checks: list[dict[str, Any]] = field(default_factory=list)  # backward "auto": each check and switch
    backward_in_use: str = ""  # the backward mode of the last step ("auto(neumann:4)" under the autopilot)

    def add(
        self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, equilibrium: Equilibrium | None
    ) -> None:
        """One batch; ``equilibrium``: the implicit layer's result of the batch (None for an explicit model)."""
        n = labels.shape[0]
        self.loss += float(loss) * n
        self.correct += int((logits.argmax(1) == labels).sum())
        self.samples += n
        self.batches += 1
        if equilibrium is None:
            return
        stats = equilibrium.stats
        self.forward_iterations += float(stats.iterations.float().mean())
        self.max_forward_iterations = max(self.max_forward_iterations, int(stats.iterations.max()))
        self.residual += float(stats.rel_residual.mean())
        self.j_matvecs += stats.j_matvecs
        _count(self.statuses, str(stats.status))
        _count(self.backward_statuses, str(stats.backward.status))
        self.backward_in_use = stats.backward.mode
        self.gradient_checks.extend(check.to_dict() for check in equilibrium.checks)

    def reduced(self, processes: Processes) -> EpochStats:
        """Sums over all processes (per-batch means such as iterations are averaged over them)."""
        if not processes.distributed:
            return self
        sums = [self.loss, self.correct, self.samples, self.forward_iterations, self.residual, self.j_matvecs]
        loss, correct, samples, iterations, residual, j_matvecs = processes.sum(sums)
        w = processes.world_size
        return EpochStats(
            loss=loss,
            correct=int(correct),
            samples=int(samples),
            batches=self.batches,
            forward_iterations=iterations / w,
            max_forward_iterations=int(processes.max([self.max_forward_iterations])[0]),
            residual=residual / w,
            j_matvecs=round(j_matvecs / w),
            skipped=self.skipped,  # every process skips the same batches (they agree on bad ones)
            statuses=_merge_counts(processes.gather(self.statuses)),
            backward_statuses=_merge_counts(processes.gather(self.backward_statuses)),
            backward_in_use=self.backward_in_use,
        )

    def summary(self) -> PassSummary:
        b, n = max(self.batches, 1), max(self.samples, 1)
        return PassSummary(
            self.loss / n,
            100.0 * self.correct / n,
            self.forward_iterations / b,
            self.max_forward_iterations,
            self.residual / b,
        )

    def postfix(self) -> dict[str, str]:
        s = self.summary()
        postfix = {
            "loss": f"{s.loss:.3f}",
            "acc": f"{s.acc:.2f}",
            "iters": f"{s.forward_iters_mean:.1f}",
            "res": f"{s.rel_residual_mean:.1e}",
        }
        if self.gradient_checks:  # the autopilot's mode and its last check
            last = self.gradient_checks[-1]
            postfix |= {
                "bwd": self.backward_in_use,
                "cos": f"{last['cosine']:.2f}",
                "rho": f"{last['contraction']:.2f}",
            }
        return postfix


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for key, n in c.items():
            merged[key] = merged.get(key, 0) + n
    return merged


@dataclass
class EpochRecord:
    """One row of metrics.csv / metrics.jsonl. Test columns are NaN for epochs whose test accuracy was not measured."""

    epoch: int
    train_loss: float
    train_acc: float
    train_forward_iters_mean: float
    train_forward_iters_max: int
    train_rel_residual_mean: float
    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float
    test_forward_iters_mean: float
    epoch_time_s: float
    samples_per_s: float
    j_matvecs: int
    skipped_batches: int
    backward: str  # the backward mode, or "explicit"
    solver_statuses: str  # JSON: forward-solve status -> batches
    backward_statuses: str  # JSON: backward status -> batches
    lr: float
    world_size: int
    global_batch_size: int
    backward_in_use: str = ""  # the mode of the epoch's last step (under "auto": which level it ended on)
    gradient_checks: str = "[]"  # JSON: backward "auto"'s checks (call, mode, cosine, descent, contraction, switch)
    gradient_cosine_min: float = math.nan  # the lowest cosine among them
    gradient_check_s: float = 0.0  # the time they took (their share of epoch_time_s is the autopilot's overhead)

    @classmethod
    def of_epoch(cls, epoch: int, stats: EpochStats, val: PassSummary, epoch_time: float, **run: Any) -> EpochRecord:
        """The record of a finished epoch (``run``: backward, lr, world_size, global_batch_size); no test yet."""
        train = stats.summary()
        return cls(
            epoch=epoch,
            train_loss=train.loss,
            train_acc=train.acc,
            train_forward_iters_mean=train.forward_iters_mean,
            train_forward_iters_max=train.forward_iters_max,
            train_rel_residual_mean=train.rel_residual_mean,
            val_loss=val.loss,
            val_acc=val.acc,
            test_loss=math.nan,
            test_acc=math.nan,
            test_forward_iters_mean=math.nan,
            epoch_time_s=epoch_time,
            samples_per_s=stats.samples / epoch_time,
            j_matvecs=stats.j_matvecs,
            skipped_batches=stats.skipped,
            solver_statuses=json.dumps(stats.statuses, sort_keys=True),
            backward_statuses=json.dumps(stats.backward_statuses, sort_keys=True),
            backward_in_use=stats.backward_in_use,
            gradient_checks=json.dumps(stats.gradient_checks),
            gradient_cosine_min=min((c["cosine"] for c in stats.gradient_checks), default=math.nan),
            gradient_check_s=sum(c["seconds"] for c in stats.gradient_checks),
            **run,
        )

    def set_test(self, test: PassSummary) -> None:
        self.test_loss, self.test_acc, self.test_forward_iters_mean = test.loss, test.acc, test.forward_iters_mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochRecord:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})  # older records lack some


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs done and ``step`` batches of the next one.

    A checkpoint taken mid-epoch also holds the running sums of that epoch, the count of
    consecutive bad batches and the training time spent in it, so a resumed run continues the
    epoch exactly where it stopped.
    """

    epoch: int = 0
    step: int = 0
    stats: EpochStats = field(default_factory=EpochStats)
    consecutive_bad: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Position:
        return cls(**{**values, "stats": EpochStats(**values["stats"])})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`jfb.train.train` returns (and ``jfb train --json`` prints)."""

    run_dir: str
    parameters: int
    epochs: int
    test_acc_last: float
    test_acc_best_val: float  # the test accuracy of the validation-selected epoch
    best_val_acc: float
    best_epoch: int
    train_time_s: float
    world_size: int
    plot: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
