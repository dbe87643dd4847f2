"""The training loop, readable top to bottom: :func:`train` sets up a :class:`~jfb.train.setup.Run`,
:func:`fit` trains it epoch by epoch (validation every epoch, checkpoints, the validation-selected
``best.pt``), :func:`train_one_epoch` is one pass, :func:`evaluate` measures a split."""

from __future__ import annotations

import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from tqdm import tqdm

from ..backward import get_backward
from ..data import batches
from ..errors import JfbError
from ..models import count_parameters
from .checkpoint import load_checkpoint
from .classifier_step import TrainingStopped, train_step
from .config import TrainConfig
from .distributed import main_process_only, start_processes, stop_processes
from .evaluation import evaluate
from .metrics import plot_curves
from .preemption import EXIT_PREEMPTED, Preempted, PreemptionWatch
from .records import EpochRecord, EpochStats, Position, TrainResult
from .setup import Log, Run, build_from_config, evaluated_weights, setup_run


def train(
    config: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True, log: Log = print
) -> TrainResult:
    """Train, evaluate every epoch, keep ``last.pt`` and the validation-selected ``best.pt``.

    Under ``torchrun`` this runs data-parallel (see :mod:`jfb.train.distributed`); only the
    main process logs, shows progress and writes files.
    """
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
            run = setup_run(config, Path(run_dir), resume, processes, progress and processes.is_main, log)
            run.preemption = watch
            try:
                return fit(run)
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


def fit(run: Run) -> TrainResult:
    """Train ``run`` from its position to its last epoch; the test set is measured as configured."""
    config = run.config
    while run.position.epoch < config.epochs:
        try:
            stats = train_one_epoch(run).reduced(run.processes)
        except TrainingStopped as stop:
            run.save("stopped.pt")
            raise TrainingStopped(
                f"{stop}; weights before the bad batches saved to {run.run_dir / 'stopped.pt'}"
            ) from None
        record = _measure_epoch(run, stats)
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
    return _result(run)


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


def train_one_epoch(run: Run) -> EpochStats:
    """One pass over the training split from ``run.position.step`` on; ``last.pt`` every ``checkpoint_every`` steps."""
    config, position = run.config, run.position
    run.model.train()  # the layer solves with the training options
    steps = run.steps_per_epoch
    augmentation = config.augmentation()
    data = batches(
        run.data.train,
        config.batch_size,
        run.data.normalize,
        shuffle_seed=config.seed * 100_003 + position.epoch,
        augment=augmentation,
        start=position.step,
        shard=(run.processes.rank, run.processes.world_size),
        device=config.device,
        with_index=True,
    )
    bar = tqdm(
        data,
        total=steps,
        initial=position.step,
        desc=f"epoch {position.epoch + 1}/{config.epochs}",
        disable=not run.progress,
        leave=False,
    )
    started = time.perf_counter() - position.elapsed_s
    for inputs, labels, index in bar:
        if train_step(run, inputs, labels, index):
            bar.set_postfix(position.stats.postfix(), refresh=False)
        position.step += 1
        position.elapsed_s = time.perf_counter() - started
        if run.stop_requested:
            _stop_preempted(run)
        if config.checkpoint_every and position.step % config.checkpoint_every == 0 and position.step < steps:
            run.save("last.pt")
    return position.stats


def _stop_preempted(run: Run) -> None:
    """Write ``last.pt`` at the step just finished and stop (:class:`Preempted`)."""
    run.save("last.pt")
    received = run.preemption.received if run.preemption is not None else None
    where = f"epoch {run.position.epoch + 1}, step {run.position.step}"
    run.log(
        f"preempted by {received or 'a signal to another process'} at {where}: {run.run_dir / 'last.pt'} "
        f"written; rerun the same command with --resume to continue (exit status {EXIT_PREEMPTED})"
    )
    raise Preempted(where)
