"""What a workload is: a settings dataclass and four functions, so one training loop, one command and one
side-by-side benchmark serve them all."""

from __future__ import annotations

import dataclasses
import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import JfbError
from ..reports import Report, key_value_table, write_report
from ..settings import check_ranges, setting
from ..train.checkpoint import save_checkpoint
from ..train.distributed import Processes, launched_rank, start_processes, stop_processes
from ..train.engine import FitResult, Loss, StepSettings, Training
from ..train.run_folder import claimed_run_folder
from ..train.steps import StepRun, run_steps
from ..train.supervision import DeepSupervision, SegmentLoss, from_start
from .curves import BudgetCurves
from .engines import EngineFactory, jfb_engine
from .parallel import PARALLEL, full_state, parallel_batches, torchrun_needed, wrap_parallel

#: the help of ``--segments``; a workload's config that sets its own default redeclares the field with it
SEGMENTS_HELP = "deep supervision (HRM, TRM): solves per batch, each from the last one's state"


@dataclass(frozen=True)
class Placement(StepSettings):
    """Where a workload trains (and, from :class:`~jfb.train.engine.StepSettings`, how it optimises, checkpoints
    and reports): the fields every workload's config starts with."""

    device: str = setting("cpu", "where the model trains", choices=("cpu", "cuda"))
    parallel: str = setting("none", "none, or under torchrun: ddp, fsdp", choices=PARALLEL)
    segments: int = setting(1, SEGMENTS_HELP)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, [(self.segments >= 1, "segments", "an integer >= 1")])


def to_device(batch: Any, device: str) -> Any:
    """A tensor, or a tuple of them (sparse ones too), on ``device``."""
    if isinstance(batch, tuple):
        return tuple(to_device(item, device) for item in batch)
    return batch.to(device)


@dataclass(frozen=True)
class Trained:
    """What :meth:`Workload.train` hands back: the model (None after a distributed run: it belonged to the
    processes' group, which is gone; ``state`` has its weights), the training's measurements, the metrics, the
    per-case rows, every parameter whole (also after FSDP), and whether this is the process that writes."""

    model: nn.Module | None
    result: FitResult
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    state: dict[str, Tensor]
    main: bool = True


