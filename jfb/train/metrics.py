"""Per-epoch metrics: metrics.csv and metrics.jsonl in the run dir (plus TensorBoard if installed)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from ..plotting import pyplot
from ..tables import csv_text


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """Keeps all epoch records; rewrites both files atomically after each epoch.

    With ``write=False`` (the other processes of a distributed run) it only keeps the records.
    """

    def __init__(self, run_dir: Path, records: Optional[list[dict[str, Any]]] = None, write: bool = True) -> None:
        self.run_dir = run_dir
        self.records: list[dict[str, Any]] = list(records or [])
        self.write = write
        self._tensorboard = _tensorboard_writer(run_dir) if write else None

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.rewrite()
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tensorboard.add_scalar(key, value, record["epoch"])
            self._tensorboard.flush()

    def rewrite(self) -> None:
        """Write all records to metrics.jsonl and metrics.csv (after appending or updating one)."""
        if self.write:
            _atomic_write(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
            _atomic_write(self.run_dir / "metrics.csv", csv_text(self.records))


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_curves(run_dir: Path, records: list[dict[str, Any]]) -> Optional[Path]:
    """Training curves as ``curves.png`` (None when matplotlib is not installed)."""
    plt = pyplot()
    if plt is None:
        return None
    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train loss")
    left.plot(epochs, [r["val_loss"] for r in records], marker="o", label="validation loss")
    left.set_xlabel("epoch"), left.set_ylabel("cross-entropy"), left.legend()
    for key in ("train_acc", "val_acc", "test_acc"):
        right.plot(epochs, [r[key] for r in records], marker="o", label=key.replace("_acc", ""))
    right.set_xlabel("epoch"), right.set_ylabel("accuracy (%)"), right.legend()
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
