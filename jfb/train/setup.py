"""Everything a run needs before its first step, in one :class:`Run`: processes, data, model,
optimiser, schedule, metrics, and the position a resumed run continues from.

:func:`load_data` and :func:`restore_model` are the pieces the evaluation, diagnostics and
benchmark commands share with training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Normalizer, Split, dataset_info, load_splits, steps_per_pass
from ..errors import JfbError, StorageError
from ..files import prepare_run_dir
from ..models import architecture, build_model, count_parameters
from ..precision import grad_scaler
from .averaging import WeightAverage
from .checkpoint import evaluated_weights, load_checkpoint, load_resumable, load_weights, previous_path, save_checkpoint
from .config import TrainConfig
from .distributed import Processes, synchronize_batch_norm
from .metrics import MetricsLog
from .optimization import Optimization, make_schedule, named_optimizer
from .recipes import merge_settings, migrate_legacy_keys
from .records import EpochRecord, EpochStats, Position
from .warm_starts import WarmStarts

Log = Callable[[str], None]


@dataclass(frozen=True)
class Data:
    """The three splits (limited as the configuration says) and the input normaliser."""

    train: Split
    val: Split
    test: Split
    normalize: Normalizer


def load_data(config: TrainConfig) -> Data:
    train, val, test = load_splits(config.dataset, config.data_dir, seed=config.seed)
    limit = config.limit_test
    return Data(train.subset(config.limit_train), val.subset(limit), test.subset(limit), input_normalizer(config))


def input_normalizer(config: TrainConfig) -> Normalizer:
    """The input statistics: the architecture's own where it has them (the authors' CIFAR-10 model), else
    the dataset's."""
    info = dataset_info(config.dataset)
    mean, std = architecture(config.architecture).normalization or (info.mean, info.std)
    return Normalizer(mean, std)


def memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def build_from_config(config: TrainConfig) -> nn.Module:
    model = build_model(
        config.architecture,
        kind=config.model,
        explicit_depth=config.explicit_depth,
        latent_batch_norm=config.latent_batch_norm,
        gamma=config.gamma,
        latent_dropout=config.latent_dropout,
        latent_norm=config.latent_norm,
        **({"init": config.init} if config.model == "implicit" else {}),
        **config.layer_options(),
    )
    return model.to(config.device, memory_format=memory_format(config))


def restore_model(path: Path, overrides: dict[str, Any] | None = None) -> tuple[nn.Module, TrainConfig]:
    """The model saved in one of our checkpoints, with its configuration (``overrides`` applied)."""
    checkpoint = load_checkpoint(path)
    values = merge_settings(migrate_legacy_keys(checkpoint["config"]), overrides or {})
    config = TrainConfig.from_dict(values, source=str(path))
    model = build_from_config(config)
    load_weights(model, evaluated_weights(checkpoint), path)
    return model, config


def make_optimization(config: TrainConfig, model: nn.Module, steps_per_epoch: int) -> Optimization:
    """The optimiser, schedule (stepped every batch) and fp16 gradient scaler of ``config``."""
    optimizer = named_optimizer(config.optimizer, model, config.lr, config.weight_decay, config.momentum)
    schedule = make_schedule(
        config.schedule, optimizer, config.epochs * steps_per_epoch, config.step_size * steps_per_epoch
    )
    return Optimization(optimizer, schedule, scaler=grad_scaler(config.device, config.precision))


@dataclass
class Run:
    """A run ready to train: :func:`jfb.train.fit` takes it from ``position`` to the last epoch."""

    config: TrainConfig
    run_dir: Path
    processes: Processes
    data: Data
    model: nn.Module
    engine: nn.Module  # what training steps call: the model, or DistributedDataParallel around it
    optimization: Optimization  # the optimiser, the schedule, the fp16 gradient scaler
    metrics: MetricsLog
    position: Position
    best_val: float = -1.0
    warm_starts: WarmStarts | None = None
    average: WeightAverage | None = None  # with ema_decay: what is evaluated, selected and saved as best.pt
    progress: bool = True
    log: Log = print

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimization.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.optimization.schedule

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.optimization.scaler

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_pass(len(self.data.train), self.config.batch_size, self.processes.world_size)

    def save(self, name: str, position: Position | None = None) -> None:
        """Write a resumable checkpoint (main process only; every process waits for it). ``last.pt``
        keeps its predecessor as ``last.prev.pt``; a failed write says which checkpoint is intact.

        Each process's running sums of the epoch go in too: a resumed data-parallel run continues each
        process's own (rank 0's in every process counted its part twice, and lost the others': found by the
        chaos soak under torchrun)."""
        position = position or self.position
        per_process = self.processes.gather(asdict(position.stats)) if self.processes.distributed else None
        if self.processes.is_main:
            path = self.run_dir / name
            try:
                payload = self._checkpoint(position) | ({"stats_per_process": per_process} if per_process else {})
                save_checkpoint(path, payload, keep_previous=name == "last.pt")
            except StorageError as error:
                intact = [p.name for p in (path, previous_path(path)) if p.is_file()]
                note = f"; intact: {', '.join(intact)}" if intact else ""
                raise StorageError(f"{error}{note}") from error.__cause__
        self.processes.barrier()

    def _checkpoint(self, position: Position) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": position.to_dict(),
            **({"average": self.average.average} if self.average is not None else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            "best_val_acc": self.best_val,
            "records": [r.to_dict() for r in self.metrics.records],
            "rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if self.config.device == "cuda" else {}),
        }


