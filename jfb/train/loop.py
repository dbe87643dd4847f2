"""The one training loop. Every training, a paper model's epochs or a workload's steps, is a :class:`Task` that
this loop drives from its next step to its last, read top to bottom:

1. ``task.step(index, watch)``: one optimiser step (the task's forward pass and loss; the optimiser,
   schedule, clipping and bad-batch policy of :mod:`jfb.train.engine`), which also tells whether a preemption
   signal reached any process (one collective for that and the bad-batch decision);
2. the progress bar;
3. ``task.after(done)``: what the task does between steps (metrics rows, evaluation, checkpoints every N
   steps, the end of an epoch: validation, ``best.pt``);
4. on a preemption signal: ``task.save_last()`` at the step just finished, a line saying how to resume, and
   :class:`~jfb.train.preemption.Preempted` (the command exits with status 75).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tqdm import tqdm

from .engine import Stepped
from .preemption import EXIT_PREEMPTED, Preempted, Watch


class Task(Protocol):
    """A training the loop drives: ``steps`` in all, the next one ``next_step`` (after a resume, the one after
    the checkpoint's); ``save_last()`` says what it wrote, ``where()`` names the position for a message."""

    name: str
    steps: int
    next_step: int

    def step(self, index: int, watch: Watch) -> Stepped: ...

    def after(self, done: int) -> None: ...

    def save_last(self) -> str: ...

    def where(self) -> str: ...


def run_loop(
    task: Task,
    watch: Watch,
    progress: bool = False,
    log: Callable[[str], None] = print,
    until: int | None = None,
) -> None:
    """Drive ``task`` from ``task.next_step`` to ``until`` (default: its last step) while ``watch`` (entered by the
    caller, so a signal during the set-up is kept too) catches the preemption signals."""
    bar = tqdm(
        range(task.next_step, until if until is not None else task.steps),
        total=task.steps,
        initial=task.next_step,
        desc=task.name,
        disable=not progress,
        leave=False,
    )
    for index in bar:
        stepped = task.step(index, watch)
        bar.set_postfix(stepped.postfix, refresh=False)
        task.after(index + 1)
        if stepped.stop:
            written = task.save_last()
            received = watch.received or "a signal to another process"
            where = task.where()
            log(f"preempted by {received} at {where}: {written} (exit status {EXIT_PREEMPTED})")
            raise Preempted(where)
