"""The commands: each names its settings dataclass and the library function that does the work.

The glue here only builds the settings from the parsed flags, calls the function, prints its
report and returns what ``--json`` prints; everything else lives in the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, make_dataclass
from pathlib import Path
from typing import Any

from ..benchmarks.deploy import DeployBenchSettings, deploy_table
from ..benchmarks.epoch import EpochBenchSettings, epoch_table
from ..benchmarks.generate import GenerateBenchSettings, generate_table
from ..benchmarks.inference import InferenceBenchSettings, inference_table
from ..benchmarks.memory import MemoryBenchSettings, memory_table
from ..benchmarks.overhead import OverheadBenchSettings, overhead_table
from ..benchmarks.solvers import SolverBenchSettings, solver_table
from ..benchmarks.step import StepBenchSettings, step_table
from ..benchmarks.zoo import ZooBenchSettings, zoo_table
from ..errors import JfbError, unknown_name
from ..experiments.compare import CompareSettings, run_compare
from ..experiments.demo import DemoSettings, run_demo
from ..experiments.diagnose import DiagnoseSettings, diagnose
from ..experiments.export import ExportSettings, export_checkpoint
from ..experiments.generate import GenerateSettings, run_generate
from ..experiments.toy import ToySettings, run_toy
from ..pretrained import checkpoint_path
from ..reports import Report
from ..settings import setting
from ..train import EvalSettings, ImportSettings, TrainConfig, evaluate_checkpoint, import_reference, train
from ..train.checkpoint import load_checkpoint
from ..train.setup import Log
from ..workloads import WORKLOADS, Workload
from ..workloads.saved import evaluate_saved, is_workload_checkpoint
from .flags import parse_value, values_of
from .train_settings import OVERWRITE_HELP, TrainSettings


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    settings: type
    call: Callable[..., Any]  # (settings, [overrides,] progress, log) -> Report | TrainResult | dict
    group: str | None = None  # "bench": the command is ``jfb bench NAME``
    config_flags: type | None = None  # TrainConfig: its fields are flags too, overriding the target's values

    def run(self, args: argparse.Namespace, progress: bool, log: Log) -> dict[str, Any]:
        settings = self.settings(**values_of(args, self.settings))
        if self.config_flags is None:
            result = self.call(settings, progress, log)
        else:
            result = self.call(settings, values_of(args, self.config_flags), progress, log)
        if isinstance(result, Report):
            log(result.text())
        return result.to_json() if hasattr(result, "to_json") else result


def _without_progress(function: Callable[[Any, Log], Any]) -> Callable[[Any, bool, Log], Any]:
    """A library function that shows no progress bars, called like the others."""
    return lambda settings, progress, log: function(settings, log)


def _train(settings: TrainSettings, overrides: dict[str, Any], progress: bool, log: Log):
    config = settings.config(overrides)
    run_dir = settings.run_dir(config)
    return train(config, run_dir, resume=settings.resume, progress=progress, log=log, overwrite=settings.overwrite)


def _eval(settings: EvalSettings, progress: bool, log: Log) -> dict[str, Any]:
    """``jfb eval PATH|NAME``: a shipped checkpoint by name, a workload's checkpoint, or an MNIST-family one."""
    path = checkpoint_path(settings.checkpoint)
    checkpoint = load_checkpoint(path)
    if not is_workload_checkpoint(checkpoint):
        return evaluate_checkpoint(dataclasses.replace(settings, checkpoint=str(path)), progress, log)
    given = [name for name, value in settings.overrides().items() if name != "device" and value is not None]
    if given:
        raise JfbError(f"{', '.join(given)}: options of image-classifier checkpoints; {path} holds a workload")
    changes = _evaluation_changes(settings.set, checkpoint)
    result = evaluate_saved(path, checkpoint, WORKLOADS, changes, Path(settings.out) if settings.out else None)
    for name, value in result["metrics"].items():
        log(f"{name}: {value} (when saved: {result['saved_metrics'].get(name)})")
    if result["metrics"].get("corpus_sha256", "") != result["saved_metrics"].get("corpus_sha256", ""):
        log("note: the corpus differs from the one the metric was saved with (another Python's standard library?)")
    return result


