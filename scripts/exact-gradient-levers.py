"""Gradient quality of each backward-solve lever on the language-model workload, over training.

The model trains under ``ift`` (the workload's default budget: at most 40 fixed-point iterations to 1e-6); at
each checkpoint the same batch and weights are differentiated under every lever, and each gradient (over all
parameters) is compared with two tightly solved references: the fixed-point iteration's limit (the Neumann
series, ``ift:tol=1e-8:max_iter=300``) and the linear system's solution (``ift:gmres:tol=1e-8:max_iter=300``).
Where J is a contraction at u* the two agree; where they do not, the "exact" implicit gradient is not the
fixed-point iteration's limit. Usage: python scripts/exact-gradient-levers.py OUT.csv [STEPS] [EVERY]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from jfb.reports import csv_text
from jfb.workloads import get_workload
from jfb.workloads.engines import jfb_engine
from jfb.workloads.language import _batches, _cross_entropy

REFERENCES = {"neumann-limit": "ift:tol=1e-8:max_iter=300", "linear-solution": "ift:gmres:tol=1e-8:max_iter=300"}
LEVERS = [
    "jfb",
    "ift:max_iter=5",
    "ift:max_iter=40",
    "ift:max_iter=40:tol=1e-3",
    "ift:fixed_point:per_sample=1:max_iter=40",
    "ift:fixed_point:fallback=gmres:max_iter=40",
    "ift:anderson:max_iter=40",
    "ift:gmres:max_iter=40",
]


def gradient(model, layer, spec, batch, depth):
    layer.backward = spec
    model.zero_grad()
    loss, _ = _cross_entropy(model, batch, depth)
    loss.backward()
    stats = layer.last_stats.backward
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return flat, stats


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def measure(model, layer, batch, depth, step):
    refs = {name: gradient(model, layer, spec, batch, depth)[0] for name, spec in REFERENCES.items()}
    rows = [
        {
            "step": step,
            "lever": "references",
            "cos_neumann_limit": 1.0,
            "cos_linear_solution": round(cosine(refs["neumann-limit"], refs["linear-solution"]), 6),
            "rel_err_neumann_limit": 0.0,
            "jt_products": "",
            "status": "",
        }
    ]
    for spec in LEVERS:
        g, stats = gradient(model, layer, spec, batch, depth)
        n = refs["neumann-limit"]
        rows.append(
            {
                "step": step,
                "lever": spec,
                "cos_neumann_limit": round(cosine(g, n), 6),
                "cos_linear_solution": round(cosine(g, refs["linear-solution"]), 6),
                "rel_err_neumann_limit": float(f"{float((g - n).norm() / n.norm()):.3g}"),
                "jt_products": stats.j_matvecs,
                "status": str(stats.status),
            }
        )
    layer.backward = "ift:max_iter=40"
    return rows


def main() -> None:
    out, steps, every = (
        Path(sys.argv[1]),
        int(sys.argv[2]) if len(sys.argv) > 2 else 300,
        int(sys.argv[3]) if len(sys.argv) > 3 else 100,
    )
    warnings.simplefilter("ignore")
    workload = get_workload("lm")
    config = workload.config(seed=0)
    model = workload.model(config, jfb_engine("ift"))
    layer = model.engine.layer
    training, batches = workload.training(model, config), _batches(config)
    rows = []
    for step in range(steps + 1):
        if step % every == 0:
            rows += measure(model, layer, batches(step), config.depth, step)
            print(rows[-len(LEVERS) - 1 :], flush=True)
            out.write_text(csv_text(rows))
        if step < steps:
            training.step(step)


if __name__ == "__main__":
    main()
