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
from ..precision import check_precision, resolve
from ..pretrained import checkpoint_path
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..train import Data, TrainConfig, evaluate, load_data, restore_model


@dataclass(frozen=True)
class InferenceBenchSettings:
    checkpoint: str = setting(
        help="a checkpoint of an implicit model, or a shipped one by name (mnist-default)", positional=True
    )
    out: str = setting("runs/bench-inference", "output folder")
    depths: tuple[int, ...] = setting((8, 6, 4, 3, 2), "evaluation depths, comma-separated")
    precisions: tuple[str, ...] = setting(
        ("fp32",),
        "autocast precisions, comma-separated: fp32, bf16, fp16; the first row (first precision and depth) "
        "is the reference",
    )
    repeats: int = setting(3, "timed passes per depth and split (median)")


def inference_table(settings: InferenceBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    model, config = restore_model(checkpoint_path(settings.checkpoint))
    if not isinstance(model, ImplicitClassifier):
        raise JfbError(f"{settings.checkpoint}: bench inference needs an implicit model, not {config.model!r}")
    for precision in settings.precisions:
        check_precision(precision, config.device)
    data = load_data(config)
    rows = []
    for precision in settings.precisions:
        for depth in settings.depths:
            setting_ = replace(config, eval_solve={**config.eval_solve, "max_iter": depth}, eval_precision=precision)
            rows.append(_measure(model, setting_, data, settings.repeats))
            row = rows[-1]
            log(
                f"{precision}, depth {depth}: validation {row['val_acc']:.2f}%, test {row['test_acc']:.2f}%, "
                f"{row['test_s']:.2f} s"
            )
    for row in rows:
        row["test_speedup"] = rows[0]["test_s"] / row["test_s"]
    headers = ["precision", "depth", "validation acc", "test acc", "forward iterations", "test pass (s)", "speed-up"]
    cells = [
        [
            r["precision"],
            r["depth"],
            f"{r['val_acc']:.2f}",
            f"{r['test_acc']:.2f}",
            f"{r['test_iters_mean']:.1f}",
            f"{r['test_s']:.2f}",
            f"{r['test_speedup']:.2f}x",
        ]
        for r in rows
    ]
    note = f"\n{settings.checkpoint}; medians of {settings.repeats} passes; choose the setting on validation\n"
    return write_report(out, "inference", rows, markdown_table(headers, cells) + note)


def _measure(model: ImplicitClassifier, config: TrainConfig, data: Data, repeats: int) -> dict[str, Any]:
    """Validation and test accuracy, forward iterations and the median time of a pass, at ``config``'s evaluation."""
    model.implicit.eval_options = config.evaluation_options()
    row: dict[str, Any] = {
        "precision": resolve(config.evaluation_precision, config.device),
        "depth": model.implicit.eval_options.max_iter,
        "tol": model.implicit.eval_options.tol,
    }
    for name, split in (("val", data.val), ("test", data.test)):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = evaluate(model, split, config, data.normalize)
            times.append(time.perf_counter() - started)
        row |= {
            f"{name}_acc": result.acc,
            f"{name}_s": statistics.median(times),
            f"{name}_iters_mean": result.forward_iters_mean,
        }
    return row
