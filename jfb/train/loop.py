"""The training loop, readable top to bottom: data, model, optimiser, epochs, checkpoints, report."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..data import Normalizer, Split, batches, dataset_info, load_splits, steps_per_pass
from ..errors import JfbError
from ..frozen import frozen_running_stats
from ..models import ImplicitClassifier, architecture, build_model, count_parameters
from .checkpoint import load_checkpoint, prepare_run_dir, save_checkpoint
from .config import TrainConfig
from .distributed import Processes, main_process_only, start_processes, stop_processes, synchronize_batch_norm
from .metrics import MetricsLog, plot_curves


class TrainingStopped(RuntimeError):
    """Too many consecutive bad batches (non-finite loss, diverged or non-finite fixed point)."""


@dataclass
class EpochStats:
    """Running sums over the batches of one pass."""

    loss: float = 0.0
    correct: int = 0
    samples: int = 0
    batches: int = 0
    forward_iterations: float = 0.0
    max_forward_iterations: int = 0
    residual: float = 0.0
    j_matvecs: int = 0
    skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    backward_statuses: dict[str, int] = field(default_factory=dict)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, model: nn.Module) -> None:
        n = labels.shape[0]
        self.loss += float(loss) * n
        self.correct += int((logits.argmax(1) == labels).sum())
        self.samples += n
        self.batches += 1
        stats = model.implicit.last_stats if isinstance(model, ImplicitClassifier) else None
        if stats is not None:
            self.forward_iterations += float(stats.iterations.float().mean())
            self.max_forward_iterations = max(self.max_forward_iterations, int(stats.iterations.max()))
            self.residual += float(stats.rel_residual.mean())
            self.statuses[str(stats.status)] = self.statuses.get(str(stats.status), 0) + 1
            self.j_matvecs += stats.j_matvecs
            self.backward_statuses[str(stats.backward.status)] = self.backward_statuses.get(str(stats.backward.status), 0) + 1

    def reduced(self, processes: Processes) -> "EpochStats":
        """Sums over all processes (per-batch means such as iterations are averaged over them)."""
        if not processes.distributed:
            return self
        loss, correct, samples, iterations, residual, j_matvecs, skipped = processes.sum(
            [self.loss, self.correct, self.samples, self.forward_iterations, self.residual, self.j_matvecs, self.skipped])
        w = processes.world_size
        return EpochStats(
            loss=loss, correct=int(correct), samples=int(samples), batches=self.batches,
            forward_iterations=iterations / w, max_forward_iterations=int(processes.max([self.max_forward_iterations])[0]),
            residual=residual / w, j_matvecs=round(j_matvecs / w), skipped=int(skipped) // w,
            statuses=_merge_counts(processes.gather(self.statuses)),
            backward_statuses=_merge_counts(processes.gather(self.backward_statuses)),
        )

    def summary(self, prefix: str) -> dict[str, Any]:
        b = max(self.batches, 1)
        return {
            f"{prefix}_loss": self.loss / max(self.samples, 1),
            f"{prefix}_acc": 100.0 * self.correct / max(self.samples, 1),
            f"{prefix}_forward_iters_mean": self.forward_iterations / b,
            f"{prefix}_forward_iters_max": self.max_forward_iterations,
            f"{prefix}_rel_residual_mean": self.residual / b,
        }

    def postfix(self) -> dict[str, str]:
        b = max(self.batches, 1)
        return {
            "loss": f"{self.loss / max(self.samples, 1):.3f}",
            "acc": f"{100.0 * self.correct / max(self.samples, 1):.2f}",
            "iters": f"{self.forward_iterations / b:.1f}",
            "res": f"{self.residual / b:.1e}",
        }


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for key, n in c.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def make_optimizer(config: TrainConfig, model: nn.Module, steps_per_epoch: int):
    params = model.parameters()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    elif config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    elif config.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size * steps_per_epoch, gamma=0.1)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs done and ``step`` batches of the next one.

    A checkpoint taken mid-epoch also holds the running sums of that epoch, the count of
    consecutive bad batches and the training time spent in it, so a resumed run continues the
    epoch exactly where it stopped.
    """

    epoch: int = 0
    step: int = 0
    stats: EpochStats = field(default_factory=EpochStats)
    consecutive_bad: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Position":
        return cls(**{**values, "stats": EpochStats(**values["stats"])})


