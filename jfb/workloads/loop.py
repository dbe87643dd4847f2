"""The training loop every workload shares, read top to bottom: draw a batch, loss, backward, clip, step.

A workload supplies its model, a function ``batch(step) -> inputs`` (seeded: the same step draws the same
batch under every engine) and ``loss(model, inputs) -> (loss, forward iterations)``; the loop times the
steps, records the mean forward iterations and the autograd memory of a step (the bytes saved for the
backward pass: what a DEQ's constant-memory claim is about, measured the same way for every library).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import ConvergenceWarning, JfbError
from ..layer import ImplicitLayer
from ..status import Status

Loss = Callable[[nn.Module, object], tuple[Tensor, float]]


@dataclass(frozen=True)
class FitResult:
    """What a training measured: the last loss (mean of the last tenth of the steps), seconds of all steps,
    the median ms per step (warm-up steps left out), mean forward iterations, autograd MiB saved by a step,
    and the steps whose backward linear solve (IFT) missed its tolerance or failed."""

    final_loss: float
    seconds: float
    ms_per_step: float
    forward_iterations: float
    saved_mib: float
    losses: list[float]
    backward_misses: int = 0


def to_device(batch: Any, device: str) -> Any:
    """A tensor, or a tuple of them (sparse ones too), on ``device``."""
    if isinstance(batch, tuple):
        return tuple(to_device(item, device) for item in batch)
    return batch.to(device)


@contextmanager
def saved_tensor_bytes() -> Iterator[list[int]]:
    """Counts the bytes autograd saves for the backward pass inside the block (``total[0]``)."""
    total = [0]

    def pack(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


class Training:
    """One model's training, one step at a time (so a benchmark can interleave several models' steps):
    Adam with a cosine schedule over ``steps`` and gradient clipping at 1."""

    def __init__(self, model: nn.Module, batch: Callable[[int], object], loss: Loss, steps: int, lr: float) -> None:
        self.model, self.batch, self.loss, self.steps = model, batch, loss, steps
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
        )
        self.cuda = next(model.parameters()).is_cuda  # then each timed step ends with a synchronisation
        self.losses: list[float] = []
        self.iterations: list[float] = []
        self.seconds: list[float] = []
        self.saved = 0
        self.backward_misses = 0

    def step(self, index: int) -> float:
        """Train on batch ``index``; the loss (JfbError when it is not finite)."""
        self.model.train()
        start = time.perf_counter()
        with saved_tensor_bytes() as total:
            value, forward_iterations = self.loss(self.model, self.batch(index))
        loss = value.item()
        if not math.isfinite(loss):
            raise JfbError(f"the loss is {loss} at step {index}; lower the learning rate or the depth")
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - start)
        self.losses.append(loss)
        self.iterations.append(forward_iterations)
        self.saved = max(self.saved, total[0])
        self.backward_misses += _backward_missed(self.model)
        return loss

    def result(self, warmup: int = 3) -> FitResult:
        """The summary so far; the first ``warmup`` steps are left out of the time."""
        timed = self.seconds[warmup:] or self.seconds
        tail = self.losses[-max(len(self.losses) // 10, 1) :]
        return FitResult(
            final_loss=sum(tail) / len(tail),
            seconds=sum(self.seconds),
            ms_per_step=1000 * statistics.median(timed),
            forward_iterations=sum(self.iterations) / len(self.iterations),
            saved_mib=self.saved / 2**20,
            losses=self.losses,
            backward_misses=self.backward_misses,
        )


def fit(
    model: nn.Module,
    batch: Callable[[int], object],
    loss: Loss,
    steps: int,
    lr: float,
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` for ``steps`` steps (see :class:`Training`), with a progress bar."""
    training = Training(model, batch, loss, steps, lr)
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for index in bar:
        loss_value = training.step(index)
        bar.set_postfix(loss=f"{loss_value:.3f}", iters=f"{training.iterations[-1]:.1f}")
    if training.backward_misses:
        missed = training.backward_misses
        message = f"{desc}: the backward linear solve missed its tolerance in {missed} of {steps} steps"
        warnings.warn(ConvergenceWarning(message), stacklevel=2)
    return training.result()


def _backward_missed(model: nn.Module) -> bool:
    """Whether a backward linear solve of the step just taken missed its tolerance or failed."""
    missed = (Status.MAX_ITER, Status.DIVERGED, Status.NON_FINITE)
    return any(
        isinstance(m, ImplicitLayer) and m.last_stats is not None and m.last_stats.backward.status in missed
        for m in model.modules()
    )
