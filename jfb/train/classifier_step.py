"""One optimiser step of an image classifier (the MNIST family): the forward pass with its warm start and
scheduled depth, the loss with its regularisers, the bad-batch policy (a non-finite loss or gradient, or a
fixed point that diverged, skips the step and restores the running statistics), then the engine's optimiser step
(:class:`~jfb.train.engine.Optimization`)."""

from __future__ import annotations

import torch
from torch import nn

from ..frozen import frozen_running_stats
from ..models import ImplicitClassifier, Prediction
from ..precision import autocast
from .config import TrainConfig
from .optimization import count_bad_batch
from .preemption import Watch
from .setup import Run, memory_format


def train_step(run: Run, inputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, watch: Watch) -> bool:
    """One optimiser step, none on a bad batch on any process; whether a preemption signal reached any process
    (``watch``: this one's, read after the forward pass), decided in the same collective.

    Under DDP each process gets one shard of every global batch, and its mean loss is weighted
    by its share of the global batch, so that DDP's average of the gradients is the gradient
    of the mean loss over the global batch (shards can differ by one sample).
    """
    config, model, position = run.config, run.model, run.position
    buffers = [b.clone() for b in model.buffers()]  # BatchNorm statistics: a few KB
    inputs = inputs.contiguous(memory_format=memory_format(config))
    if config.lipschitz_rescale:
        rescale_operator(model, inputs)
    with autocast(config.device, config.precision):
        prediction: Prediction = run.engine(inputs, details=True, **_solve_arguments(run, index))
    logits = prediction.logits.float()
    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    signalled = watch.received is not None
    bad, stop = run.processes.any_of([_bad_batch(prediction, loss), signalled])  # one collective
    if bad:
        _skip_bad_batch(run, buffers, "a non-finite loss or a diverged or non-finite fixed point")
        return stop
    global_batch = min(config.batch_size, len(run.data.train) - position.step * config.batch_size)
    share = labels.shape[0] * run.processes.world_size / global_batch
    total = (loss + _regularization(prediction, labels, config)) * share
    if not run.optimization.apply(total, model, run.processes.any):
        _skip_bad_batch(run, buffers, f"a non-finite gradient (of a finite loss, {loss.item():.4g})")
        return stop
    position.consecutive_bad = 0
    if run.average is not None:
        run.average.update(model)
    equilibrium = prediction.equilibrium
    position.stats.add(loss.detach(), logits.detach(), labels, equilibrium)  # after backward: J products counted
    if run.warm_starts is not None:
        run.warm_starts.store(index, equilibrium.fixed_point)
    return stop


def _solve_arguments(run: Run, index: torch.Tensor) -> dict:
    """What an implicit model's call takes besides the batch: a warm start, the scheduled depth's options."""
    config, arguments = run.config, {}
    if run.warm_starts is not None:
        arguments["u0"] = run.warm_starts.initial(index, config.device, memory_format(config))
    if config.depth_start is not None and isinstance(run.model, ImplicitClassifier):
        arguments["solve"] = config.training_options(epoch=run.position.epoch)
    return {k: v for k, v in arguments.items() if v is not None}


def _regularization(prediction: Prediction, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor | float:
    """The Jacobian penalty, the fixed-point correction loss and the learned initial state's loss of the step's
    forward pass (0 without them)."""
    total: torch.Tensor | float = 0.0
    if config.jacobian_penalty and prediction.equilibrium is not None:
        total = total + config.jacobian_penalty * prediction.equilibrium.jacobian_penalty
    if prediction.correction_logits:
        losses = [nn.functional.cross_entropy(logits.float(), labels) for logits in prediction.correction_logits]
        total = total + config.correction_weight * torch.stack(losses).mean()
    if prediction.initial_state_loss is not None:
        total = total + config.init_weight * prediction.initial_state_loss.float()
    return total


def _skip_bad_batch(run: Run, buffers: list[torch.Tensor], what: str) -> None:
    """No optimiser step on a bad batch (``what`` made it bad), and the running statistics that its forward pass
    already updated are restored: the model stays the last good one."""
    run.optimization.skip()
    for buffer, saved in zip(run.model.buffers(), buffers):
        buffer.copy_(saved)
    position = run.position
    position.stats.skipped += 1
    where = f"epoch {position.epoch + 1}, step {position.step}"
    position.consecutive_bad = count_bad_batch(
        position.consecutive_bad, "skip", run.config.max_bad_batches, what, where
    )


@torch.no_grad()
def rescale_operator(model: ImplicitClassifier, inputs: torch.Tensor) -> None:
    """The paper's contraction control before a training solve (``--lipschitz-rescale``), at u = 0."""
    with frozen_running_stats(model.embedding):
        q = model.embedding(inputs)
    model.operator.rescale_to_lipschitz(torch.zeros_like(q), q)


def _bad_batch(prediction: Prediction, loss: torch.Tensor) -> bool:
    """A non-finite loss, or a forward solve that diverged or met a non-finite value: T(u) there
    is no fixed point, and the JFB gradient at it says nothing about the loss."""
    if prediction.equilibrium is not None and prediction.equilibrium.stats.status.no_fixed_point:
        return True
    return not bool(torch.isfinite(loss))