def train_one_epoch(
    engine: nn.Module,
    model: nn.Module,
    optimizer,
    scheduler,
    split: Split,
    config: TrainConfig,
    normalize,
    position: Position,
    processes: Processes,
    progress: bool,
    save: Callable[[Position], None],
    warm_starts: Optional["WarmStarts"] = None,
) -> EpochStats:
    """One pass over ``split`` from ``position.step`` on; ``save(position)`` every ``checkpoint_every`` steps.

    ``engine`` is the module to call (``model`` or DistributedDataParallel around it); under
    DDP each process gets one shard of every global batch, and its mean loss is weighted by
    its share of the global batch, so that DDP's average of the gradients is the gradient of
    the mean loss over the global batch (shards can differ by one sample).
    """
    model.train()  # the layer solves with the training options
    stats = position.stats
    steps = steps_per_pass(len(split), config.batch_size, processes.world_size)
    augmentation = dataset_info(config.dataset).augmentation if config.augment else None
    data = batches(split, config.batch_size, normalize, shuffle_seed=config.seed * 100_003 + position.epoch, augment=augmentation,
                   start=position.step, shard=(processes.rank, processes.world_size), device=config.device, with_index=True)
    bar = tqdm(data, total=steps, initial=position.step, desc=f"epoch {position.epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    started = time.perf_counter() - position.elapsed_s
    for inputs, labels, index in bar:
        buffers = [b.clone() for b in model.buffers()]  # BatchNorm statistics: a few KB
        inputs = inputs.contiguous(memory_format=_memory_format(config))
        if config.lipschitz_rescale:
            rescale_operator(model, inputs)
        logits = engine(inputs) if warm_starts is None else engine(inputs, warm_starts.initial(index, config))
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if processes.any(_bad_batch(model, loss)):
            # no optimiser step on a bad batch (on any process), and the running
            # statistics that its forward pass already updated are restored: the model stays the last good one
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
            stats.skipped += 1
            position.consecutive_bad += 1
            if position.consecutive_bad >= config.max_bad_batches:
                raise TrainingStopped(f"{position.consecutive_bad} consecutive batches had a non-finite loss or a diverged or non-finite fixed point (epoch {position.epoch + 1})")
        else:
            position.consecutive_bad = 0
            global_batch = min(config.batch_size, len(split) - position.step * config.batch_size)
            (loss * (labels.shape[0] * processes.world_size / global_batch)).backward()
            optimizer.step()
            scheduler.step()
            stats.add(loss.detach(), logits.detach(), labels, model)  # after backward: J mat-vecs are counted
            if warm_starts is not None:
                warm_starts.store(index, model.implicit.last_fixed_point)
            bar.set_postfix(stats.postfix(), refresh=False)
        position.step += 1
        position.elapsed_s = time.perf_counter() - started
        if config.checkpoint_every and position.step % config.checkpoint_every == 0 and position.step < steps:
            save(position)
    return stats


@torch.no_grad()
def rescale_operator(model: ImplicitClassifier, inputs: torch.Tensor) -> None:
    """The paper's contraction control before a training solve (``--lipschitz-rescale``), at u = 0."""
    with frozen_running_stats(model.embedding):
        q = model.embedding(inputs)
    model.operator.rescale_to_lipschitz(torch.zeros_like(q), q)


class WarmStarts:
    """Each training sample's last fixed point, to start its next solve from (``--warm-start``).

    Samples not yet seen start from zero. The cache lives in memory (N x latent size, float32;
    345 MB for MNIST) and is not checkpointed: a resumed run starts it cold again.
    """

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.cache: Optional[torch.Tensor] = None

    def initial(self, index: torch.Tensor, config: TrainConfig) -> Optional[torch.Tensor]:
        if self.cache is None:
            return None
        return self.cache[index].to(config.device).contiguous(memory_format=_memory_format(config))

    def store(self, index: torch.Tensor, fixed_point: torch.Tensor) -> None:
        if self.cache is None:
            self.cache = fixed_point.new_zeros((self.samples, *fixed_point.shape[1:]), device="cpu")
        self.cache[index] = fixed_point.to("cpu")


def _bad_batch(model: nn.Module, loss: torch.Tensor) -> bool:
    """A non-finite loss, or a forward solve that diverged or met a non-finite value: T(u) there
    is no fixed point, and the JFB gradient at it says nothing about the loss."""
    if isinstance(model, ImplicitClassifier) and model.implicit.last_stats.status.failed:
        return True
    return not bool(torch.isfinite(loss))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, config: TrainConfig, normalize, progress: bool = False,
             desc: str = "eval", processes: Processes = Processes()) -> dict[str, Any]:
    """Accuracy and loss in eval mode (running BatchNorm statistics, no dropout), never augmented.

    In a distributed run each process evaluates every ``world_size``-th sample and the sums are combined.
    """
    model.eval()  # the layer solves with the evaluation options
    stats = EpochStats()
    shard = split.shard(processes.rank, processes.world_size)
    steps = math.ceil(len(shard) / config.batch_size)
    for inputs, labels in tqdm(batches(shard, config.batch_size, normalize, device=config.device), total=steps, desc=desc, disable=not progress, leave=False):
        logits = model(inputs.contiguous(memory_format=_memory_format(config)))
        stats.add(nn.functional.cross_entropy(logits, labels), logits, labels, model)
    return stats.reduced(processes).summary("eval")


