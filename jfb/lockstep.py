"""Lock-step fixed-point solves for data-parallel training.

When T runs a collective operation (SyncBatchNorm in training mode synchronises batch statistics
at every call), every process must call T the same number of times, or the collectives of
different iterations pair up and training deadlocks. The stopping decision is then agreed: a
process stops only when all of them are done, at the cost of one all-reduce of a flag per
iteration. Without collectives inside T, processes stop independently.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import JfbError
from .solvers.driver import Agreement


def distributed_world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def has_collectives(operator: object) -> bool:
    """Whether calling ``operator`` synchronises processes.

    True when it holds, in training mode, a SyncBatchNorm or any module with a true
    ``synchronizes_processes`` attribute (the way to declare a custom module with collectives).
    """
    if not isinstance(operator, nn.Module):
        return False
    return any(
        m.training and (isinstance(m, nn.SyncBatchNorm) or getattr(m, "synchronizes_processes", False))
        for m in operator.modules()
    )


def all_processes_done(device: torch.device) -> Agreement:
    """``agree(done)``: True once every process reports done (an all-reduce MAX of "not done")."""

    def agree(done: bool) -> bool:
        not_done = torch.tensor([0.0 if done else 1.0], device=device)
        dist.all_reduce(not_done, op=dist.ReduceOp.MAX)
        return float(not_done) == 0.0

    return agree


def in_lockstep(operator: object, mode: Any, lockstep: bool | None) -> bool:
    """Whether this call's solve runs in lock-step; JfbError when the backward ``mode`` cannot (``lockstep_safe``)."""
    if lockstep is not None:
        lockstep = lockstep and distributed_world_size() > 1
    else:
        lockstep = distributed_world_size() > 1 and has_collectives(operator)
    if lockstep and not mode.lockstep_safe and torch.is_grad_enabled():
        raise JfbError(
            f"backward {mode!r} cannot run with collectives inside the operator (SyncBatchNorm in a distributed "
            "run): its backward pass makes a different number of calls of T on each process; use backward 'jfb' "
            "or 'neumann:K', or no latent BatchNorm"
        )
    return lockstep
