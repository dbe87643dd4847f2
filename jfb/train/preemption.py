"""Preemption: a scheduler's signal (SLURM sends SIGTERM, or SIGUSR1 with ``--signal``) ends training
cleanly instead of killing it.

While :class:`PreemptionWatch` is active, the configured signals only set a flag. The training
loop reads it at the all-reduce every step already makes (so the processes of a data-parallel run
agree on the step without an extra collective), finishes that step, writes ``last.pt`` once and
raises :class:`Preempted`; the command exits with :data:`EXIT_PREEMPTED`. A second signal of the
same kind acts as if no handler were installed (e.g. SIGTERM terminates at once).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Protocol

from ..errors import JfbError

#: the exit status of a preempted run (sysexits' EX_TEMPFAIL: "try again later"; rerun with --resume)
EXIT_PREEMPTED = 75
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


class Preempted(Exception):
    """Training stopped on a preemption signal after writing ``last.pt``; rerun with ``--resume``."""


def signal_numbers(names: tuple[str, ...] | list[str]) -> list[signal.Signals]:
    """The signals named (``SIGTERM`` or ``TERM``); JfbError for unknown or uncatchable ones."""
    numbers = []
    for name in names:
        full = name if name.startswith("SIG") else f"SIG{name}"
        if full in UNCATCHABLE or full not in signal.Signals.__members__:
            raise JfbError(f"preempt_signals: {name!r} is not a signal training can catch (e.g. SIGTERM, SIGUSR1)")
        numbers.append(signal.Signals[full])
    return numbers


class Watch(Protocol):
    """What a training step reads: the name of the preemption signal received, or None."""

    received: str | None


class PreemptionWatch:
    """Context manager: while active, the ``names`` signals set :attr:`received` instead of acting."""

    def __init__(self, names: tuple[str, ...] | list[str]) -> None:
        self.signals = signal_numbers(names)
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name
        signal.signal(number, self._previous.get(signal.Signals(number), signal.SIG_DFL))

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
