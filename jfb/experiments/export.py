"""``jfb export CHECKPOINT``: a trained model as an ONNX file or a ``torch.export`` program, checked against eager.

The exported model solves every implicit layer as the checkpoint does in eval mode (a fixed depth unrolled, a
tolerance as a loop inside the program), or at ``--depth`` (see :mod:`jfb.deploy`). An image classifier is
exported with its input normalisation inside: it takes images as float32 pixel values 0-255, NCHW, and returns
logits; the check runs the written file on the test set beside the eager model solving the same way. A workload
model takes its one input tensor (bits, bytes) and returns its logits; the check compares the predictions of
the file and of the eager model on a fresh batch. Nothing is claimed that the check did not measure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import batches
from ..deploy import export_onnx, export_program, exported_solves
from ..errors import JfbError
from ..pretrained import checkpoint_path
from ..settings import setting
from ..train import Data
from ..train.checkpoint import evaluated_weights, load_checkpoint, save_pretrained
from ..train.setup import Log, input_normalizer, load_data, restore_model
from ..workloads import WORKLOADS
from ..workloads.engines import without_tolerance
from ..workloads.saved import Predictor, is_workload_checkpoint, model_inputs, restore_workload

FORMATS = ("onnx", "pt2", "safetensors")
Run = Callable[..., Tensor]  # the file's model, called on input tensors


@dataclass(frozen=True)
class ExportSettings:
    checkpoint: str = setting(
        help="a checkpoint written by jfb train (or a workload), or a shipped one by name: mnist-default, "
        "prefix-sums, chains, lm",
        positional=True,
    )
    format: str = setting(
        "onnx",
        "onnx (runs in ONNX Runtime), pt2 (a torch.export program) or safetensors (the weights and a config.json, "
        "for jfb eval / jfb generate / jfb.pretrained.from_pretrained)",
        choices=FORMATS,
    )
    depth: int | None = setting(
        None,
        "iterations of every implicit layer (default: as the checkpoint solves in eval mode; a workload: its "
        "eval depth)",
    )
    solver: str | None = setting(None, "forward solver of every implicit layer (default: the checkpoint's)")
    out: str | None = setting(
        None, "the file to write (default: CHECKPOINT-NAME.onnx or .pt2 here; the folder CHECKPOINT-NAME-pretrained)"
    )
    limit_test: int | None = setting(None, "check an image classifier on the first N test images only")


@dataclass
class Target:
    """What is exported (``module`` on ``example``, at ``depth``) and how the file is checked against eager."""

    module: nn.Module
    example: tuple[Tensor, ...]
    depth: int | None
    check: Callable[[Run], dict[str, Any]]


def export_checkpoint(settings: ExportSettings, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Write the file, load it back, run it beside the eager model: the summary of the check."""
    path = checkpoint_path(settings.checkpoint)
    checkpoint = load_checkpoint(path)
    if settings.format == "safetensors":
        return _save_weights(path, checkpoint, settings, log)
    if is_workload_checkpoint(checkpoint):
        target = _workload_target(path, checkpoint, settings)
    else:
        target = _classifier_target(path, settings)
    out = Path(settings.out or f"{path.stem}.{settings.format}")
    log(f"exporting {path} as {settings.format} to {out} ...")
    if settings.format == "onnx":
        _require_onnx()
        export_onnx(target.module, target.example, out, target.depth, settings.solver)
        run = onnx_runner(out)
    else:
        torch.export.save(export_program(target.module, target.example, target.depth, settings.solver), str(out))
        run = _program_runner(out)
    with exported_solves(target.module, target.depth, settings.solver):
        summary = {"checkpoint": settings.checkpoint, "format": settings.format, "file": str(out), **target.check(run)}
    log(", ".join(f"{key} {value}" for key, value in summary.items() if key not in ("checkpoint", "file")))
    return summary


