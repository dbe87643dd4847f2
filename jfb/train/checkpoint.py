"""Checkpoints: written atomically with a SHA-256 of their contents, read with ``weights_only=True``,
and for ``last.pt`` the previous one kept as ``last.prev.pt`` to fall back on.

The file holds ``{"format": "torch-jfb/3", "sha256": ..., "payload": uint8 tensor}`` where the
payload is the ``torch.save`` bytes of the checkpoint itself; a file whose bytes do not match
their checksum (a block zeroed by a crash, a copy cut short) is refused like a truncated one.
Files of every earlier format still load (fixtures of each under ``tests/fixtures/checkpoints``); a file of a
newer format is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import JfbError
from ..files import atomic_write, atomic_write_text
from ..safe_load import check_archive

#: /1: torch.save of the checkpoint; /2: wrapped with its SHA-256; /3 (torch-jfb 0.2): the same wrapping, the
#: configuration's solve settings in the ``solve`` / ``eval_solve`` tables (older files are read and migrated)
FORMAT = "torch-jfb/3"
FORMATS = ("torch-jfb/1", "torch-jfb/2", FORMAT)
WRAPPED = ("torch-jfb/2", FORMAT)


def previous_path(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``last.pt`` -> ``last.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, payload: dict[str, Any], keep_previous: bool = False) -> None:
    """Write atomically (a crash or a full disk mid-write leaves the previous checkpoint intact);
    with ``keep_previous`` the file it replaces becomes :func:`previous_path` once the new one is complete."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    blob = buffer.getvalue()
    wrapped = {
        "format": FORMAT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
    }

    # the old last.pt gets a second name (a hard link) before the new file replaces it, and becomes last.prev.pt
    # only after: last.pt never goes missing, and last.pt and last.prev.pt are never one file (a crash between
    # the two steps leaves last.prev.pt one checkpoint older, never the same inode, which one corruption of
    # last.pt would take with it: found by the chaos soak)
    staged = previous_path(path).with_suffix(".link.tmp")

    def stage_old() -> None:
        staged.unlink(missing_ok=True)
        if path.exists():
            try:
                os.link(path, staged)
            except OSError:  # a file system without hard links
                os.replace(path, previous_path(path))

    def keep_old() -> None:
        if staged.exists():
            os.replace(staged, previous_path(path))

    hooks = {"before_replace": stage_old, "after_replace": keep_old} if keep_previous else {}
    atomic_write(path, lambda f: torch.save(wrapped, f), binary=True, **hooks)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one of our checkpoints, or a :func:`save_pretrained` folder; never executes pickled code. JfbError when
    it is missing, truncated, corrupted (checksum) or not ours."""
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path)
    if not path.is_file():
        raise JfbError(f"{path}: no such checkpoint file")
    outer = _load(path, path.read_bytes())
    if outer.get("format") in WRAPPED:
        blob = outer["payload"].numpy().tobytes()
        if hashlib.sha256(blob).hexdigest() != outer.get("sha256"):
            raise JfbError(f"{path}: cannot load checkpoint safely (checksum mismatch: the file is corrupted)")
        outer = _load(path, blob)
    version = outer.get("format")
    if isinstance(version, str) and version.startswith("torch-jfb/") and version not in FORMATS:
        raise JfbError(
            f"{path}: written by a newer torch-jfb (format {version}); this version reads {', '.join(FORMATS)}: "
            "upgrade torch-jfb to load it"
        )
    if version not in FORMATS:
        raise JfbError(f"{path}: not a torch-jfb checkpoint (for the paper authors' files use `jfb import-reference`)")
    return outer


def _load(path: Path, data: bytes) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            check_archive(archive, len(data))
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or containing non-tensor objects
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JfbError(f"{path}: cannot load checkpoint safely ({first_line})") from exc
    if not isinstance(payload, dict):
        raise JfbError(f"{path}: not a torch-jfb checkpoint (for the paper authors' files use `jfb import-reference`)")
    return payload


def unreadable_path(path: Path) -> Path:
    """Where an unreadable ``last.pt`` is moved once the run resumed from its predecessor: ``last.unreadable.pt``."""
    return path.with_name(f"{path.stem}.unreadable{path.suffix}")


def load_resumable(path: Path, log=print) -> tuple[dict[str, Any], Path]:
    """The checkpoint to resume from: ``path``, or :func:`previous_path` when ``path`` is missing or
    unreadable (said in one line). JfbError when neither loads.

    An unreadable ``path`` is moved to :func:`unreadable_path`: otherwise the run's next checkpoint would keep
    it as the previous one, and one more damaged ``last.pt`` would leave nothing to resume from (found by the
    chaos soak).
    """
    previous = previous_path(path)
    try:
        return load_checkpoint(path), path
    except JfbError as error:
        if not previous.is_file():
            raise
        problem = error
    try:
        checkpoint = load_checkpoint(previous)
    except JfbError as error:
        raise JfbError(f"neither {path} nor {previous} can be loaded ({error})") from None
    moved = ""
    if path.exists():
        os.replace(path, unreadable_path(path))
        moved = f" ({path.name} moved to {unreadable_path(path).name})"
    log(f"warning: {problem}; resuming from the previous checkpoint {previous}{moved}")
    return checkpoint, previous


#: a folder of weights in safetensors (no pickle: nothing in it can run) beside a config.json that says what they are
PRETRAINED_FORMAT = "torch-jfb-pretrained/1"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
DESCRIBED = ("workload", "config", "metrics")  # what config.json keeps of a checkpoint (besides the format)


def _check_description(path: Path, description: dict[str, Any]) -> None:
    """JfbError in one line unless config.json has a ``config`` table and, where present, a ``workload`` name and
    a ``metrics`` table."""
    kinds = {"config": dict, "workload": str, "metrics": dict}
    if "config" not in description:
        raise JfbError(f"{path}: no 'config' (what rebuilds the model)")
    for key, kind in kinds.items():
        if key in description and not isinstance(description[key], kind):
            found = type(description[key]).__name__
            raise JfbError(f"{path}: {key!r} must be a {kind.__name__ if kind is str else 'table'}, not {found}")


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(weights)``, or JfbError in one line when they do not fit (missing, unexpected or
    misshapen tensors: the weights of another model, or a configuration that builds another)."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else (first[0] if first else "")
        raise JfbError(f"{path}: the weights do not fit the model its configuration builds ({detail[:300]})") from None


def evaluated_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint's metrics were measured with: the average when the run kept one."""
    return checkpoint.get("average", checkpoint["model"])


