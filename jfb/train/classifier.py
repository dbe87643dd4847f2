"""The paper models' training (the image classifiers): :func:`train` sets up a :class:`~jfb.train.setup.Run`,
:func:`fit` trains it through the one loop (:mod:`jfb.train.loop`) as a :class:`ClassifierEpochs` task: the
steps of every epoch, then validation, the epoch's record, ``last.pt`` and the validation-selected ``best.pt``;
:func:`train_one_epoch` is one pass."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

from ..backward import get_backward
from ..data import batches
from ..errors import JfbError
from ..models import count_parameters
from .checkpoint import load_checkpoint
from .classifier_step import train_step
from .config import TrainConfig
from .distributed import launched_rank, main_process_only, start_processes, stop_processes
from .engine import Stepped
from .evaluation import evaluate
from .loop import run_loop
from .metrics import plot_curves
from .optimization import TrainingStopped
from .preemption import PreemptionWatch, Watch
from .records import EpochRecord, EpochStats, Position, TrainResult
from .run_folder import claimed_run_folder
from .setup import Log, Run, build_from_config, evaluated_weights, setup_run


def train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    overwrite: bool = False,
) -> TrainResult:
    """Train, evaluate every epoch, keep ``last.pt`` and the validation-selected ``best.pt``.

    ``run_dir`` is held for the run (:mod:`jfb.train.run_folder`): a folder that holds a run needs ``resume`` (to
    continue it) or ``overwrite`` (to replace it). Under ``torchrun`` this runs data-parallel (see
    :mod:`jfb.train.distributed`); only the main process logs, shows progress and writes files.
    """
    with claimed_run_folder(run_dir, resume, overwrite, main=launched_rank() == 0, log=log):
        return _train_in(config, Path(run_dir), resume, progress, log)


def _train_in(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, log: Log) -> TrainResult:
    processes = start_processes(config.device, config.dist_timeout_s)
    try:
        if processes.distributed and (config.lipschitz_rescale or get_backward(config.backward).state_dict()):
            raise JfbError(
                f"lipschitz_rescale and a backward mode that learns as it trains ({config.backward!r} keeps a state) "
                "act on each process's own batch (rescaled weights, the backward mode), so data-parallel copies "
                "would drift apart; train in one process"
            )
        log = main_process_only(log, processes)
        with PreemptionWatch(config.preempt_signals) as watch:
            run = setup_run(config, run_dir, resume, processes, progress and processes.is_main, log)
            try:
                return fit(run, watch)
            finally:
                run.engine = run.model
    except BaseException as error:
        if processes.distributed:
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        # DDP's reducer holds the process group; freed after the group is destroyed, its gloo destructor can
        # deadlock at exit. So it is dropped first on every path out: from the run, and on an error from the
        # finished frames the traceback keeps (DDP's forward, when a collective inside T failed)
        stop_processes(processes)


def fit(run: Run, watch: Watch | None = None) -> TrainResult:
    """Train ``run`` from its position to its last epoch; the test set is measured as configured. ``watch``: the
    preemption signals caught (none without it)."""
    task = ClassifierEpochs(run)
    try:
        if run.position.step == task.steps_per_epoch:  # a checkpoint written after an epoch's last step
            task.end_epoch()
        run_loop(task, watch or PreemptionWatch(()), run.progress, run.log)
    except TrainingStopped as stop:
        run.save("stopped.pt")
        raise TrainingStopped(f"{stop}; weights before the bad batches saved to {run.run_dir / 'stopped.pt'}") from None
    return _result(run)


def train_one_epoch(run: Run) -> EpochStats:
    """One pass over the training split from ``run.position`` on, without the epoch's validation; its sums."""
    task = ClassifierEpochs(run, end_epochs=False)
    run_loop(task, PreemptionWatch(()), run.progress, run.log, until=(run.position.epoch + 1) * task.steps_per_epoch)
    return run.position.stats