def _save_weights(path: Path, checkpoint: dict[str, Any], settings: ExportSettings, log: Log) -> dict[str, Any]:
    """``--format safetensors``: the evaluated weights and a config.json in a folder, read back and compared."""
    given = [f"--{name.replace('_', '-')}" for name in ("depth", "solver", "limit_test") if getattr(settings, name)]
    if given:
        raise JfbError(f"{', '.join(given)}: options of onnx and pt2 exports (safetensors holds the weights only)")
    out = Path(settings.out or f"{path.stem}-pretrained")
    log(f"saving the weights of {path} as safetensors in {out}/ ...")
    save_pretrained(out, checkpoint)
    saved, original = load_checkpoint(out)["model"], evaluated_weights(checkpoint)
    identical = saved.keys() == original.keys() and all(torch.equal(saved[k], original[k].cpu()) for k in saved)
    summary = {"tensors": len(saved), "weights_identical": identical}
    log(", ".join(f"{key} {value}" for key, value in summary.items()))
    return {"checkpoint": settings.checkpoint, "format": "safetensors", "file": str(out), **summary}


def classifier_for_export(checkpoint: str, limit_test: int | None = None) -> tuple[PixelClassifier, Data]:
    """The image classifier of ``checkpoint`` (a path or a shipped name) on the CPU, with its input normalisation
    inside, and its data."""
    path = checkpoint_path(checkpoint)
    overrides = {"limit_test": limit_test} if limit_test else {}
    model, config = restore_model(path, {**overrides, "device": "cpu"})
    normalizer = input_normalizer(config)
    return PixelClassifier(model, normalizer.mean, normalizer.inv_std), load_data(config)


def _classifier_target(path: Path, settings: ExportSettings) -> Target:
    module, data = classifier_for_export(str(path), settings.limit_test)

    def check(run: Run) -> dict[str, Any]:
        eager_right = exported_right = agree = 0
        largest = 0.0
        for images, labels in batches(data.test, 256, lambda x: x.float()):
            with torch.no_grad():
                eager = module(images)
            exported = run(images)
            largest = max(largest, float((eager - exported).abs().max()))
            eager_right += int((eager.argmax(1) == labels).sum())
            exported_right += int((exported.argmax(1) == labels).sum())
            agree += int((eager.argmax(1) == exported.argmax(1)).sum())
        n = len(data.test)
        return {
            "test_images": n,
            "eager_test_acc": round(100 * eager_right / n, 2),
            "exported_test_acc": round(100 * exported_right / n, 2),
            "agreement": round(agree / n, 6),
            "max_logit_difference": float(f"{largest:.3g}"),
        }

    return Target(module, (data.test.images[:2].float(),), settings.depth, check)


def _workload_target(path: Path, checkpoint: dict[str, Any], settings: ExportSettings) -> Target:
    workload, model, config = restore_workload(path, checkpoint, WORKLOADS)
    if settings.limit_test is not None:
        raise JfbError("--limit-test applies to image classifiers; a workload is checked on one fresh batch")
    depth = settings.depth or getattr(config, "eval_depth", config.depth)
    module = Predictor(without_tolerance(model), depth)
    batches, dim = workload.batches(config), workload.class_dim

    def check(run: Run) -> dict[str, Any]:
        fresh = model_inputs(batches(1))
        with torch.no_grad():
            eager = module(*fresh)
        exported = run(*fresh)
        return {
            "depth": depth,
            "samples": fresh[0].shape[0],
            "agreement": round(float((eager.argmax(dim) == exported.argmax(dim)).float().mean()), 6),
            "max_logit_difference": float(f"{float((eager - exported).abs().max()):.3g}"),
        }

    return Target(module, model_inputs(batches(0)), None, check)


class PixelClassifier(nn.Module):
    """A classifier with its input normalisation: float32 pixel values 0-255 (NCHW) in, logits out."""

    def __init__(self, model: nn.Module, mean: Tensor, inv_std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", inv_std)

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) * self.inv_std)


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise JfbError(
            "--format onnx needs onnx, onnxscript and onnxruntime: pip install 'torch-jfb[deploy]'"
        ) from None


def onnx_runner(path: Path) -> Run:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0])

    return run


def _program_runner(path: Path) -> Run:
    with warnings.catch_warnings():  # torch's note about weights stored off the CPU; these are on it
        warnings.filterwarnings("ignore", message="No complete tensor found")
        module = torch.export.load(str(path)).module()
    return lambda *inputs: module(*inputs).detach()
