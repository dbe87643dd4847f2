"""``jfb bench solvers``: T evaluations and wall time for each forward solver to reach a tolerance.

On test batches of a trained model (a checkpoint) in eval mode: every solver starts from zero
and runs until each sample's residual meets ``tol`` (or ``max_iter``). Solvers alternate batch
by batch so machine noise hits all of them; the table gives the mean T evaluations per batch,
the median milliseconds per solve, the share of converged samples, and ratios to the first solver listed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import batches
from ..files import prepare_run_dir
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..train import load_data, restore_model


@dataclass(frozen=True)
class SolverBenchSettings:
    checkpoint: str = setting(help="a checkpoint of an implicit model", positional=True)
    out: str = setting("runs/bench-solvers", "output folder")
    solvers: tuple[str, ...] = setting(("picard", "anderson", "broyden"), "forward solvers, comma-separated")
    tol: float = setting(1e-4, "tolerance every solver runs to")
    stop_mode: str = setting("rel", "residual the tolerance applies to", choices=("abs", "rel"))
    max_iter: int = setting(200, "most iterations")
    batches: int = setting(20, "test batches")
    batch_size: int = setting(100, "images per batch")


@torch.no_grad()
def solver_table(settings: SolverBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    model, config = restore_model(Path(settings.checkpoint), {"limit_test": settings.batches * settings.batch_size})
    model.eval()
    data = load_data(config)
    solve = dict(tol=settings.tol, stop_mode=settings.stop_mode, max_iter=settings.max_iter)
    measured: dict[str, dict[str, list[float]]] = {
        s: {"evals": [], "times": [], "converged": []} for s in settings.solvers
    }
    for inputs, _ in batches(data.test, settings.batch_size, data.normalize):
        q = model.embedding(inputs)
        for name in settings.solvers:
            started = time.perf_counter()
            model.implicit(q, solve=dict(solver=name, **solve))
            measured[name]["times"].append(time.perf_counter() - started)
            measured[name]["evals"].append(model.implicit.last_stats.forward.t_evals)
            measured[name]["converged"].append(float(model.implicit.last_stats.converged.float().mean()))
    rows = [_row(name, settings, m) for name, m in measured.items()]
    for row in rows:
        row["t_evals_vs_first"] = row["t_evals_mean"] / rows[0]["t_evals_mean"]
        row["time_vs_first"] = row["ms_median"] / rows[0]["ms_median"]
        log(json.dumps(row))
    return write_report(out, "solvers", rows, _markdown(rows, settings.checkpoint))


def _row(name: str, settings: SolverBenchSettings, measured: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "solver": name,
        "tol": settings.tol,
        "stop_mode": settings.stop_mode,
        "batches": len(measured["evals"]),
        "t_evals_mean": statistics.mean(measured["evals"]),
        "ms_median": 1000 * statistics.median(measured["times"]),
        "converged_share": statistics.mean(measured["converged"]),
    }


def _markdown(rows: list[dict[str, Any]], checkpoint: str) -> str:
    first = rows[0]
    reference = first["solver"]
    headers = ["solver", "T evals / batch", f"vs {reference}", "ms / solve (median)", f"vs {reference}", "converged"]
    cells = [
        [
            r["solver"],
            f"{r['t_evals_mean']:.1f}",
            f"{r['t_evals_vs_first']:.2f}x",
            f"{r['ms_median']:.1f}",
            f"{r['time_vs_first']:.2f}x",
            f"{100 * r['converged_share']:.1f}%",
        ]
        for r in rows
    ]
    return markdown_table(headers, cells) + (
        f"\n{checkpoint}, tol {first['tol']} ({first['stop_mode']}), {first['batches']} test batches, "
        f"{torch.get_num_threads()} threads\n"
    )