def build_from_config(config: TrainConfig) -> nn.Module:
    model = build_model(
        config.architecture,
        kind=config.model,
        explicit_depth=config.explicit_depth,
        latent_batch_norm=config.latent_batch_norm,
        gamma=config.gamma,
        **config.layer_options(),
    )
    return model.to(config.device, memory_format=_memory_format(config))


def input_normalizer(config: TrainConfig) -> Normalizer:
    """The input statistics: the architecture's own where it has them (the authors' CIFAR-10 model), else the dataset's."""
    info = dataset_info(config.dataset)
    mean, std = architecture(config.architecture).normalization or (info.mean, info.std)
    return Normalizer(mean, std)


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def restore_model(path: Path, overrides: Optional[dict[str, Any]] = None) -> tuple[nn.Module, TrainConfig]:
    """The model saved in one of our checkpoints, with its configuration (``overrides`` applied)."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict({**checkpoint["config"], **(overrides or {})}, source=str(path))
    model = build_from_config(config)
    model.load_state_dict(checkpoint["model"])
    return model, config


def train(config: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Train, evaluate every epoch, keep ``last.pt`` and the validation-selected ``best.pt``.

    Under ``torchrun`` this runs data-parallel (see :mod:`jfb.train.distributed`); only the
    main process logs, shows progress and writes files.
    """
    processes = start_processes(config.device)
    if processes.distributed and config.lipschitz_rescale:
        stop_processes(processes)
        raise JfbError("lipschitz_rescale rescales weights from each process's own batch, so data-parallel copies would drift apart; "
                       "train in one process")
    try:
        return _train(config, Path(run_dir), resume, progress and processes.is_main, main_process_only(log, processes), processes)
    finally:
        stop_processes(processes)


