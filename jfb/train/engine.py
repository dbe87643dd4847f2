"""The step engine: what every step-based training gets, read top to bottom.

:class:`Training` is one optimiser step at a time (so a benchmark can interleave several models' steps) with
the optimiser, schedule, clipping and bad-batch policy of :class:`StepSettings`. :func:`run_steps` drives it
to the last step with atomic checkpoints every N steps (``last.pt``, the previous one kept as ``last.prev.pt``),
an exact resume (weights, optimiser, schedule, step, RNG and the measurements so far), preemption (a SIGTERM
finishes the step, writes ``last.pt`` and exits with status 75), a metrics row every N steps in
``metrics.csv`` / ``metrics.jsonl`` (TensorBoard when installed), evaluation every N steps, and a progress bar.
Under torchrun every process steps together; process 0 writes.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import JfbError
from ..layer import ImplicitLayer
from ..settings import check_choices, check_ranges, check_types, setting
from .distributed import Processes
from .optimization import (
    BAD_BATCHES,
    MAX_BAD_BATCHES,
    OPTIMIZERS,
    STEP_SCHEDULES,
    Optimization,
    count_bad_batch,
    make_schedule,
    named_optimizer,
)
from .preemption import Watch, signal_numbers
from .supervision import DeepSupervision

#: ``loss(model, batch) -> (loss, mean forward iterations)`` (or a :class:`~jfb.train.supervision.DeepSupervision`:
#: several segments per batch, each with its optimiser step)
Loss = Callable[[nn.Module, object], tuple[Tensor, float]]


#: the first steps of a training count the bytes autograd saves (a hook on every saved tensor; later steps have
#: the same shapes, and skip its cost)
SAVED_MEASURED_STEPS = 3


@dataclass(frozen=True)
class StepSettings:
    """How a step-based training optimises, checkpoints and reports (fields of every workload's config)."""

    optimizer: str = setting("adam", "adam, adamw or sgd (momentum 0.9)", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "weight decay of the optimiser (decoupled for adamw)")
    schedule: str = setting(
        "cosine", "learning rate over the steps: cosine (to 0), constant or onecycle", choices=STEP_SCHEDULES
    )
    clip: float = setting(1.0, "clip the gradient norm at this value (0: no clipping)")
    bad_batches: str = setting(
        "raise", "a non-finite loss: raise, or skip the step (stop after 10 in a row)", choices=BAD_BATCHES
    )
    checkpoint_every: int = setting(100, "write last.pt every N steps (0: only when preempted or done)")
    log_every: int = setting(10, "a metrics row (train loss, iterations, time) every N steps")
    eval_every: int = setting(0, "evaluate and add the metrics to the row every N steps (0: at the end only)")
    preempt_signals: tuple[str, ...] = setting(
        ("SIGTERM", "SIGUSR1"), "signals that finish the step, write last.pt and exit 75 (empty: none)"
    )

    def __post_init__(self) -> None:
        """One validation style for every settings class: types first, then ranges (one line each)."""
        check_types(self)
        check_ranges(
            self,
            [
                (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
                (self.clip >= 0, "clip", "a number >= 0 (0: no clipping)"),
                (self.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0"),
                (self.log_every >= 1, "log_every", "an integer >= 1"),
                (self.eval_every >= 0, "eval_every", "an integer >= 0"),
            ],
        )
        check_choices(self, [("optimizer", OPTIMIZERS), ("schedule", STEP_SCHEDULES), ("bad_batches", BAD_BATCHES)])
        signal_numbers(self.preempt_signals)


@dataclass(frozen=True)
class FitResult:
    """What a training measured: the last loss (mean of the last tenth of the steps), seconds of all steps,
    the median ms per step (warm-up steps left out), mean forward iterations, autograd MiB saved by a step (the
    most of the first :data:`SAVED_MEASURED_STEPS`),
    the steps whose backward linear solve (IFT) missed its tolerance or failed, and the skipped steps."""

    final_loss: float
    seconds: float
    ms_per_step: float
    forward_iterations: float
    saved_mib: float
    losses: list[float]
    backward_misses: int = 0
    skipped: int = 0


@contextmanager
def saved_tensor_bytes() -> Iterator[list[int]]:
    """Counts the bytes autograd saves for the backward pass inside the block (``total[0]``)."""
    total = [0]

    def pack(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


@dataclass
class Measurements:
    """Per-step measurements so far (saved in ``last.pt``: a resumed run reports over all its steps)."""

    losses: list[float] = field(default_factory=list)
    iterations: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    saved: int = 0
    backward_misses: int = 0
    skipped: int = 0
    consecutive_bad: int = 0


@dataclass(frozen=True)
class Stepped:
    """What one step tells the loop: the progress bar's postfix, and whether a preemption signal reached any
    process (then every process stops after this step)."""

    postfix: dict[str, str]
    stop: bool = False


class Training:
    """One model's training, one step at a time: ``step(index)`` trains on batch ``index``; ``next_step`` is the
    index the run continues from (after a resume, the step after the checkpoint's)."""

    def __init__(
        self,
        model: nn.Module,
        batch: Callable[[int], object],
        loss: Loss | DeepSupervision,
        steps: int,
        lr: float,
        settings: StepSettings | None = None,
        processes: Processes | None = None,
        optimization: Optimization | None = None,
    ) -> None:
        self.model, self.batch, self.loss, self.steps = model, batch, loss, steps
        self.settings = settings or StepSettings()
        self.processes = processes or Processes()
        self.optimization = optimization or self._optimization(lr)
        self.cuda = next(model.parameters()).is_cuda  # then each timed step ends with a synchronisation
        self.measured = Measurements()
        self.next_step = 0

    def _optimization(self, lr: float) -> Optimization:
        """The optimiser, schedule and clipping ``settings`` name (a training given its own takes that)."""
        settings = self.settings
        optimizer = named_optimizer(settings.optimizer, self.model, lr, settings.weight_decay)
        segments = self.loss.count if isinstance(self.loss, DeepSupervision) else 1  # an optimiser step each
        schedule = make_schedule(settings.schedule, optimizer, self.steps * segments)
        return Optimization(optimizer, schedule, clip=settings.clip)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimization.optimizer

    @property
    def schedule(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.optimization.schedule

    def step(self, index: int, watch: Watch | None = None) -> Stepped:
        """Train on batch ``index`` (under deep supervision, one optimiser step per segment). A non-finite loss or
        gradient (on any process) raises, or skips the step (``bad_batches``; the batch's later segments too);
        ``watch``: the preemption signals, read once each segment's forward pass is done."""
        self.model.train()
        start = time.perf_counter()
        segments = self._segments(self.batch(index))
        measuring = len(self.measured.losses) < SAVED_MEASURED_STEPS  # later steps skip the hooks
        with saved_tensor_bytes() if measuring else nullcontext([0]) as total:
            first = next(segments)  # one segment's graph: the memory of a step whatever the number of segments
        self.next_step = index + 1
        loss, iterations, stop = math.nan, 0.0, False
        for value, forward_iterations in itertools.chain([first], segments):
            loss = value.item()
            signalled = watch is not None and watch.received is not None
            bad, stopping = self.processes.any_of([not math.isfinite(loss), signalled])  # one collective for both
            stop = stop or stopping
            if bad:
                return self._skip(index, loss, stop, f"a non-finite loss ({loss})")
            if not self.optimization.apply(value, self.model, self.processes.any):
                return self._skip(index, loss, stop, f"a non-finite gradient (of a finite loss, {loss:.4g})")
            iterations += forward_iterations
        self.measured.consecutive_bad = 0
        if self.cuda:
            torch.cuda.synchronize()
        self._measure(time.perf_counter() - start, loss, iterations, total[0])
        return Stepped({"loss": f"{loss:.3f}", "iters": f"{iterations:.1f}"}, stop)

    def _segments(self, batch: object) -> Iterator[tuple[Tensor, float]]:
        """The step's segments, each computed when asked for (one, without deep supervision)."""
        if isinstance(self.loss, DeepSupervision):
            yield from self.loss(self.model, batch)
        else:
            yield self.loss(self.model, batch)

    def _skip(self, index: int, loss: float, stop: bool, what: str) -> Stepped:
        """No optimiser step on a bad batch (``what`` made it bad): counted, and raised or skipped per
        ``bad_batches``."""
        self.optimization.skip()
        measured = self.measured
        measured.skipped += 1
        policy, where = self.settings.bad_batches, f"step {index}"
        measured.consecutive_bad = count_bad_batch(measured.consecutive_bad, policy, MAX_BAD_BATCHES, what, where)
        return Stepped({"loss": f"{loss:.3f}"}, stop)

    def _measure(self, seconds: float, loss: float, iterations: float, saved: int) -> None:
        """One trained step's measurements: its time, its (last segment's) loss, the forward iterations of all its
        segments, the bytes autograd saved, and whether a backward solve missed."""
        measured = self.measured
        measured.seconds.append(seconds)
        measured.losses.append(loss)
        measured.iterations.append(iterations)
        measured.saved = max(measured.saved, saved)
        measured.backward_misses += backward_missed(self.model)

    def result(self, warmup: int = 3) -> FitResult:
        """The summary so far; the first ``warmup`` steps are left out of the time."""
        measured = self.measured
        if not measured.losses:
            raise JfbError("no step was trained (every one was skipped)")
        timed = measured.seconds[warmup:] or measured.seconds
        tail = measured.losses[-max(len(measured.losses) // 10, 1) :]
        return FitResult(
            final_loss=sum(tail) / len(tail),
            seconds=sum(measured.seconds),
            ms_per_step=1000 * statistics.median(timed),
            forward_iterations=sum(measured.iterations) / len(measured.iterations),
            saved_mib=measured.saved / 2**20,
            losses=measured.losses,
            backward_misses=measured.backward_misses,
            skipped=measured.skipped,
        )

    def state(self) -> dict[str, Any]:
        """Everything but the weights and the optimiser's state (those are gathered by :mod:`jfb.train.steps`)."""
        rng = {"rng": torch.get_rng_state()}
        if self.cuda:
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        return {"step": self.next_step, "schedule": self.schedule.state_dict(), "measured": vars(self.measured), **rng}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_step = state["step"]
        self.schedule.load_state_dict(state["schedule"])
        self.measured = Measurements(**state["measured"])
        torch.set_rng_state(state["rng"])
        if self.cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])


def backward_missed(model: nn.Module) -> bool:
    """Whether a backward linear solve of the step just taken missed its tolerance or failed: an implicit layer's
    statistics say so, or a module that runs its own solve (another library's, side by side) sets
    ``last_backward_missed``."""
    return any(_missed(m) for m in model.modules())


def _missed(module: nn.Module) -> bool:
    if isinstance(module, ImplicitLayer):
        return module.last_stats is not None and module.last_stats.backward.status.failed
    return bool(getattr(module, "last_backward_missed", False))
