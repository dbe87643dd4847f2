"""A workload's model on several processes (``torchrun``): DDP, or FSDP2 with T's parameters gathered once per solve.

Every process draws the same global batch for a step and trains on its own slice of it (rank ``r`` of
``n`` takes rows ``r::n``), so a DDP run and an FSDP run see the same global batches.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter over the processes and all-gathers
a module's parameters in its pre-forward hook. A DEQ calls its operator T many times per step (every
solver iteration, then the application with grad, then the backward pass's re-application), so resharding
after each call would repeat the all-gather once per iteration. The operator is sharded with
``reshard_after_forward=False``: its parameters are gathered at its first call of a step and stay whole
through the solve and the backward pass, then are resharded after the gradients are reduce-scattered.
The all-gathers of a step do not depend on the number of solver iterations (counted in the tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..errors import JfbError
from ..train.distributed import Processes

PARALLEL = ("none", "ddp", "fsdp")


def shard_batch(batch: Any, processes: Processes) -> Any:
    """This process's rows (``rank::world_size``) of a global batch (a tensor or a tuple of tensors)."""
    if isinstance(batch, tuple):
        return tuple(shard_batch(item, processes) for item in batch)
    if batch.shape[0] % processes.world_size:
        raise JfbError(f"a global batch of {batch.shape[0]} does not split over {processes.world_size} processes")
    return batch[processes.rank :: processes.world_size]


def parallel_batches(batches: Callable[[int], Any], processes: Processes) -> Callable[[int], Any]:
    return lambda step: shard_batch(batches(step), processes) if processes.distributed else batches(step)


def wrap_parallel(model: nn.Module, operator: nn.Module, mode: str, processes: Processes, device: str) -> nn.Module:
    """The module to train: ``model`` itself (one process), DDP around it, or ``model`` sharded by FSDP2
    (``operator`` as its own unit that stays gathered for the whole step)."""
    if mode not in PARALLEL:
        raise JfbError(f"unknown parallel mode {mode!r}; choose one of {', '.join(PARALLEL)}")
    if mode == "none" or not processes.distributed:
        return model
    if mode == "ddp":
        return processes.wrap(model, device)
    from torch.distributed.fsdp import fully_shard

    fully_shard(operator, reshard_after_forward=False)
    fully_shard(model)
    return model


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's ``state_dict`` with every tensor whole (FSDP2's sharded DTensors gathered: every process
    must call this) and detached."""
    state = {}
    for name, tensor in model.state_dict().items():
        data = tensor.detach()
        state[name] = data.full_tensor() if hasattr(data, "full_tensor") else data.clone()
    return state


def torchrun_needed(mode: str) -> None:
    """JfbError when a parallel mode is asked for outside torchrun (one process would silently run alone)."""
    if mode != "none" and "WORLD_SIZE" not in os.environ:
        raise JfbError(f"--parallel {mode} runs under torchrun (torchrun --nproc-per-node N -m jfb train lm ...)")