@dataclass(frozen=True)
class Workload:
    """``build(config, engine) -> model``; ``batches(config) -> (step -> batch)`` (seeded, fresh data each step);
    ``loss(config) -> (model, batch) -> (loss, iterations)``; ``evaluate(model, config) -> (metrics, rows)``:
    the headline metrics (``metric`` names the one a table leads with) and per-case rows for a table or plot;
    ``smoke``: the config changes that make a run take seconds (they still learn; see the tests);
    ``segment_loss(config) -> (model, batch, state) -> (loss, iterations, state reached)``: the loss from a given
    start, for deep supervision (``--segments N``; None: the workload's model takes no start). A workload with a
    ``segment_loss`` gives no ``loss``: it is the segment loss from the model's own start."""

    name: str
    help: str
    config: type
    build: Callable[[Any, EngineFactory], nn.Module]
    batches: Callable[[Any], Callable[[int], object]]
    evaluate: Callable[[nn.Module, Any], tuple[dict[str, Any], list[dict[str, Any]]]]
    metric: str
    smoke: dict[str, Any]  # config changes for a run of seconds (tests, the device check's dry run)
    higher_is_better: bool = True
    #: how its per-case rows plot (test-time compute curves), for a run, an evaluation and the side-by-side zoo
    curves: BudgetCurves | None = None
    #: the ``parallel`` modes it trains under, and why not the others (its batch does not split)
    parallel: tuple[str, ...] = PARALLEL
    single_process_reason: str = ""
    #: the dimension of the model's logits that holds the classes (predictions are the argmax along it)
    class_dim: int = 1
    segment_loss: Callable[[Any], SegmentLoss] | None = None
    loss: Callable[[Any], Loss] = None  # type: ignore[assignment]  # derived from segment_loss when not given

    def __post_init__(self) -> None:
        if self.loss is None:
            if self.segment_loss is None:
                raise JfbError(f"workload {self.name!r}: give loss or segment_loss (the loss derives from the latter)")
            segment_loss = self.segment_loss
            object.__setattr__(self, "loss", lambda config: from_start(segment_loss(config)))

    def check(self, config: Any) -> None:
        """JfbError in one line, before any work, for a parallel mode this workload does not train under or deep
        supervision of a model that takes no start."""
        if config.parallel not in self.parallel:
            raise JfbError(
                f"workload {self.name!r} does not train under --parallel {config.parallel} "
                f"({self.single_process_reason}); it takes --parallel {' or '.join(self.parallel)}"
            )
        if config.segments > 1 and self.segment_loss is None:
            raise JfbError(f"workload {self.name!r} takes --segments 1 only (its model takes no start state)")

    def model(self, config: Any, engine: EngineFactory | None = None) -> nn.Module:
        """The model of ``config`` built from ``config.seed`` (the same weights whatever the engine)."""
        if config.device == "cuda" and not torch.cuda.is_available():
            raise JfbError("device 'cuda' asked for, but torch.cuda.is_available() is False")
        torch.manual_seed(config.seed)
        return self.build(config, engine or jfb_engine(config.engine, config.eval_tol)).to(config.device)

    def batches_on_device(self, config: Any) -> Callable[[int], object]:
        source = self.batches(config)
        return lambda step: to_device(source(step), config.device)

    def training(
        self,
        model: nn.Module,
        config: Any,
        batches: Callable[[int], object] | None = None,
        processes: Processes | None = None,
    ) -> Training:
        """The step object of ``config`` (its optimiser, schedule, clipping and bad-batch policy) on ``processes``
        (which decide together to skip a step or stop)."""
        self.check(config)
        batches = batches or self.batches_on_device(config)
        loss = self.loss(config)
        if config.segments > 1:
            loss = DeepSupervision(self.segment_loss(config), config.segments)
        return Training(model, batches, loss, config.steps, config.lr, config, processes)

    def train(
        self,
        config: Any,
        engine: EngineFactory | None = None,
        progress: bool = False,
        out: Path | None = None,
        resume: bool = False,
        log: Callable[[str], None] = print,
        overwrite: bool = False,
    ) -> Trained:
        """Build, train (on the processes torchrun started when ``config.parallel`` asks) and evaluate; with
        ``out`` (held for the run, :mod:`jfb.train.run_folder`), checkpoints and metrics go there, ``resume``
        continues from its ``last.pt`` and ``overwrite`` replaces a run it holds."""
        self.check(config)
        torchrun_needed(config.parallel)
        if out is None:
            return self._train_in(None, config, engine, progress, resume, log)
        with claimed_run_folder(out, resume, overwrite, main=launched_rank() == 0, log=log) as folder:
            return self._train_in(folder, config, engine, progress, resume, log)

    def _train_in(
        self,
        out: Path | None,
        config: Any,
        engine: EngineFactory | None,
        progress: bool,
        resume: bool,
        log: Callable[[str], None],
    ) -> Trained:
        processes = start_processes(config.device) if config.parallel != "none" else Processes()
        try:
            run = StepRun(out, self.name, plain_config(config), processes, None, progress and processes.is_main, log)
            return self._train_on(run, config, engine, resume)
        except BaseException as error:
            # DDP's reducer and FSDP2's state hold the process group: the finished frames the traceback keeps
            # must let go of them before the group goes, or a gloo thread outlives it (a deadlock at exit)
            traceback.clear_frames(error.__traceback__)
            raise
        finally:
            gc.collect()
            stop_processes(processes)

    def _train_on(self, run: StepRun, config: Any, engine: EngineFactory | None, resume: bool) -> Trained:
        """:meth:`train`'s body: nothing of the model outlives it but its whole weights (in ``Trained.state``)
        and, in one process, the model itself."""
        processes = run.processes
        model = self.model(config, engine)
        trained = wrap_parallel(model, model.block, config.parallel, processes, config.device)
        batches = parallel_batches(self.batches_on_device(config), processes)
        training = self.training(trained, config, batches, processes)
        run.evaluate = evaluation = _Evaluation(self, trained, config)
        try:
            result, metrics = run_steps(training, run, resume)
        finally:
            run.evaluate = None  # the run outlives this frame in train's; the evaluation holds the wrapped model
        kept = None if processes.distributed else model
        return Trained(kept, result, metrics, evaluation.cases, full_state(model), processes.is_main)

    def run(
        self, config: Any, out: Path, progress: bool = True, resume: bool = False, overwrite: bool = False
    ) -> Report:
        """``jfb train NAME``: train (checkpoints in ``out``), evaluate, write the weights, the metrics, the rows
        (and a plot)."""
        out = Path(out)
        trained = self.train(config, progress=progress, out=out, resume=resume, overwrite=overwrite)
        result, metrics, rows = trained.result, trained.metrics, trained.rows
        summary = {
            "workload": self.name,
            "engine": config.engine,
            "final_train_loss": round(result.final_loss, 4),
            "train_seconds": round(result.seconds, 1),
            "ms_per_step": round(result.ms_per_step, 2),
            "forward_iterations": round(result.forward_iterations, 1),
            "saved_mib": round(result.saved_mib, 2),
            "backward_misses": result.backward_misses,
            **metrics,
        }
        if not trained.main:  # one process writes
            return Report([summary], key_value_table(summary), summary=summary)
        save_checkpoint(out / "model.pt", saved_workload(self, config, trained))
        plot = (lambda plt, path: self.curves.plot(plt, path, rows)) if self.curves else None
        report = write_report(out, self.name, rows or [summary], key_value_table(summary), plot, summary)
        report.files.append(out / "model.pt")
        return report


class _Evaluation:
    """``workload.evaluate(model, config)`` as the step loop calls it: the metrics, the per-case rows kept."""

    def __init__(self, workload: Workload, model: nn.Module, config: Any) -> None:
        self.workload, self.model, self.config = workload, model, config
        self.cases: list[dict[str, Any]] = []

    def __call__(self) -> dict[str, Any]:
        metrics, self.cases = self.workload.evaluate(self.model, self.config)
        return metrics


def plain_config(config: Any) -> dict[str, Any]:
    """``config`` as a dict of plain values (tuples as lists), as checkpoints hold it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def saved_workload(workload: Workload, config: Any, trained: Trained) -> dict[str, Any]:
    """What a workload's ``model.pt`` holds: its name, config, whole weights and the metrics measured."""
    plain = plain_config(config)
    return {"workload": workload.name, "config": plain, "model": trained.state, "metrics": trained.metrics}
