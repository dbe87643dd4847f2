"""``jfb bench deploy``: a trained classifier served four ways, and torch.func's vmap against a Python loop.

Inference of the model at each batch size: eager, ``torch.compile(fullgraph=True)``, the ``torch.export``
program and ONNX Runtime, all at the model's fixed evaluation depth; one call of each way after the other,
``repeats`` rounds (interleaved), medians in ms; each way's accuracy on the whole test set beside them. Then
``problems`` small fixed-point problems (10-dimensional, one ``jfb.fixed_point`` each) solved by ``torch.func.vmap``
and by a Python loop over them, interleaved (the cost of an iteration against a bare loop: ``jfb bench overhead``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import jfb

from ..data import batches
from ..deploy import export_onnx, export_program, exported_solves
from ..experiments.export import classifier_for_export, onnx_runner
from ..files import prepare_run_dir
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from .overhead import median_ms_interleaved, tanh_problem

Call = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DeployBenchSettings:
    checkpoint: str = setting("mnist-default", "an image classifier's checkpoint, or a shipped one by name")
    out: str = setting("runs/bench-deploy", "output folder")
    batch_sizes: tuple[int, ...] = setting((1, 256), "batch sizes, comma-separated")
    repeats: int = setting(30, "rounds of one call of each way (interleaved; medians)")
    problems: int = setting(64, "small problems solved by vmap and by a loop")


def deploy_table(settings: DeployBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    module, data = classifier_for_export(settings.checkpoint)
    example = (data.test.images[:2].float(),)
    ways = _ways(module, example, Path(tempfile.mkdtemp()), log)
    accuracy = {name: _accuracy(call, data) for name, call in ways.items()}
    rows = []
    for size in settings.batch_sizes:
        images = data.test.images[:size].float()
        calls = {name: (lambda call=call, images=images: call(images)) for name, call in ways.items()}
        times = median_ms_interleaved(calls, settings.repeats)
        for name in ways:
            rows.append({"way": name, "batch": size, "ms": times[name], "test_acc": accuracy[name]})
            log(f"batch {size}, {name}: {times[name]:.3f} ms, test accuracy {accuracy[name]:.2f}%")
    rows += _vmap_rows(settings)
    return write_report(out, "deploy", rows, _table(rows, settings))


def _ways(module: torch.nn.Module, example: tuple[torch.Tensor, ...], folder: Path, log) -> dict[str, Call]:
    """The four ways of running ``module`` at its fixed evaluation depth, without grad."""
    log("exporting and compiling ...")
    program = export_program(module, example).module()
    session = onnx_runner(export_onnx(module, example, folder / "model.onnx"))
    with exported_solves(module):
        compiled = torch.compile(module, fullgraph=True)

    def eager(x: torch.Tensor) -> torch.Tensor:
        with exported_solves(module):
            return module(x)

    def compiled_call(x: torch.Tensor) -> torch.Tensor:
        with exported_solves(module):
            return compiled(x)

    ways = {"eager": eager, "torch.compile": compiled_call, "torch.export": program, "ONNX Runtime": session}
    return {name: torch.no_grad()(call) for name, call in ways.items()}


def _accuracy(call: Call, data) -> float:
    right = 0
    for images, labels in batches(data.test, 256, lambda x: x.float()):
        right += int((call(images).argmax(1) == labels).sum())
    return round(100 * right / len(data.test), 2)


def _vmap_rows(settings: DeployBenchSettings) -> list[dict[str, Any]]:
    T, xs = tanh_problem(10, settings.problems)

    def one(x: torch.Tensor) -> torch.Tensor:
        return jfb.fixed_point(T, x[None], solver="picard", tol=1e-6, max_iter=100, stop_mode="abs").value[0]

    with torch.no_grad():
        solves = median_ms_interleaved(
            {"vmap": lambda: torch.func.vmap(one)(xs), "loop": lambda: [one(x) for x in xs]}, settings.repeats
        )
    return [{"way": "vmap", "batch": settings.problems, "ms": solves["vmap"], "loop_ms": solves["loop"]}]


def _table(rows: list[dict[str, Any]], settings: DeployBenchSettings) -> str:
    served = [r for r in rows if "test_acc" in r]
    cells = [[r["way"], r["batch"], f"{r['ms']:.3f}", f"{r['test_acc']:.2f}"] for r in served]
    text = markdown_table(["way", "batch", "ms per batch (median)", "test acc"], cells)
    vmap = rows[-1]
    text += (
        f"\n{settings.checkpoint}; medians of {settings.repeats} interleaved rounds\n\n"
        f"{vmap['batch']} problems: vmap {vmap['ms']:.2f} ms, a Python loop {vmap['loop_ms']:.2f} ms "
        f"({vmap['loop_ms'] / vmap['ms']:.1f}x)\n"
    )
    return text
