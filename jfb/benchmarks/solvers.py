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
from pathlib import Path
from typing import Any

import torch

from ..data import batches, load_splits
from ..tables import csv_text
from ..train import input_normalizer, restore_model


@torch.no_grad()
def solver_table(checkpoint: Path, out: Path, solvers: list[str], tol: float, stop_mode: str, max_iter: int,
                 n_batches: int, batch_size: int, log=print) -> list[dict[str, Any]]:
    model, config = restore_model(checkpoint)
    model.eval()
    layer = model.implicit
    test = load_splits(config.dataset, config.data_dir, seed=config.seed)[2].subset(n_batches * batch_size)
    evals: dict[str, list[int]] = {s: [] for s in solvers}
    times: dict[str, list[float]] = {s: [] for s in solvers}
    converged: dict[str, list[float]] = {s: [] for s in solvers}
    for inputs, _ in batches(test, batch_size, input_normalizer(config)):
        q = model.embedding(inputs)
        for name in solvers:
            started = time.perf_counter()
            layer(q, solve=dict(solver=name, tol=tol, stop_mode=stop_mode, max_iter=max_iter))
            times[name].append(time.perf_counter() - started)
            evals[name].append(layer.last_stats.forward.t_evals)
            converged[name].append(float(layer.last_stats.converged.float().mean()))
    rows = []
    for name in solvers:
        rows.append({
            "solver": name, "tol": tol, "stop_mode": stop_mode, "batches": len(evals[name]),
            "t_evals_mean": statistics.mean(evals[name]), "ms_median": 1000 * statistics.median(times[name]),
            "converged_share": statistics.mean(converged[name]),
        })
    for row in rows:
        row["t_evals_vs_first"] = row["t_evals_mean"] / rows[0]["t_evals_mean"]
        row["time_vs_first"] = row["ms_median"] / rows[0]["ms_median"]
        log(json.dumps(row))
    _write(out, rows, checkpoint)
    return rows


def _write(out: Path, rows: list[dict[str, Any]], checkpoint: Path) -> None:
    (out / "solvers.csv").write_text(csv_text(rows))
    reference = rows[0]["solver"]
    lines = [f"| solver | T evals / batch | vs {reference} | ms / solve (median) | vs {reference} | converged |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['solver']} | {r['t_evals_mean']:.1f} | {r['t_evals_vs_first']:.2f}x | {r['ms_median']:.1f} | "
              f"{r['time_vs_first']:.2f}x | {100 * r['converged_share']:.1f}% |" for r in rows]
    first = rows[0]
    lines.append(f"\n{checkpoint}, tol {first['tol']} ({first['stop_mode']}), {first['batches']} test batches, {torch.get_num_threads()} threads")
    (out / "solvers.md").write_text("\n".join(lines) + "\n")