def _evaluation_changes(text: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``--set KEY=VALUE ...`` as changes of the workload's configuration, each value parsed as its flag would be."""
    config = WORKLOADS[checkpoint["workload"]].config if checkpoint["workload"] in WORKLOADS else None
    if not text.strip() or config is None:
        return {}
    hints = typing.get_type_hints(config)
    kinds = {f.name: hints[f.name] for f in fields(config) if f.init}
    changes = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise JfbError(f"--set: expected KEY=VALUE pairs separated by spaces, got {pair!r}")
        if key not in kinds:
            raise unknown_name(f"--set: setting of workload {checkpoint['workload']!r}", key, list(kinds))
        try:
            changes[key] = parse_value(kinds[key], value)
        except (ValueError, TypeError):
            raise JfbError(f"--set {key}: cannot read {value!r} as {kinds[key]}") from None
    return changes


def _bench_epoch(settings: EpochBenchSettings, overrides: dict[str, Any], progress: bool, log: Log) -> Report:
    return epoch_table(TrainSettings(settings.target).config(overrides), settings, log=log)


def _workload_command(workload: Workload) -> Command:
    """``jfb train NAME`` for a workload: its config's fields are the flags, plus ``--out``."""
    out = setting(None, f"run dir (default runs/{workload.name}-TIME)")
    resume = setting(False, "continue from OUT/last.pt (start afresh when there is none)")
    overwrite = setting(False, OVERWRITE_HELP)
    run_settings = make_dataclass(
        f"{workload.config.__name__}Run",
        [("out", str | None, out), ("resume", bool, resume), ("overwrite", bool, overwrite)],
        bases=(workload.config,),
        frozen=True,
    )

    def call(run: Any, progress: bool, log: Log) -> Report:
        if run.resume and run.out is None:
            raise JfbError("--resume continues a run folder: give it with --out")
        config = workload.config(**{f.name: getattr(run, f.name) for f in fields(workload.config)})
        folder = Path(run.out or f"runs/{workload.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        return workload.run(config, folder, progress, resume=run.resume, overwrite=run.overwrite)

    return Command(workload.name, workload.help, run_settings, call, group="workload")


COMMANDS = (
    Command(
        "train",
        "Train an implicit (or explicit) network on a dataset or a TOML config.",
        TrainSettings,
        _train,
        config_flags=TrainConfig,
    ),
    Command(
        "eval",
        "Evaluate a checkpoint, or a shipped one by name (mnist-default, prefix-sums, chains, lm).",
        EvalSettings,
        _eval,
    ),
    Command(
        "export",
        "Export a checkpoint (or a shipped model) as ONNX or a torch.export program, checked against eager.",
        ExportSettings,
        export_checkpoint,
    ),
    Command(
        "generate",
        "Continue text with a DEQ language model (shipped: lm), one cached fixed-point solve per byte.",
        GenerateSettings,
        run_generate,
    ),
    Command(
        "import-reference",
        "Convert a checkpoint published by the paper's authors (no pickled code runs).",
        ImportSettings,
        _without_progress(import_reference),
    ),
    Command(
        "toy",
        "Learn T for the paper's toy problem y = d + y^5 by JFB and compare with the true solution.",
        ToySettings,
        run_toy,
    ),
    Command(
        "compare",
        "Train the same model from the same seed with each backward mode (the paper's Table 2).",
        CompareSettings,
        run_compare,
    ),
    Command(
        "diagnose",
        "Contraction factor at u*, JFB vs true gradient (descent), Neumann-k errors, on test batches.",
        DiagnoseSettings,
        diagnose,
    ),
    Command(
        "demo",
        "Train the MNIST implicit network with JFB for a few minutes and report test accuracy.",
        DemoSettings,
        run_demo,
    ),
    Command(
        "memory",
        "Peak memory of a training step vs forward depth (fresh process per point).",
        MemoryBenchSettings,
        _without_progress(memory_table),
        group="bench",
    ),
    Command(
        "step",
        "ms per training step vs a hand-written PyTorch floor, interleaved, medians.",
        StepBenchSettings,
        _without_progress(step_table),
        group="bench",
    ),
    Command(
        "epoch",
        "One training epoch on synthetic data of a dataset's shape (time only; e.g. CIFAR-10 offline).",
        EpochBenchSettings,
        _bench_epoch,
        group="bench",
        config_flags=TrainConfig,
    ),
    Command(
        "inference",
        "Validation and test accuracy and time of a trained model's evaluation at several depths.",
        InferenceBenchSettings,
        _without_progress(inference_table),
        group="bench",
    ),
    Command(
        "deploy",
        "ms per batch of a classifier eager, compiled, exported and in ONNX Runtime; vmap against a Python loop.",
        DeployBenchSettings,
        _without_progress(deploy_table),
        group="bench",
    ),
    Command(
        "overhead",
        "us per iteration of jfb.fixed_point against a bare loop and a hand-checked loop of the same T, interleaved.",
        OverheadBenchSettings,
        _without_progress(overhead_table),
        group="bench",
    ),
    Command(
        "generate",
        "Bytes per second of cached decoding against re-solving the window per byte; iterations with a warm start.",
        GenerateBenchSettings,
        _without_progress(generate_table),
        group="bench",
    ),
    Command(
        "solvers",
        "T evaluations and time for each forward solver to reach tol on a trained model.",
        SolverBenchSettings,
        _without_progress(solver_table),
        group="bench",
    ),
    Command(
        "zoo",
        "Each workload trained under torch-jfb and torchdeq, same model, weights, data and budget, interleaved.",
        ZooBenchSettings,
        zoo_table,
        group="bench",
    ),
    *(_workload_command(w) for w in WORKLOADS.values()),
)
