"""Descent diagnostics of a trained implicit network (the paper's Theorem and its Figure on descent).

On test batches, with the network in eval mode (BatchNorm uses running statistics, so T acts on
each sample separately): the contraction factor of T at u* (power iteration on J), the JFB
direction against the true gradient (IFT solved tightly with GMRES), the share of batches where
JFB is a descent direction, and the relative error of Neumann-k gradients for growing k.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import torch
from torch import nn

from ..backward import IFT
from ..contraction import lipschitz_estimate
from ..data import batches
from ..errors import JfbError
from ..files import atomic_write_text, prepare_run_dir
from ..layer import ImplicitLayer
from ..models import ImplicitClassifier
from ..reports import Report, key_value_table, write_report
from ..settings import setting
from ..train import load_data, restore_model

NEUMANN_ORDERS = (0, 1, 2, 4, 8)


def _gradient(model: ImplicitClassifier, backward, inputs, labels, tol: float, max_iter: int) -> torch.Tensor:
    model.implicit = ImplicitLayer(
        model.operator, solver="anderson", backward=backward, tol=tol, max_iter=max_iter, stop_mode="rel"
    )
    model.zero_grad()
    nn.functional.cross_entropy(model(inputs), labels).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@dataclass(frozen=True)
class DiagnoseSettings:
    checkpoint: str = setting(help="a checkpoint of an implicit model", positional=True)
    batches: int = setting(5, "test batches to diagnose")
    batch_size: int = setting(100, "images per batch")
    out: str = setting("runs/diagnose", "output folder")


def diagnose(settings: DiagnoseSettings, progress: bool = True, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    model, config = restore_model(Path(settings.checkpoint))
    if not isinstance(model, ImplicitClassifier):
        raise JfbError(f"{settings.checkpoint}: diagnose needs an implicit model, not {config.model!r}")
    model.eval()
    data = load_data(config)
    rows = []
    for index, (inputs, labels) in enumerate(batches(data.test, settings.batch_size, data.normalize)):
        if index == settings.batches:
            break
        rows.append({"batch": index, **_diagnose_batch(model, inputs, labels)})
        log(
            f"batch {index}: contraction {rows[-1]['contraction_mean']:.3f} (max {rows[-1]['contraction_max']:.3f}), "
            f"cosine(JFB, true) {rows[-1]['cosine']:.3f}"
        )
    summary = {
        "batches": len(rows),
        "descent_share": sum(r["inner_product"] > 0 for r in rows) / len(rows),
        "cosine_mean": mean(r["cosine"] for r in rows),
        "contraction_mean": mean(r["contraction_mean"] for r in rows),
        "contraction_max": max(r["contraction_max"] for r in rows),
        **{f"neumann_{k}_rel_error": mean(r[f"neumann_{k}_rel_error"] for r in rows) for k in NEUMANN_ORDERS},
    }
    report = write_report(out, "diagnose", rows, key_value_table(summary), summary=summary)
    atomic_write_text(out / "diagnose.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    report.files.append(out / "diagnose.jsonl")
    return report


def _diagnose_batch(model: ImplicitClassifier, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Contraction at u*, the JFB direction against the true gradient, and Neumann-k errors, on one batch."""
    true = _gradient(model, IFT("gmres", tol=1e-6, max_iter=300), inputs, labels, 1e-6, 300)
    jfb = _gradient(model, "jfb", inputs, labels, 1e-6, 300)
    with torch.no_grad():
        q = model.embedding(inputs)
        u_star = model.implicit(q)
    contraction = lipschitz_estimate(model.operator, u_star, q, iters=20)
    neumann = {k: _gradient(model, f"neumann:{k}", inputs, labels, 1e-6, 300) for k in NEUMANN_ORDERS}
    return {
        "contraction_mean": float(contraction.mean()),
        "contraction_max": float(contraction.max()),
        "inner_product": float(jfb @ true),
        "cosine": float(jfb @ true / (jfb.norm() * true.norm())),
        **{f"neumann_{k}_rel_error": float((g - true).norm() / true.norm()) for k, g in neumann.items()},
    }
