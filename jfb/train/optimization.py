"""The optimiser step every training takes (:class:`Optimization`: backward, clipping, the fp16 scaler, the
optimiser and the schedule), the optimisers and schedules it is built from by name, and the one bad-batch policy
(:func:`count_bad_batch`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import JfbError

OPTIMIZERS = ("adam", "adamw", "sgd")
#: every learning-rate schedule :func:`make_schedule` builds (a config may offer fewer: ``step`` counts epochs)
SCHEDULES = ("onecycle", "cosine", "step", "constant")
#: the schedules of a step-based training (no epochs to count a ``step`` schedule in)
STEP_SCHEDULES = ("cosine", "constant", "onecycle")
BAD_BATCHES = ("raise", "skip")
#: consecutive skipped batches after which training stops (``bad_batches="skip"``)
MAX_BAD_BATCHES = 10


class TrainingStopped(JfbError):
    """A bad batch under ``bad_batches="raise"``, or too many in a row (non-finite loss or gradient, no fixed point)."""


def named_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS` over the model's parameters (``momentum`` is SGD's); every training uses this."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, step_size: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """One of :data:`SCHEDULES`, stepped once per optimiser step: ``onecycle`` peaks at the optimiser's learning
    rate, ``cosine`` falls to 0 at ``total_steps`` (the closed form, no drift from a recursion), ``step`` divides
    it by 10 every ``step_size`` steps; every training uses this."""
    if name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    if name == "cosine":
        cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps))  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


@dataclass
class Optimization:
    """The optimiser step every training takes: zero the gradients, backward (scaled under fp16), clip the
    gradient norm at ``clip`` (0: not), step the optimiser (the scaler skips a step whose gradients overflowed)
    and the schedule."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    clip: float = 0.0
    scaler: torch.amp.GradScaler | None = None

    def apply(self, loss: Tensor, model: nn.Module, any_process: Callable[[bool], bool] = bool) -> bool:
        """One step on ``loss``; False, with no step taken and the gradients dropped, when a gradient is not
        finite on any process (``any_process`` combines a per-process flag). A finite loss can still have a
        non-finite gradient (a backward linear solve that overflowed): applied, it would turn every weight NaN
        and the next step's loss would take the blame. Under the fp16 scaler such steps are the scaler's own to
        skip."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self._scaled_step(self.scaler, loss, model)
        else:
            loss.backward()
            if any_process(not gradients_finite(model)):
                self.skip()
                return False
            self._clip(model)
            self.optimizer.step()
        self.schedule.step()
        return True

    def skip(self) -> None:
        """No step on a bad batch: the gradients (none yet, or of the bad batch) are dropped."""
        self.optimizer.zero_grad(set_to_none=True)

    def _scaled_step(self, scaler: torch.amp.GradScaler, loss: Tensor, model: nn.Module) -> None:
        scaler.scale(loss).backward()
        if self.clip:
            scaler.unscale_(self.optimizer)
        self._clip(model)
        scaler.step(self.optimizer)
        scaler.update()

    def _clip(self, model: nn.Module) -> None:
        if self.clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip)


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient this process holds is finite (its own shard under FSDP2): the largest magnitude of
    all of them, one reduction, NaN or inf when any entry is."""
    gradients = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    if not gradients:
        return True
    return bool(torch.isfinite(nn.utils.get_total_norm(gradients, norm_type=math.inf)))


def _local(gradient: Tensor) -> Tensor:
    return gradient.to_local() if hasattr(gradient, "to_local") else gradient  # an FSDP2 DTensor: this shard


def count_bad_batch(consecutive: int, policy: str, limit: int, what: str, where: str) -> int:
    """The count of bad batches in a row after one more (``consecutive`` before it): TrainingStopped at the first
    under ``policy="raise"``, or at the ``limit``-th in a row under ``"skip"``. Every training's one policy."""
    hint = "lower the learning rate or the depth"
    if policy == "raise":
        raise TrainingStopped(f"{what} at {where}; {hint} (or --bad-batches skip)")
    consecutive += 1
    if consecutive >= limit:
        raise TrainingStopped(f"{consecutive} consecutive batches had {what} (last: {where}); {hint}")
    return consecutive
