"""``jfb bench zoo``: every workload trained under torch-jfb and torchdeq, side by side.

For each workload, one model per engine, each built from the same seed (the same initial weights, checked)
and fed the same batches; their training steps are interleaved, in a new random order at every step, so
load on a shared machine slows all alike. Reported per engine: the workload's headline metric after
training, the median ms per step and its ratio to torch-jfb's JFB, the mean forward iterations, the
autograd memory a step saves for its backward pass (MiB), the last training loss, and the steps whose backward
linear solve missed its tolerance (torch-jfb's engines; torchdeq does not report it).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import JfbError
from ..files import atomic_write_text, prepare_run_dir
from ..registry import parse_value
from ..reports import Report, csv_text, markdown_table, pyplot, save_figure, write_report
from ..settings import setting
from ..workloads import WORKLOADS, Workload, get_workload
from ..workloads.curves import BudgetCurves
from ..workloads.engines import EngineFactory, jfb_engine
from .torchdeq_engine import TORCHDEQ_ENGINES, torchdeq_engine


def engine_factory(name: str, eval_tol: float | None) -> EngineFactory:
    """A torch-jfb engine (``jfb``, ``ift``, ``unroll``) or a torchdeq one (``torchdeq-jfb``, ``torchdeq-ift``)."""
    return torchdeq_engine(name, eval_tol) if name in TORCHDEQ_ENGINES else jfb_engine(name, eval_tol)


def _same_weights(models: dict[str, nn.Module]) -> None:
    """JfbError unless every model starts from the first one's weights (compared by parameter order)."""
    first_name, first = next(iter(models.items()))
    for name, model in models.items():
        for a, b in zip(first.parameters(), model.parameters(), strict=True):
            if not torch.equal(a, b):
                raise JfbError(f"engines {first_name!r} and {name!r} start from different weights")


def compare_engines(
    workload: Workload, config: Any, engines: tuple[str, ...], seed: int = 0, progress: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train ``config`` under each engine, steps interleaved in shuffled order: one row per engine, and the
    workload's per-case evaluation rows (test lengths, iteration budgets) with the engine named."""
    configs = {name: dataclasses.replace(config, engine=name) for name in engines}
    models = {name: workload.model(configs[name], engine_factory(name, config.eval_tol)) for name in engines}
    _same_weights(models)
    trainings = {name: workload.training(models[name], configs[name]) for name in engines}
    order = random.Random(seed)
    names = list(engines)
    for step in range(config.steps):
        order.shuffle(names)
        for name in names:
            try:
                trainings[name].step(step)
            except JfbError as error:  # say which engine: the others trained the same batches
                raise JfbError(f"engine {name!r}: {error}") from None
        if progress and (step + 1) % max(config.steps // 10, 1) == 0:
            print(f"  {workload.name}: step {step + 1}/{config.steps}", flush=True)
    rows, cases = [], []
    for name in engines:
        result = trainings[name].result()
        metrics, evaluated = workload.evaluate(models[name], configs[name])
        cases += [{"workload": workload.name, "engine": name, **case} for case in evaluated]
        rows.append(
            {
                "workload": workload.name,
                "engine": name,
                "metric": workload.metric,
                "value": metrics[workload.metric],
                "ms_per_step": round(result.ms_per_step, 2),
                "forward_iterations": round(result.forward_iterations, 1),
                "saved_mib": round(result.saved_mib, 2),
                "final_train_loss": round(result.final_loss, 4),
                "backward_misses": result.backward_misses,
            }
        )
    reference = rows[0]["ms_per_step"]
    for row in rows:
        row["time_vs_first"] = round(row["ms_per_step"] / reference, 3)
    return rows, cases


@dataclass(frozen=True)
class ZooBenchSettings:
    workloads: tuple[str, ...] = setting(tuple(WORKLOADS), "workloads to run")
    engines: tuple[str, ...] = setting(
        ("jfb", "torchdeq-jfb", "ift", "torchdeq-ift", "unroll"),
        "engines (named, or a backward mode by name such as ift:gmres:tol=1e-3); the first is the time reference",
    )
    smoke: bool = setting(False, "each workload at its smoke-test size (seconds; the device check's dry run)")
    steps: int | None = setting(None, "training steps of every workload (default: each workload's own)")
    seed: int = setting(0, "seed of the weights, the data and the step order")
    device: str = setting("cpu", "where the model trains", choices=("cpu", "cuda"))
    out: str = setting("runs/bench-zoo", "output folder")

    def __post_init__(self) -> None:
        for name in self.workloads:
            get_workload(name)
        for name in self.engines:
            if name not in TORCHDEQ_ENGINES:
                jfb_engine(name, other_names=TORCHDEQ_ENGINES)  # else one line naming every engine


def zoo_table(settings: ZooBenchSettings, progress: bool = True, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    rows: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []
    for name in settings.workloads:
        workload = get_workload(name)
        size = workload.smoke if settings.smoke else {}
        config = workload.config(seed=settings.seed, device=settings.device, **size)
        if settings.steps is not None:
            config = dataclasses.replace(config, steps=settings.steps)
        log(f"{name}: {config.steps} steps x {len(settings.engines)} engines, interleaved")
        engine_rows, engine_cases = compare_engines(workload, config, settings.engines, settings.seed, progress)
        rows += engine_rows
        cases += engine_cases
    headers = ["workload", "engine", "metric", "value", "ms/step", "vs first", "fwd iters", "saved MiB", "loss"]
    headers.append("bwd misses")
    keys = ["ms_per_step", "time_vs_first", "forward_iterations", "saved_mib", "final_train_loss", "backward_misses"]
    cells = [[r["workload"], r["engine"], r["metric"], f"{r['value']:.4g}", *(r[k] for k in keys)] for r in rows]
    report = write_report(out, "zoo", rows, markdown_table(headers, cells), summary={"engines": list(settings.engines)})
    if cases:
        atomic_write_text(out / "zoo-cases.csv", csv_text(cases))
        report.files += [out / "zoo-cases.csv", *plot_zoo_cases(out, cases)]
    return report


def plot_zoo_cases(out: Path, cases: list[dict[str, Any]]) -> list[Path]:
    """``zoo-WORKLOAD.png`` for each workload of ``cases`` that plots test-time compute curves: one panel per
    engine. ``cases`` as the zoo makes them or as read back from its ``zoo-cases.csv`` (numbers as text, the other
    workloads' columns empty). The files written (none without matplotlib)."""
    plt, written = pyplot(), []
    if plt is None:
        return written
    for name in dict.fromkeys(c["workload"] for c in cases):
        curves = get_workload(name).curves
        if curves is None:
            continue
        mine = [{k: parse_value(str(v)) for k, v in c.items() if v != ""} for c in cases if c["workload"] == name]
        plot_engines(plt, out / f"zoo-{name}.png", mine, curves)
        written.append(out / f"zoo-{name}.png")
    return written


def plot_engines(plt, path: Path, cases: list[dict[str, Any]], curves: BudgetCurves) -> None:
    """One workload's test-time compute curves side by side: one panel per engine, one line per problem size."""
    engines = list(dict.fromkeys(c["engine"] for c in cases))
    fig, axes = plt.subplots(1, len(engines), figsize=(3.2 * len(engines), 3.4), sharey=True, squeeze=False)
    for ax, engine in zip(axes[0], engines):
        curves.draw(ax, [c for c in cases if c["engine"] == engine])
        ax.set_title(engine)
    axes[0][0].set_ylabel(curves.accuracy), axes[0][-1].legend(fontsize=8)
    save_figure(fig, path)
