"""Table 2 / Figures 5-6 of the paper: the same model, the same seed, one training run per backward mode.

With ``field="solver"`` the runs differ in the forward solver instead (Anderson vs Picard, the
paper's named future work). As in the paper, the Jacobian-based (``ift``) runs drop BatchNorm from the latent space (it
breaks the linear solve in practice) unless ``ift_batch_norm`` is set, and the CG iteration cap
equals the forward ``max_iter``.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from ..train import TrainConfig, train
from ..plotting import pyplot
from ..tables import csv_text
from ..errors import JfbError


#: the forward solve every compared run uses unless the command line overrides it: a tolerance-based
#: solve with the paper's maximum depth of 50, which is also the CG iteration cap of ``ift`` (the
#: packaged MNIST training config runs a fixed depth of 8, which would cap CG at 8)
COMPARISON_SOLVE = {"solver": "anderson", "fixed_depth": False, "tol": 1e-2, "stop_mode": "rel", "max_iter": 50, "batch_size": 100}

#: ``--paper-setting``: the authors' Jacobian-based MNIST run (2 latent blocks, 32 channels, gamma 0.5, forward
#: tolerance 0.1 at most 50 deep, Adam lr 2e-4 with weight decay 1e-6, batch 100), shared by both rows so that only
#: the gradient differs; their runs used a constant learning rate (no schedule is stated)
PAPER_SETTING = {"solver": "picard", "fixed_depth": False, "tol": 0.1, "stop_mode": "abs", "max_iter": 50, "batch_size": 100,
                 "optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-6, "schedule": "constant", "gamma": 0.5}
#: what the Jacobian-based (ift) rows change in it: no latent BatchNorm, the Lipschitz rescale before every solve, and
#: CG on the normal equations to a relative tolerance of 0.1 with at most 50 iterations (the max depth)
PAPER_IFT = {"latent_batch_norm": False, "lipschitz_rescale": True, "backward": "ift:cg:tol=0.1:max_iter=50"}


def run_compare(base: dict[str, Any], methods: list[str], out_dir: Path, ift_batch_norm: bool = False, progress: bool = True,
                log=print, field: str = "backward", paper_setting: bool = False) -> list[dict[str, Any]]:
    """One run per value of ``field`` (``backward`` or ``solver``) in ``methods``; with ``paper_setting``
    the ``ift`` rows run exactly as the authors' Jacobian-based run (:data:`PAPER_IFT`)."""
    if field not in ("backward", "solver"):
        raise JfbError(f"can compare backward modes or solvers, not {field!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for method in methods:
        values = {**base, field: method}
        if field == "backward" and method.startswith("ift") and paper_setting:
            values.update(PAPER_IFT)
        elif field == "backward" and method.startswith("ift") and not ift_batch_norm:
            values["latent_batch_norm"] = False
        config = TrainConfig.from_dict(values)
        log(f"== {method} (latent BatchNorm {'on' if config.latent_batch_norm else 'off'})")
        run_dir = out_dir / method.replace(":", "-")
        result = train(config, run_dir, progress=progress, log=log)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[method] = records
        rows.append(_summary(method, config, result, records))
    _write(out_dir, rows, curves)
    return rows


def _summary(method: str, config: TrainConfig, result: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    backward_statuses: dict[str, int] = {}
    for r in records:
        for status, count in json.loads(r["backward_statuses"]).items():
            backward_statuses[status] = backward_statuses.get(status, 0) + count
    return {
        "method": method,
        "latent_batch_norm": config.latent_batch_norm,
        "epoch_time_s": mean(r["epoch_time_s"] for r in records),
        "j_matvecs_per_epoch": mean(r["j_matvecs"] for r in records),
        "sample_j_matvecs_per_epoch": mean(r["j_matvecs"] for r in records) * config.batch_size,
        "forward_iters_mean": mean(r["train_forward_iters_mean"] for r in records),
        "test_acc_last": result["test_acc_last"],
        "test_acc_best_val": result["test_acc_best_val"],
        "backward_converged_share": backward_statuses.get("converged", 0) / max(sum(backward_statuses.values()), 1),
    }


def _write(out_dir: Path, rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]) -> None:
    (out_dir / "compare.csv").write_text(csv_text(rows))
    reference = rows[0]["method"]
    lines = [f"| method | latent BN | s/epoch | time vs {reference} | J mat-vecs/epoch (per sample) | forward iters | backward converged | "
             "test acc (last) | test acc (val-selected) |\n", "|---|---|---|---|---|---|---|---|---|\n"]
    for r in rows:
        ratio = f"{r['epoch_time_s'] / rows[0]['epoch_time_s']:.2f}x"
        lines.append(
            f"| {r['method']} | {'yes' if r['latent_batch_norm'] else 'no'} | {r['epoch_time_s']:.1f} | {ratio} | "
            f"{r['j_matvecs_per_epoch']:.0f} ({r['sample_j_matvecs_per_epoch']:.2g}) | {r['forward_iters_mean']:.1f} | {100 * r['backward_converged_share']:.0f}% | "
            f"{r['test_acc_last']:.2f} | {r['test_acc_best_val']:.2f} |\n"
        )
    (out_dir / "compare.md").write_text("".join(lines))
    _plot(out_dir, curves)


def _plot(out_dir: Path, curves: dict[str, list[dict[str, Any]]]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for method, records in curves.items():
        epochs = [r["epoch"] for r in records]
        wall, total = [], 0.0
        for r in records:
            total += r["epoch_time_s"]
            wall.append(total)
        axes[0].plot(epochs, [r["test_acc"] for r in records], marker="o", label=method)
        axes[1].plot(wall, [r["test_acc"] for r in records], marker="o", label=method)
        axes[2].plot(epochs, [r["train_loss"] for r in records], marker="o", label=method)
    for ax, (xlabel, ylabel) in zip(axes, [("epoch", "test accuracy (%)"), ("training time (s)", "test accuracy (%)"), ("epoch", "train loss")]):
        ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png", dpi=100)
    plt.close(fig)
