"""``jfb bench inference``: accuracy and time of a trained model's evaluation at several forward depths.

Both the validation split (to choose a depth honestly) and the test split are evaluated at each
depth (a fixed depth, or a cap with the checkpoint's evaluation tolerance), one depth after the other,
each pass timed ``repeats`` times (median); times are reported against the first depth.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import JfbError
from ..files import prepare_run_dir
from ..models import ImplicitClassifier
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..train import evaluate, load_data, restore_model


@dataclass(frozen=True)
class InferenceBenchSettings:
    checkpoint: str = setting(help="a checkpoint of an implicit model", positional=True)
    out: str = setting("runs/bench-inference", "output folder")
    depths: tuple[int, ...] = setting((8, 6, 4, 3, 2), "evaluation depths, comma-separated; the first is the reference")
    repeats: int = setting(3, "timed passes per depth and split (median)")


def inference_table(settings: InferenceBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    model, config = restore_model(Path(settings.checkpoint))
    if not isinstance(model, ImplicitClassifier):
        raise JfbError(f"{settings.checkpoint}: bench inference needs an implicit model, not {config.model!r}")
    data = load_data(config)
    rows = []
    for depth in settings.depths:
        model.implicit.eval_options = replace(config, eval_max_iter=depth).solve_options(evaluation=True)
        row: dict[str, Any] = {"depth": depth, "tol": model.implicit.eval_options.tol}
        for name, split in (("val", data.val), ("test", data.test)):
            times = []
            for _ in range(settings.repeats):
                started = time.perf_counter()
                result = evaluate(model, split, config, data.normalize)
                times.append(time.perf_counter() - started)
            row |= {
                f"{name}_acc": result.acc,
                f"{name}_s": statistics.median(times),
                f"{name}_iters_mean": result.forward_iters_mean,
            }
        rows.append(row)
        log(f"depth {depth}: validation {row['val_acc']:.2f}%, test {row['test_acc']:.2f}%, {row['test_s']:.2f} s")
    for row in rows:
        row["test_speedup"] = rows[0]["test_s"] / row["test_s"]
    headers = ["depth", "validation acc", "test acc", "forward iterations", "test pass (s)", "speed-up"]
    cells = [
        [
            r["depth"],
            f"{r['val_acc']:.2f}",
            f"{r['test_acc']:.2f}",
            f"{r['test_iters_mean']:.1f}",
            f"{r['test_s']:.2f}",
            f"{r['test_speedup']:.2f}x",
        ]
        for r in rows
    ]
    note = f"\n{settings.checkpoint}; medians of {settings.repeats} passes; choose the depth on validation\n"
    return write_report(out, "inference", rows, markdown_table(headers, cells) + note)