def setup_run(
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    processes: Processes | None = None,
    progress: bool = True,
    log: Log = print,
) -> Run:
    """Seed, load the data, build model and optimiser, and restore ``run_dir/last.pt`` when resuming."""
    processes = processes or Processes()
    run_dir = Path(run_dir)
    if processes.is_main:
        prepare_run_dir(run_dir)
    _seed(config)
    data = load_data(config)
    model = build_from_config(config)
    if config.compile:
        compile_parts(model)
    if processes.distributed:
        model = synchronize_batch_norm(model, config.device)
    engine = processes.wrap(model, config.device)
    steps = steps_per_pass(len(data.train), config.batch_size, processes.world_size)
    optimization = make_optimization(config, model, steps)
    log(_describe(config, model, data, processes))
    metrics = MetricsLog(run_dir, write=processes.is_main)
    run = Run(
        config,
        run_dir,
        processes,
        data,
        model,
        engine,
        optimization,
        metrics,
        Position(),
        progress=progress,
        log=log,
    )
    if config.warm_start:
        run.warm_starts = WarmStarts(len(data.train))
    if config.ema_decay is not None:
        run.average = WeightAverage(model, config.ema_decay)
    last = run_dir / "last.pt"
    if resume and (last.is_file() or previous_path(last).is_file()):
        checkpoint, path = load_resumable(last, log)
        _restore(run, checkpoint, path)
        log(f"resumed from {path} at epoch {run.position.epoch + 1}, step {run.position.step}")
    return run


def compile_parts(model: nn.Module) -> None:
    """``torch.compile`` the embedding, the operator and the head in place (``nn.Module.compile``: the state
    dict keeps its keys). The solver loop stays eager: it decides when to stop, per batch."""
    for part in (model.embedding, model.operator, model.head):
        part.compile()


def _seed(config: TrainConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)


def _describe(config: TrainConfig, model: nn.Module, data: Data, processes: Processes) -> str:
    line = (
        f"{config.model} {config.architecture}: {count_parameters(model):,} parameters; "
        f"train {len(data.train)}, validation {len(data.val)}, test {len(data.test)}"
    )
    if processes.distributed:
        line += f"; {processes.world_size} processes, global batch {config.batch_size}"
    return line


def _restore(run: Run, checkpoint: dict[str, Any], path: Path) -> None:
    """Load everything the run needs to continue exactly where ``checkpoint`` (read from ``path``) was written."""
    if "position" not in checkpoint:
        raise JfbError(f"{path} is not a resumable training checkpoint (no optimiser state or position)")
    changed = run.config.differences(checkpoint["config"])
    if changed:
        raise JfbError(
            f"{path} was written with other options ({'; '.join(changed)}); resume with the options it was written "
            "with, or train into a new --out"
        )
    run.model.load_state_dict(checkpoint["model"])
    if run.average is not None:
        run.average.average = checkpoint["average"]
    if run.scaler is not None:
        run.scaler.load_state_dict(checkpoint["scaler"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    if "cuda_rng" in checkpoint and run.config.device == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"])
    run.position = Position.from_dict(checkpoint["position"])
    per_process = checkpoint.get("stats_per_process")
    if per_process is not None and len(per_process) == run.processes.world_size:
        run.position.stats = EpochStats(**per_process[run.processes.rank])
    elif per_process is not None and run.position.step:
        run.log(
            f"warning: {path} was written by {len(per_process)} processes, this run has {run.processes.world_size}: "
            "the training metrics of the interrupted epoch count process 0's part only"
        )
    run.best_val = checkpoint["best_val_acc"]
    run.metrics.records = [EpochRecord.from_dict(r) for r in checkpoint["records"]]