def _train(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, log, processes: Processes) -> dict[str, Any]:
    if processes.is_main:
        prepare_run_dir(run_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)

    train_split, val_split, test_split = load_splits(config.dataset, config.data_dir, seed=config.seed)
    train_split, test_split = train_split.subset(config.limit_train), test_split.subset(config.limit_test)
    val_split = val_split.subset(config.limit_test)
    normalize = input_normalizer(config)

    model = build_from_config(config)
    if processes.distributed:
        model = synchronize_batch_norm(model, config.device)
    engine = processes.wrap(model, config.device)
    steps_per_epoch = steps_per_pass(len(train_split), config.batch_size, processes.world_size)
    optimizer, scheduler = make_optimizer(config, model, steps_per_epoch)
    log(f"{config.model} {config.architecture}: {count_parameters(model):,} parameters; "
        f"train {len(train_split)}, validation {len(val_split)}, test {len(test_split)}"
        + (f"; {processes.world_size} processes, global batch {config.batch_size}" if processes.distributed else ""))

    position, best_val, records = Position(), -1.0, []
    if resume and (run_dir / "last.pt").exists():
        position, best_val, records = _restore_run(run_dir / "last.pt", config, model, optimizer, scheduler)
        log(f"resumed from {run_dir / 'last.pt'} at epoch {position.epoch + 1}, step {position.step}")
    metrics = MetricsLog(run_dir, records, write=processes.is_main)
    warm_starts = WarmStarts(len(train_split)) if config.warm_start else None

    def save(name: str, position: Position) -> None:
        if processes.is_main:
            payload = {
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "position": position.to_dict(),
                "best_val_acc": best_val,
                "records": metrics.records,
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state()} if config.device == "cuda" else {}),
            }
            save_checkpoint(run_dir / name, payload)
        processes.barrier()

    while position.epoch < config.epochs:
        try:
            stats = train_one_epoch(engine, model, optimizer, scheduler, train_split, config, normalize, position,
                                    processes, progress, lambda p: save("last.pt", p), warm_starts)
        except TrainingStopped as stop:
            save("stopped.pt", position)
            raise TrainingStopped(f"{stop}; weights before the bad batches saved to {run_dir / 'stopped.pt'}") from None
        epoch_time = position.elapsed_s
        stats = stats.reduced(processes)
        if stats.skipped:
            log(f"warning: epoch {position.epoch + 1} skipped {stats.skipped} bad batches (non-finite loss, diverged or non-finite fixed point)")
        val = evaluate(model, val_split, config, normalize, progress, "validation", processes)
        final = position.epoch + 1 == config.epochs
        test = evaluate(model, test_split, config, normalize, progress, "test", processes) if config.test_every_epoch or final else None
        record = {
            "epoch": position.epoch + 1,
            **stats.summary("train"),
            "val_loss": val["eval_loss"],
            "val_acc": val["eval_acc"],
            **_test_fields(test),
            "epoch_time_s": epoch_time,
            "samples_per_s": stats.samples / epoch_time,
            "j_matvecs": stats.j_matvecs,
            "skipped_batches": stats.skipped,
            "backward": config.backward if config.model == "implicit" else "explicit",
            "solver_statuses": json.dumps(stats.statuses, sort_keys=True),
            "backward_statuses": json.dumps(stats.backward_statuses, sort_keys=True),
            "lr": scheduler.get_last_lr()[0],
            "world_size": processes.world_size,
            "global_batch_size": config.batch_size,
        }
        metrics.append(record)
        improved = record["val_acc"] > best_val
        best_val = max(best_val, record["val_acc"])
        if final and not improved and not config.test_every_epoch:
            _test_selected_epoch(run_dir / "best.pt", metrics, test_split, config, normalize, progress, processes)
        position = Position(epoch=position.epoch + 1)
        save("last.pt", position)
        if improved:
            save("best.pt", position)
        log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}% | "
            f"val {record['val_acc']:.2f}% | test {'-' if test is None else format(record['test_acc'], '.2f') + '%'} | {epoch_time:.1f} s, "
            f"{record['train_forward_iters_mean']:.1f} forward iterations/batch")

    plot = plot_curves(run_dir, metrics.records) if processes.is_main else None
    best = max(metrics.records, key=lambda r: r["val_acc"])
    result = {
        "run_dir": str(run_dir),
        "parameters": count_parameters(model),
        "epochs": len(metrics.records),
        "test_acc_last": metrics.records[-1]["test_acc"],
        "test_acc_best_val": best["test_acc"],
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "train_time_s": sum(r["epoch_time_s"] for r in metrics.records),
        "world_size": processes.world_size,
        "plot": str(plot) if plot else None,
    }
    log(f"test accuracy: last epoch {result['test_acc_last']:.2f}%, validation-selected "
        f"(epoch {result['best_epoch']}) {result['test_acc_best_val']:.2f}%")
    return result


def _test_fields(test: Optional[dict[str, Any]]) -> dict[str, float]:
    """The record's test columns; NaN for epochs whose test accuracy was not measured."""
    if test is None:
        return {"test_loss": math.nan, "test_acc": math.nan, "test_forward_iters_mean": math.nan}
    return {"test_loss": test["eval_loss"], "test_acc": test["eval_acc"], "test_forward_iters_mean": test["eval_forward_iters_mean"]}


def _test_selected_epoch(best_path: Path, metrics: MetricsLog, test_split: Split, config: TrainConfig, normalize, progress: bool,
                         processes: Processes) -> None:
    """Without per-epoch test evaluation: the test accuracy of the validation-selected weights, once, at the end."""
    model = build_from_config(config)
    model.load_state_dict(load_checkpoint(best_path)["model"])
    test = evaluate(model, test_split, config, normalize, progress, "test (selected epoch)", processes)
    selected = max(metrics.records, key=lambda r: r["val_acc"])
    selected.update(_test_fields(test))
    metrics.rewrite()


def _restore_run(path: Path, config: TrainConfig, model, optimizer, scheduler) -> tuple[Position, float, list[dict[str, Any]]]:
    """Load everything a run needs to continue exactly where ``path`` was written."""
    checkpoint = load_checkpoint(path)
    if "position" not in checkpoint:
        raise JfbError(f"{path} is not a resumable training checkpoint (no optimiser state or position)")
    if not config.same_run(checkpoint["config"]):
        raise JfbError(f"{path} was written with a different configuration; resume with the same options")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    if "cuda_rng" in checkpoint and config.device == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"])
    return Position.from_dict(checkpoint["position"]), checkpoint["best_val_acc"], checkpoint["records"]