class ClassifierEpochs:
    """A classifier's epochs as the loop's task: step ``index`` is batch ``index % steps_per_epoch`` of epoch
    ``index // steps_per_epoch`` (shuffled by the epoch's seed); ``last.pt`` every ``checkpoint_every`` steps of an
    epoch; at an epoch's end (with ``end_epochs``) its validation, record, ``last.pt`` and ``best.pt``."""

    def __init__(self, run: Run, end_epochs: bool = True) -> None:
        self.run, self.end_epochs = run, end_epochs
        self.name = run.config.dataset
        self.steps_per_epoch = run.steps_per_epoch
        self.steps = run.config.epochs * self.steps_per_epoch
        self._data: Iterator | None = None
        self._started = 0.0

    @property
    def next_step(self) -> int:
        return self.run.position.epoch * self.steps_per_epoch + self.run.position.step

    def step(self, index: int, watch: Watch) -> Stepped:
        run, position = self.run, self.run.position
        if self._data is None:
            self._data = self._epoch_batches()
        inputs, labels, batch_index = next(self._data)
        stop = train_step(run, inputs, labels, batch_index, watch)
        position.step += 1
        position.elapsed_s = time.perf_counter() - self._started
        return Stepped(position.stats.postfix(), stop)

    def after(self, done: int) -> None:
        position, every = self.run.position, self.run.config.checkpoint_every
        if position.step == self.steps_per_epoch:
            if self.end_epochs:
                self.end_epoch()
        elif every and position.step % every == 0:
            self.run.save("last.pt")

    def save_last(self) -> str:
        self.run.save("last.pt")
        return f"{self.run.run_dir / 'last.pt'} written; rerun the same command with --resume to continue"

    def where(self) -> str:
        position = self.run.position
        if position.step == 0 and position.epoch:  # stopped just after an epoch ended
            return f"the end of epoch {position.epoch}"
        return f"epoch {position.epoch + 1}, step {position.step}"

    def end_epoch(self) -> None:
        """Validate (and test) the epoch just trained, record it, write ``last.pt`` (and ``best.pt``)."""
        run, config = self.run, self.run.config
        record = _measure_epoch(run, run.position.stats.reduced(run.processes))
        final = record.epoch == config.epochs
        run.metrics.append(record)
        improved = record.val_acc > run.best_val
        run.best_val = max(run.best_val, record.val_acc)
        if final and not improved and not config.test_every_epoch:
            _test_selected_epoch(run)
        run.position = Position(epoch=record.epoch)
        run.save("last.pt")
        if improved:
            run.save("best.pt")
        run.log(_epoch_line(record, tested=config.test_every_epoch or final))
        self._data = None

    def _epoch_batches(self) -> Iterator:
        """The batches of the position's epoch from its step on; the epoch's clock continues from there."""
        run, config, position = self.run, self.run.config, self.run.position
        run.model.train()  # the layer solves with the training options
        self._started = time.perf_counter() - position.elapsed_s
        return iter(
            batches(
                run.data.train,
                config.batch_size,
                run.data.normalize,
                shuffle_seed=config.seed * 100_003 + position.epoch,
                augment=config.augmentation(),
                start=position.step,
                shard=(run.processes.rank, run.processes.world_size),
                device=config.device,
                with_index=True,
            )
        )


def _measure_epoch(run: Run, stats: EpochStats) -> EpochRecord:
    """Validate (and test, every epoch or the last) the weights the run evaluates."""
    config = run.config
    with run.average.applied(run.model) if run.average is not None else nullcontext():
        record = _epoch_record(run, stats)
        if config.test_every_epoch or record.epoch == config.epochs:
            test = evaluate(run.model, run.data.test, config, run.data.normalize, run.progress, "test", run.processes)
            record.set_test(test)
    return record


def _epoch_record(run: Run, stats: EpochStats) -> EpochRecord:
    """Validate the epoch just trained and describe it."""
    epoch = run.position.epoch + 1
    if stats.skipped:
        run.log(
            f"warning: epoch {epoch} skipped {stats.skipped} bad batches "
            "(non-finite loss, diverged or non-finite fixed point)"
        )
    val = evaluate(run.model, run.data.val, run.config, run.data.normalize, run.progress, "validation", run.processes)
    config = run.config
    return EpochRecord.of_epoch(
        epoch,
        stats,
        val,
        run.position.elapsed_s,
        backward=config.backward if config.model == "implicit" else "explicit",
        lr=run.scheduler.get_last_lr()[0],
        world_size=run.processes.world_size,
        global_batch_size=config.batch_size,
    )


def _epoch_line(r: EpochRecord, tested: bool) -> str:
    test = f"{r.test_acc:.2f}%" if tested else "-"
    return (
        f"epoch {r.epoch}: train loss {r.train_loss:.4f} acc {r.train_acc:.2f}% | val {r.val_acc:.2f}% | "
        f"test {test} | {r.epoch_time_s:.1f} s, {r.train_forward_iters_mean:.1f} forward iterations/batch"
    )


def _result(run: Run) -> TrainResult:
    records = run.metrics.records
    plot = plot_curves(run.run_dir, records, run.log) if run.processes.is_main else None
    best = run.metrics.best()
    result = TrainResult(
        run_dir=str(run.run_dir),
        parameters=count_parameters(run.model),
        epochs=len(records),
        test_acc_last=records[-1].test_acc,
        test_acc_best_val=best.test_acc,
        best_val_acc=best.val_acc,
        best_epoch=best.epoch,
        train_time_s=sum(r.epoch_time_s for r in records),
        world_size=run.processes.world_size,
        plot=str(plot) if plot else None,
    )
    run.log(
        f"test accuracy: last epoch {result.test_acc_last:.2f}%, validation-selected "
        f"(epoch {result.best_epoch}) {result.test_acc_best_val:.2f}%"
    )
    return result


def _test_selected_epoch(run: Run) -> None:
    """Without per-epoch test evaluation: the test accuracy of the validation-selected weights, once, at the end."""
    model = build_from_config(run.config)
    model.load_state_dict(evaluated_weights(load_checkpoint(run.run_dir / "best.pt")))
    test = evaluate(
        model, run.data.test, run.config, run.data.normalize, run.progress, "test (selected epoch)", run.processes
    )
    run.metrics.best().set_test(test)
    run.metrics.rewrite()
