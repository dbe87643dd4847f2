"""Descent diagnostics of a trained implicit network (the paper's Theorem and its Figure on descent).

On test batches, with the network in eval mode (BatchNorm uses running statistics, so T acts on
each sample separately): the contraction factor of T at u* (power iteration on J), the JFB
direction against the true gradient (IFT solved tightly with GMRES), the share of batches where
JFB is a descent direction, and the relative error of Neumann-k gradients for growing k.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from torch import nn

from ..backward import IFT
from ..contraction import lipschitz_estimate
from ..data import batches, load_splits
from ..layer import ImplicitLayer
from ..models import ImplicitClassifier
from ..train import input_normalizer, restore_model
from ..errors import JfbError

NEUMANN_ORDERS = (0, 1, 2, 4, 8)


def _gradient(model: ImplicitClassifier, backward, inputs, labels, tol: float, max_iter: int) -> torch.Tensor:
    model.implicit = ImplicitLayer(model.operator, solver="anderson", backward=backward, tol=tol, max_iter=max_iter, stop_mode="rel")
    model.zero_grad()
    nn.functional.cross_entropy(model(inputs), labels).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def diagnose(checkpoint_path: Path, out_dir: Path, n_batches: int = 5, batch_size: int = 100, log=print) -> dict[str, Any]:
    model, config = restore_model(checkpoint_path)
    if not isinstance(model, ImplicitClassifier):
        raise JfbError(f"{checkpoint_path}: diagnose needs an implicit model, not {config.model!r}")
    model.eval()
    _, _, test = load_splits(config.dataset, config.data_dir, seed=config.seed)
    rows = []
    for index, (inputs, labels) in enumerate(batches(test, batch_size, input_normalizer(config))):
        if index == n_batches:
            break
        true = _gradient(model, IFT("gmres", tol=1e-6, max_iter=300), inputs, labels, 1e-6, 300)
        jfb = _gradient(model, "jfb", inputs, labels, 1e-6, 300)
        with torch.no_grad():
            q = model.embedding(inputs)
            u_star = model.implicit(q)
        contraction = lipschitz_estimate(model.operator, u_star, q, iters=20)
        neumann = {k: float((_gradient(model, f"neumann:{k}", inputs, labels, 1e-6, 300) - true).norm() / true.norm()) for k in NEUMANN_ORDERS}
        rows.append({
            "batch": index,
            "contraction_mean": float(contraction.mean()),
            "contraction_max": float(contraction.max()),
            "inner_product": float(jfb @ true),
            "cosine": float(jfb @ true / (jfb.norm() * true.norm())),
            **{f"neumann_{k}_rel_error": v for k, v in neumann.items()},
        })
        log(f"batch {index}: contraction {rows[-1]['contraction_mean']:.3f} (max {rows[-1]['contraction_max']:.3f}), cosine(JFB, true) {rows[-1]['cosine']:.3f}")
    summary = {
        "batches": len(rows),
        "descent_share": sum(r["inner_product"] > 0 for r in rows) / len(rows),
        "cosine_mean": mean(r["cosine"] for r in rows),
        "contraction_mean": mean(r["contraction_mean"] for r in rows),
        "contraction_max": max(r["contraction_max"] for r in rows),
        **{f"neumann_{k}_rel_error": mean(r[f"neumann_{k}_rel_error"] for r in rows) for k in NEUMANN_ORDERS},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diagnose.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out_dir / "diagnose.md").write_text("| quantity | value |\n|---|---|\n" + "".join(f"| {k} | {v:.4g} |\n" for k, v in summary.items()))
    return summary
