"""Metrics rows (per epoch or per logged step): metrics.csv and metrics.jsonl in the run dir (plus TensorBoard if
installed), and curves.png."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..files import atomic_write_text
from ..reports import MISSING_MATPLOTLIB, csv_text, pyplot, save_figure
from .records import EpochRecord


class MetricsLog:
    """Keeps all records (one per epoch, or per logged step: ``x`` names the column they are indexed by) and
    writes each to metrics.jsonl and metrics.csv as it comes: appended (one line each, flushed to disk), so a long
    run's rows cost the same at the end as at the start; the files are rewritten whole (atomically) only when a
    record changes or a row brings a column the CSV header lacks. A line cut by a crash is dropped on resume.

    With ``write=False`` (the other processes of a distributed run) it only keeps the records.
    """

    def __init__(self, run_dir: Path, write: bool = True, x: str = "epoch") -> None:
        self.run_dir, self.x = run_dir, x
        self.records: list = []
        self.write = write
        self._columns: list[str] | None = None  # the CSV header on disk (None: the files are not written yet)
        self._tensorboard = _tensorboard_writer(run_dir) if write else None

    def append(self, record) -> None:
        """``record``: anything with ``to_dict()`` (an :class:`EpochRecord`, a :class:`StepRecord`)."""
        self.records.append(record)
        row = record.to_dict()
        if self.write and self._columns is not None and set(row) <= set(self._columns):
            self._append_lines(row)
        else:
            self.rewrite()
        if self._tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != self.x:
                    self._tensorboard.add_scalar(key, value, row[self.x])
            self._tensorboard.flush()

    def rewrite(self) -> None:
        """Write all records to metrics.jsonl and metrics.csv (after updating one, or a new column)."""
        if self.write:
            rows = [r.to_dict() for r in self.records]
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            text = csv_text(rows)
            atomic_write_text(self.run_dir / "metrics.csv", text)
            self._columns = next(csv.reader([text.splitlines()[0]])) if rows else None

    def _append_lines(self, row: dict[str, Any]) -> None:
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=self._columns).writerow(row)
        for name, text in (("metrics.jsonl", json.dumps(row) + "\n"), ("metrics.csv", line.getvalue())):
            try:
                with open(self.run_dir / name, "a") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as error:
                raise StorageError(f"cannot write {self.run_dir / name}: {error.strerror or error}") from error

    def best(self) -> EpochRecord:
        """The validation-selected epoch (the first of equals)."""
        return max(self.records, key=lambda r: r.val_acc)


@dataclass
class StepRecord:
    """One row of a step-based run's metrics: the step, and what was measured over the steps since the last row
    (and the evaluation's metrics on rows where it ran)."""

    step: int
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, **self.values}


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # an optional extra: pip install tensorboard
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_curves(run_dir: Path, records: list[EpochRecord], log=print) -> Path | None:
    """Training curves as ``curves.png`` (None, with one line said, when matplotlib is not installed)."""
    plt = pyplot()
    if plt is None:
        log(MISSING_MATPLOTLIB)
        return None
    epochs = [r.epoch for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in records], marker="o", label="train loss")
    left.plot(epochs, [r.val_loss for r in records], marker="o", label="validation loss")
    left.set_xlabel("epoch"), left.set_ylabel("cross-entropy"), left.legend()
    for name in ("train", "val", "test"):
        right.plot(epochs, [getattr(r, f"{name}_acc") for r in records], marker="o", label=name)
    right.set_xlabel("epoch"), right.set_ylabel("accuracy (%)"), right.legend()
    path = run_dir / "curves.png"
    save_figure(fig, path)
    return path