def save_pretrained(directory: Path, checkpoint: dict[str, Any]) -> Path:
    """A checkpoint's evaluated weights as ``model.safetensors`` and what rebuilds its model (the workload or the
    training configuration, the metrics measured, the weights' SHA-256) as ``config.json``, the layout of the
    Hugging Face ecosystem's ``save_pretrained`` (without the transformers package). Optimiser state and history
    are left out: a training checkpoint keeps its own format."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: t.detach().cpu().contiguous() for name, t in evaluated_weights(checkpoint).items()}
    blob = save(weights, metadata={"format": "pt"})
    description = {"format": PRETRAINED_FORMAT, **{k: checkpoint[k] for k in DESCRIBED if k in checkpoint}}
    description.setdefault("metrics", _classifier_metrics(checkpoint))
    description["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(directory / WEIGHTS_FILE, lambda f: f.write(blob), binary=True)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(description, indent=2, sort_keys=True) + "\n")
    return directory


def _classifier_metrics(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """An image classifier's last test accuracy and best validation accuracy, where its history has them."""
    tested = [r for r in checkpoint.get("records", []) if r.get("test_acc") == r.get("test_acc")]  # not NaN
    metrics = {"test_acc": tested[-1]["test_acc"]} if tested else {}
    return {**metrics, **({"best_val_acc": checkpoint["best_val_acc"]} if "best_val_acc" in checkpoint else {})}


def load_pretrained(directory: Path) -> dict[str, Any]:
    """A :func:`save_pretrained` folder as a checkpoint (``model``: the weights, and what config.json holds).
    JfbError when a file is missing, the weights do not match their checksum or the format is not ours."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise JfbError(f"{directory}: not a saved model folder (no {', '.join(missing)})")
    try:
        description = json.loads((directory / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise JfbError(f"{directory / CONFIG_FILE}: not readable JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != PRETRAINED_FORMAT:
        found = description.get("format") if isinstance(description, dict) else None
        raise JfbError(f"{directory}: format {found!r}, this version reads {PRETRAINED_FORMAT}")
    _check_description(directory / CONFIG_FILE, description)
    blob = (directory / WEIGHTS_FILE).read_bytes()
    if hashlib.sha256(blob).hexdigest() != description.get("weights_sha256"):
        raise JfbError(f"{directory / WEIGHTS_FILE}: checksum mismatch (the file is corrupted or was replaced)")
    try:
        weights = load(blob)
    except SafetensorError as exc:
        raise JfbError(f"{directory / WEIGHTS_FILE}: cannot load ({exc})") from None
    return {"format": FORMAT, **{k: description[k] for k in DESCRIBED if k in description}, "model": weights}
