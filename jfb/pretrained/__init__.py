"""Trained weights shipped with the package, loadable by name: ``jfb eval mnist-default``, ``jfb generate lm``.

Each is a folder in the layout of the Hugging Face ecosystem's ``save_pretrained``: ``model.safetensors`` (the
weights; safetensors holds tensors only, so loading runs no code, and ``torch.load`` is never needed) and
``config.json`` (what rebuilds the model: its workload or training configuration, the metrics it reported, the
weights' SHA-256). ``index.json`` lists each with the metric it reported when it was trained, the command that
trained it, the CPU and the date; ``jfb eval NAME`` evaluates it again, so a claim can be checked in seconds
without training. :func:`save_pretrained` writes such a folder from any checkpoint (``jfb export CHECKPOINT
--format safetensors``), :func:`from_pretrained` rebuilds the model of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

FOLDER = Path(__file__).resolve().parent


def index() -> dict[str, dict[str, Any]]:
    """Every shipped model by name: ``file`` (its folder), ``metric``, ``value``, ``command``, ``cpu``, ``date``."""
    return json.loads((FOLDER / "index.json").read_text())


def pretrained_path(name: str) -> Path | None:
    """The shipped folder called ``name``, or None when no shipped model has that name."""
    entry = index().get(name)
    return FOLDER / entry["file"] if entry else None


def checkpoint_path(checkpoint: str | Path) -> Path:
    """A shipped model's folder by name, else ``checkpoint`` as a path (a checkpoint file or a saved folder)."""
    return pretrained_path(str(checkpoint)) or Path(checkpoint)


def save_pretrained(checkpoint: str | Path, directory: str | Path) -> Path:
    """Write the model of ``checkpoint`` (a file of ``jfb train``, a saved folder or a shipped name) as
    ``directory/model.safetensors`` and ``directory/config.json``."""
    from ..train.checkpoint import load_checkpoint
    from ..train.checkpoint import save_pretrained as write

    return write(Path(directory), load_checkpoint(checkpoint_path(checkpoint)))


def from_pretrained(checkpoint: str | Path) -> tuple[nn.Module, Any]:
    """The model of a shipped name, a saved folder or a checkpoint file, rebuilt on the CPU with its weights, in
    eval mode, and its configuration (a workload's config, or a :class:`~jfb.train.TrainConfig`)."""
    from ..train.checkpoint import load_checkpoint
    from ..train.setup import restore_model
    from ..workloads import WORKLOADS
    from ..workloads.saved import is_workload_checkpoint, restore_workload

    path = checkpoint_path(checkpoint)
    saved = load_checkpoint(path)
    if is_workload_checkpoint(saved):
        _, model, config = restore_workload(path, saved, WORKLOADS)
    else:
        model, config = restore_model(path, {"device": "cpu"})
    return model.eval(), config
