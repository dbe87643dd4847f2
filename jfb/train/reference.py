"""``jfb import-reference``: a checkpoint published by the paper's authors, as one of ours (no pickled code runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import MODEL_KINDS
from ..models.reference import REFERENCE_DATASETS, as_explicit, load_reference
from ..settings import setting
from ..solvers import SolveOptions
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .setup import Log


@dataclass(frozen=True)
class ImportSettings:
    path: str = setting(help="the authors' .pth file", positional=True)
    out: str = setting(help="where to write our checkpoint")
    dataset: str | None = setting(
        None, "needed when the file name does not say", choices=tuple(REFERENCE_DATASETS.values())
    )
    model: str | None = setting(None, "default: explicit when the file name says 'Explicit'", choices=MODEL_KINDS)


def import_reference(settings: ImportSettings, log: Log = print) -> dict[str, Any]:
    arch, state, info = load_reference(settings.path, settings.dataset)
    kind = settings.model or info["kind"]
    # evaluation solves to a tight tolerance (Anderson, rel 1e-4); an explicit twin is T once from u = 0, then S
    config = TrainConfig(
        dataset=REFERENCE_DATASETS[arch],
        arch=arch,
        model=kind,
        explicit_depth=1,
        solve=SolveOptions(solver="anderson", tol=1e-4, stop_mode="rel", max_iter=100),
    )
    weights = as_explicit(state) if kind == "explicit" else state
    save_checkpoint(Path(settings.out), {"config": config.to_dict(), "model": weights, "imported_from": info["source"]})
    log(
        f"converted {settings.path} ({kind} {arch}, reported test accuracy {info['reported_test_accuracy']}) "
        f"to {settings.out}"
    )
    return {"architecture": arch, "out": settings.out, **info, "kind": kind}
