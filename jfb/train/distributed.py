"""Data-parallel training under ``torchrun``: process group, synchronised BatchNorm, DDP, reductions.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them training runs in one
process and nothing here does anything. Every BatchNorm becomes a SyncBatchNorm (including the
ones inside the fixed-point operator, whose solve then runs in lock-step, see
:mod:`jfb.lockstep`), the model is wrapped in DistributedDataParallel, and the backend is nccl
on GPUs and gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ..errors import JfbError

#: how long a collective waits for a peer before it raises (torch's default is 30 minutes)
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world_size`` (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, device: str) -> nn.Module:
        """The module to call for training steps: ``model`` itself, or DDP around it."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.local_rank] if device == "cuda" else None)

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (every process must call this)."""
        return self.any_of([flag])[0]

    def any_of(self, flags: list[bool]) -> list[bool]:
        """For each flag, whether it holds on any process: one collective for all of them."""
        return [bool(v) for v in self.max([float(f) for f in flags])]

    def gather(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.distributed:
            return list(values)
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def start_processes(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Processes:
    """Join the process group that ``torchrun`` describes in the environment (or run alone).

    A collective that waits longer than ``timeout_s`` on a peer raises instead of hanging.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        rank, timeout = int(os.environ["RANK"]), timedelta(seconds=timeout_s)
        dist.init_process_group(
            "nccl" if device == "cuda" else "gloo",
            store=_attempt_store(rank, world_size, timeout),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank)


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store of this attempt of the job.

    torchrun (with ``--max-restarts``) restarts a failed group against the *same* TCPStore, its
    agent's, and torch's default ``env://`` initialisation keys the process group's addresses
    without the attempt, so a restarted worker could read the address of a worker that died with
    the previous attempt ("Gloo connectFullMesh failed ... Connection refused") or a stale barrier
    count (a hang). Every attempt here gets its own key prefix.
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not use_agent_store,
        timeout=timeout,
    )
    return dist.PrefixStore(f"jfb/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def stop_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


class CPUSyncBatchNorm(_BatchNorm):
    """A BatchNorm whose batch statistics are synchronised across processes on CPU (gloo).

    torch's SyncBatchNorm only runs on accelerators (and DistributedDataParallel refuses it on
    CPU), so on CPU the per-channel sums, squared sums and counts (in float64) are combined
    with one differentiable all-reduce per call. Outside distributed training it is a plain BatchNorm,
    with the same state dict.
    """

    synchronizes_processes = True  # tells jfb.lockstep that calls must stay in lock-step

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise JfbError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        # sums in float64: E[x^2] - E[x]^2 in float32 loses ~1e-5 to cancellation when |mean| >> std
        wide = input.double()
        count = wide.new_full((1,), input.numel() // channels)
        stats = _SumOverProcesses.apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0)
        mean, var, total = mean.to(input.dtype), var.to(input.dtype), total.to(input.dtype)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total.detach())
        shape = (1, channels, *([1] * (input.dim() - 2)))
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def synchronize_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm of ``model`` (the operator's too) made synchronous across processes:
    torch's SyncBatchNorm on GPUs, :class:`CPUSyncBatchNorm` on CPU."""
    if device == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _cpu_sync(model)


def _cpu_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        sync = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        sync.load_state_dict(module.state_dict())
        return sync.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _cpu_sync(child))
    return module


def main_process_only(function: Callable[..., None], processes: Processes) -> Callable[..., None]:
    """``function`` on the main process; a no-op on the others (logging)."""
    return function if processes.is_main else (lambda *args, **kwargs: None)


class _SumOverProcesses(torch.autograd.Function):
    """A differentiable sum over processes (what torch's deprecated ``torch.distributed.nn.functional.all_reduce``
    did for SUM): each process's input gradient is the sum of every process's output gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad
